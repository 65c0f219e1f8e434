--- Built-in AUTH mechanisms PLAIN and LOGIN (auth-api.md 4.5).
-- They are ordinary mechanism hooks, `fn(server, args)`, compiled into the
-- luasmtpd binary; a handler entry `auth_PLAIN` or `auth_LOGIN` replaces
-- them. Both hand a `LoginPassword` to the handler's `authenticator`, which
-- decides. `server:challenge_auth` suspends until the client answers, so
-- each mechanism reads as straight-line code.
-- @module smtpd.mechanisms
local smtpd = require "smtpd"

local M = {}

local AuthResult, LoginPassword = smtpd.AuthResult, smtpd.LoginPassword

-- The reply has been sent already (a 501); nothing more to add.
local function handled_failure()
  return AuthResult { success = false, handled = true }
end

-- "535 5.7.8 Authentication credentials invalid".
local function invalid()
  return AuthResult { success = false, handled = false }
end

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

-- What an authenticator may return (auth-api.md 4.4); the C side checks
-- the details, this names the culprit in the log.
local valid_result = { userdata = true, table = true, boolean = true }

--- Calls the handler's authenticator, or fails when there is none.
-- Errors are re-raised prefixed with "authenticator: " so the log names the
-- hook that failed (LuaJIT's pcall lets the authenticator still suspend).
local function authenticate(server, mechanism, credentials)
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
    return invalid()
  end
  return authenticate(server, "PLAIN", LoginPassword(login, password, authzid))
end

--- AUTH LOGIN (draft-murchison-sasl-login).
-- @param server the server object
-- @tparam table args `{ "LOGIN", initial_response? }`
-- @return an AuthResult
function M.LOGIN(server, args)
  local login
  if args[2] == nil then
    login = server:challenge_auth("User Name\0")
  else
    login = decode_initial(server, args[2])
  end
  if login == nil then return handled_failure() end
  local password = server:challenge_auth("Password\0")
  if password == nil then return handled_failure() end
  return authenticate(server, "LOGIN", LoginPassword(login, password))
end

return M
