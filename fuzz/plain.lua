-- fuzz/plain.lua — the check behind fuzz_plain.c. Runs the built-in AUTH
-- PLAIN mechanism exactly as the server embeds it (require
-- "smtpd.mechanisms") against a stand-in server object, and compares what
-- it did with RFC 4616 as read here: the decoded response is
-- "authzid NUL authcid NUL passwd", exactly three fields; an authzid other
-- than "" or the login is refused unless auth_allow_authzid; otherwise the
-- authenticator gets a LoginPassword with those three fields, untouched.
-- Returns a function check(input, flags) that raises on any difference.
local smtpd = require "smtpd"
local mechanisms = require "smtpd.mechanisms"

local function bit(flags, n)
  return math.floor(flags / 2 ^ n) % 2 == 1
end

-- The fields between NULs, by position (not by pattern), for the model.
local function fields(raw)
  local out, start = {}, 1
  for i = 1, #raw do
    if raw:byte(i) == 0 then
      out[#out + 1] = raw:sub(start, i - 1)
      start = i + 1
    end
  end
  out[#out + 1] = raw:sub(start)
  return out
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end

local function check(cond, what)
  if not cond then error("fuzz_plain: " .. what, 2) end
end

return function(input, flags)
  local allow_authzid = bit(flags, 0)
  local via_challenge = bit(flags, 1) -- "AUTH PLAIN", then the 334 exchange
  local as_text = bit(flags, 2)       -- the input is the base64 text itself
  local grant = not bit(flags, 3)     -- what the authenticator answers

  local text = as_text and input or smtpd.b64encode(input)
  local pushed, challenges, seen = {}, 0, nil
  local server = {
    auth_allow_authzid = allow_authzid,
    session = {},
    envelope = {},
    push = function(_, line) pushed[#pushed + 1] = line end,
    -- The C side answers with the strictly decoded line, or nil after its
    -- own 501.
    challenge_auth = function(_, challenge)
      challenges = challenges + 1
      check(challenge == "", "PLAIN's challenge is not empty")
      return smtpd.b64decode(text)
    end,
    authenticator = function(_, session, envelope, mechanism, credentials)
      check(seen == nil, "the authenticator was called twice")
      seen = { mechanism = mechanism, credentials = credentials }
      return smtpd.AuthResult { success = grant, handled = false }
    end,
  }

  local args = via_challenge and { "PLAIN" } or { "PLAIN", text }
  local ok, result = pcall(mechanisms.PLAIN, server, args)
  check(ok, "PLAIN raised: " .. tostring(result))
  check(challenges == (via_challenge and 1 or 0), "wrong number of challenges")
  check(result ~= nil, "PLAIN returned nothing")

  local raw
  if via_challenge then raw = smtpd.b64decode(text)
  elseif text == "=" then raw = "" -- RFC 4954 4: present and empty
  else raw = smtpd.b64decode(text) end

  local function refused(handled, reply)
    check(seen == nil, "the authenticator was called for a refused response")
    check(result.success == false and result.handled == handled, "wrong refusal")
    check(same_list(pushed, reply and { reply } or {}), "wrong replies for a refusal")
  end

  if raw == nil then
    -- Undecodable: the mechanism says 501 itself for an initial response;
    -- after a challenge the C side has said it already.
    return refused(true, not via_challenge and "501 5.5.2 Can't decode base64" or nil)
  end
  local f = fields(raw)
  if #f ~= 3 then return refused(true, "501 5.5.2 Can't split auth value") end
  local authzid, login, password = f[1], f[2], f[3]
  if authzid ~= "" and authzid ~= login and not allow_authzid then
    return refused(false, nil)
  end
  check(seen ~= nil, "the authenticator was not called for a well-formed response")
  check(seen.mechanism == "PLAIN", "wrong mechanism name")
  local c = seen.credentials
  check(c.login == login, "login differs")
  check(c.password == password, "password differs")
  check(c.authzid == authzid, "authzid differs")
  check(#pushed == 0, "replies sent for a well-formed response")
  check(result.success == grant, "the authenticator's answer was not passed on")
  -- tostring() must not show the password (where it could not appear by
  -- coincidence: in the login or the fixed text).
  if #password >= 6 and password:find("^%w+$") and login:find("^[%w@.]*$") and
    not login:find(password, 1, true) and
    not ("LoginPassword login password"):find(password, 1, true) then
    check(not tostring(c):find(password, 1, true), "tostring(LoginPassword) shows the password")
  end
end
