--- AUTH XOAUTH2 (Google's and Microsoft's) and OAUTHBEARER (RFC 7628),
-- shipped with luasmtpd and offered when `auth_mechanisms` lists them.
-- The client sends its bearer token in one message; the authenticator gets
-- an `OAuthToken` (`login`, `token`, and for OAUTHBEARER `host`, `port`)
-- whose `verify(stored)` takes a function `(token) -> ok [, err]` or the
-- token itself. On failure the mechanism sends the JSON error challenge
-- (RFC 7628 3.2.2; Google's `{"status":"401",...}` for XOAUTH2), reads
-- the client's reply (an empty line, or `%x01` for OAUTHBEARER) and
-- answers 535. `err` may be a table `{ status =, scope =,
-- ["openid-configuration"] = }` that fills the challenge.
-- @module smtpd.mechanisms.oauth
local smtpd = require "smtpd"
local mech = require "smtpd.mechanisms"

local M = {}

local function malformed(server, name)
  server:push(("501 5.5.2 Malformed %s message"):format(name))
end

local function json_string(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    if c == '"' or c == "\\" then return "\\" .. c end
    return ("\\u%04x"):format(c:byte())
  end) .. '"'
end

--- The error challenge's JSON, fields in RFC 7628 4.3's order.
-- @tparam string name "XOAUTH2" or "OAUTHBEARER"
-- @tparam[opt] table err what the verify function returned
function M.error_json(name, err)
  err = type(err) == "table" and err or {}
  local parts = {}
  if name == "XOAUTH2" then
    parts[#parts + 1] = '"status":' .. json_string(err.status or "401")
    parts[#parts + 1] = '"schemes":' .. json_string(err.schemes or "bearer")
  else
    parts[#parts + 1] = '"status":' .. json_string(err.status or "invalid_token")
  end
  if err.scope then parts[#parts + 1] = '"scope":' .. json_string(err.scope) end
  local oc = err["openid-configuration"] or err.openid_configuration
  if oc then parts[#parts + 1] = '"openid-configuration":' .. json_string(oc) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- "Bearer <token>" (the scheme is case-insensitive, RFC 6750 2.1).
local function bearer(auth)
  local scheme, token = (auth or ""):match("^(%a+) +(%S+)$")
  if not scheme or scheme:lower() ~= "bearer" then return nil end
  return token
end

--- Parses XOAUTH2's `user=LOGIN ^A auth=Bearer TOKEN ^A ^A`.
-- @treturn table|nil `{ login, token }`
function M.parse_xoauth2(msg)
  local login, auth = msg:match("^user=([^\1]*)\1auth=([^\1]*)\1\1$")
  local token = bearer(auth)
  if not login or login == "" or not token then return nil end
  return { login = login, token = token }
end

--- Parses OAUTHBEARER's `gs2-header ^A key=value ^A ... ^A` (RFC 7628 3.1).
-- @treturn table|nil `{ login, token, host, port }`
function M.parse_oauthbearer(msg)
  local flag, az, rest = msg:match("^([^,]*),([^,]*),(.*)$")
  if flag ~= "n" and flag ~= "y" then return nil end -- no channel binding here
  local login
  if az ~= "" then
    login = az:match("^a=(.+)$")
    login = login and mech.saslname(login)
    if not login then return nil end
  end
  local body = rest:match("^\1(.*\1)\1$")
  if not body then return nil end
  local kv = {}
  for pair in body:gmatch("([^\1]*)\1") do
    local k, v = pair:match("^(%a+)=(.*)$")
    if not k or kv[k] then return nil end
    kv[k] = v
  end
  local token = bearer(kv.auth)
  if not token then return nil end
  local port = kv.port and tonumber(kv.port:match("^%d+$"))
  if kv.port and not port then return nil end
  return { login = login, token = token, host = kv.host, port = port }
end

local function oauth(name, parse)
  return function(server, args)
    local msg = mech.first_message(server, args)
    if msg == nil then return mech.handled_failure() end
    local t = parse(msg)
    if not t then
      malformed(server, name)
      return mech.handled_failure()
    end
    local st = {}
    t.mechanism = name
    local auth_data = smtpd.auth_data("OAuthToken", t, function(_, stored)
      local ok, err
      if type(stored) == "function" then
        ok, err = stored(t.token)
        ok = ok == true
      elseif type(stored) == "string" then
        ok = mech.secret_equal(t.token, stored)
      elseif stored == nil then
        mech.secret_equal(t.token, mech.process_key) -- the same work, then false
        ok = false
      else
        error("verify: stored must be a function, a token string or nil, got " .. type(stored), 2)
      end
      if not ok then st.err = err end
      return ok
    end)
    local result = mech.authenticate(server, name, auth_data)
    if mech.succeeded(result) then return result end
    -- The error challenge; the client's answer ends the exchange (RFC 7628 3.2.3).
    local reply = server:challenge_auth(M.error_json(name, st.err))
    if reply == nil then return mech.handled_failure() end
    return result
  end
end

M.XOAUTH2 = oauth("XOAUTH2", M.parse_xoauth2)
M.OAUTHBEARER = oauth("OAUTHBEARER", M.parse_oauthbearer)

return M
