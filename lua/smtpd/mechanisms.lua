--- Built-in AUTH mechanisms PLAIN and LOGIN (auth-api.md 4.5), the helpers
-- every shipped mechanism shares (lua/smtpd/mechanisms/*.lua), and
-- `LoginPassword:verify` (mechanisms.md 1).
-- They are ordinary mechanism hooks, `fn(server, args)`, compiled into the
-- luasmtpd binary; a handler entry `auth_PLAIN` or `auth_LOGIN` replaces
-- them. Both hand a `LoginPassword` to the handler's `authenticator`, which
-- decides. `server:challenge_auth` suspends until the client answers, so
-- each mechanism reads as straight-line code.
-- @module smtpd.mechanisms
local smtpd = require "smtpd"

local M = {}

local AuthResult, LoginPassword = smtpd.AuthResult, smtpd.LoginPassword
local crypto = smtpd.crypto

--- The reply has been sent already (a 501); nothing more to add.
local function handled_failure()
  return AuthResult { success = false, handled = true }
end
M.handled_failure = handled_failure

--- "535 5.7.8 Authentication credentials invalid".
local function invalid()
  return AuthResult { success = false, handled = false }
end
M.invalid = invalid

--- Decodes an initial response: "=" is "present and empty" (RFC 4954 4).
-- @param server the server object
-- @tparam string text the base64 text from the AUTH line
-- @return the decoded bytes, or nil after replying 501
local function decode_initial(server, text)
  if text == "=" then return "" end
  local raw = smtpd.b64decode(text)
  if raw == nil then
    server:push("501 5.5.2 Can't decode base64")
  end
  return raw
end
M.decode_initial = decode_initial

--- The client's first message: the initial response, or the answer to an
-- empty challenge. nil after a 501 (bad base64, `*`).
-- @param server the server object
-- @tparam table args the mechanism's args
function M.first_message(server, args)
  if args[2] == nil then return server:challenge_auth("") end
  return decode_initial(server, args[2])
end

-- What an authenticator may return (auth-api.md 4.4); the C side checks
-- the details, this names the culprit in the log.
local valid_result = { userdata = true, table = true, boolean = true }

--- Calls the handler's authenticator, or fails when there is none.
-- Errors are re-raised prefixed with "authenticator: " so the log names the
-- hook that failed (LuaJIT's pcall lets the authenticator still suspend).
local function authenticate(server, mechanism, credentials)
  -- The login goes into the failure log line (mechanisms.md 3); read
  -- protected, a script's auth_data may have a strict __index.
  local got, login = pcall(function() return credentials.login end)
  local note = server._auth_login -- nil on a test's stand-in server
  if got and type(login) == "string" and note then note(server, login) end
  local authenticator = server.authenticator
  if authenticator == nil then return invalid() end
  local ok, result = pcall(authenticator, server, server.session, server.envelope,
    mechanism, credentials)
  if not ok then
    error("authenticator: " .. tostring(result), 0)
  end
  if result ~= nil and not valid_result[type(result)] then
    error(("authenticator returned %s; expected an AuthResult"):format(type(result)), 0)
  end
  return result
end
M.authenticate = authenticate

--- True if an AuthResult-like value is a success.
function M.succeeded(result)
  if result == true then return true end
  if type(result) == "userdata" or type(result) == "table" then
    local ok, success = pcall(function() return result.success end)
    return ok and success == true
  end
  return false
end

--- True if `name` is offered on this session (server.mechanisms).
function M.offered(server, name)
  for _, m in ipairs(server.mechanisms) do
    if m == name then return true end
  end
  return false
end

--- Unescapes an RFC 5802 saslname (`=2C` is ",", `=3D` is "="); nil for
-- any other "=" or a raw ",".
function M.saslname(s)
  if s:find(",", 1, true) then return nil end
  local out, i = {}, 1
  while true do
    local j = s:find("=", i, true)
    if not j then
      out[#out + 1] = s:sub(i)
      break
    end
    out[#out + 1] = s:sub(i, j - 1)
    local code = s:sub(j + 1, j + 2)
    if code == "2C" then out[#out + 1] = ","
    elseif code == "3D" then out[#out + 1] = "="
    else return nil end
    i = j + 3
  end
  return table.concat(out)
end

--- Lower-case hex of raw bytes.
function M.hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- A per-process key: a dummy verification (an unknown user) derives its
-- stable fake salt from it, and plaintext comparisons hash both sides
-- with it so their time depends on neither length.
local process_key = crypto.random(32)
M.process_key = process_key

-- What a dummy verification costs like: the last stored value a verify
-- saw in this generation (so an unknown user costs what a known one
-- does), or, before any, a yescrypt hash at crypt.hash's default cost.
local last_stored = "$y$j9T$vTsTnJjC5F5NVdpmMZ9LP/$DwFNp5gB81Oaw6v9qjrNih2J7GVaM5kjPlJyLA8dLD9"

--- True for what smtpd.crypt.verify checks: "$id$..." crypt and argon2
-- hashes, and SCRAM secrets.
function M.is_hash(stored)
  return stored:match("^%$[%w%-]+%$") ~= nil or stored:match("^SCRAM%-SHA%-1%$") ~= nil
    or stored:match("^SCRAM%-SHA%-256%$") ~= nil
end

--- Constant-time comparison of a secret with what the user sent, whatever
-- their lengths.
function M.secret_equal(a, b)
  return crypto.equal(crypto.hmac("sha256", process_key, a), crypto.hmac("sha256", process_key, b))
end

--- LoginPassword:verify(stored): the plaintext password, a crypt/argon2
-- hash or a SCRAM secret (checked on the thread pool with
-- smtpd.crypt.verify); nil does the same work against another stored value
-- and returns false. May yield.
-- @treturn boolean true when the password matches
local function loginpassword_verify(self, stored)
  if stored ~= nil and type(stored) ~= "string" then
    error("verify: stored must be a string or nil, got " .. type(stored), 2)
  end
  local password = self.password
  local against = stored or last_stored
  local ok, err
  if M.is_hash(against) then
    ok, err = smtpd.crypt.verify(password, against)
  else
    ok = M.secret_equal(password, against)
  end
  if stored == nil then return false end
  last_stored = stored
  if ok == nil then return false, err end
  return ok
end
smtpd._loginpassword_verify(loginpassword_verify)

--- Splits "authzid NUL login NUL password" into exactly three fields.
-- @treturn string|nil authzid, login, password
local function split_plain(raw)
  local a, b = raw:find("\0", 1, true)
  if not a then return nil end
  local c = raw:find("\0", b + 1, true)
  if not c then return nil end
  if raw:find("\0", c + 1, true) then return nil end
  return raw:sub(1, a - 1), raw:sub(b + 1, c - 1), raw:sub(c + 1)
end

--- AUTH PLAIN (RFC 4616).
-- @param server the server object
-- @tparam table args `{ "PLAIN", initial_response? }`
-- @return an AuthResult
function M.PLAIN(server, args)
  local raw
  if args[2] == nil then
    raw = server:challenge_auth("")
    if raw == nil then return handled_failure() end
  else
    raw = decode_initial(server, args[2])
    if raw == nil then return handled_failure() end
  end
  local authzid, login, password = split_plain(raw)
  if authzid == nil then
    server:push("501 5.5.2 Can't split auth value")
    return handled_failure()
  end
  -- Acting as someone else is refused unless the operator allows it; the
  -- authenticator then sees credentials.authzid and decides (fix).
  if authzid ~= "" and authzid ~= login and not server.auth_allow_authzid then
    local note = server._auth_login
    if note then note(server, login) end
    return invalid()
  end
  return authenticate(server, "PLAIN", LoginPassword(login, password, authzid))
end

--- AUTH LOGIN (draft-murchison-sasl-login).
-- @param server the server object
-- @tparam table args `{ "LOGIN", initial_response? }`
-- @return an AuthResult
function M.LOGIN(server, args)
  local prompts = server.auth_login_prompts or { "User Name\0", "Password\0" }
  local login
  if args[2] == nil then
    login = server:challenge_auth(prompts[1])
  else
    login = decode_initial(server, args[2])
  end
  if login == nil then return handled_failure() end
  local password = server:challenge_auth(prompts[2])
  if password == nil then return handled_failure() end
  return authenticate(server, "LOGIN", LoginPassword(login, password))
end

return M
