-- Secrets never show: tostring() of AuthResult and LoginPassword hides
-- auth_data and the password (auth-api.md 2), and the server's log never
-- holds a password, an AUTH argument or a challenge response (design.md
-- "Errors fail closed"). The server runs with -d so that debug logging is
-- covered too.
local h = require "spec.functional.common"

-- A password that appears nowhere else, and its encodings on the wire.
local PW = "Zq9-UNIQUE-pw-4417"
local PLAIN_IR = h.plain("alice", PW)
local LOGIN_USER, LOGIN_PW = h.b64("alice"), h.b64(PW)
local SECRET_AD = "AUTHDATA-SECRET-8812"

local SOURCE = [[
local smtpd = require "smtpd"
local shown = {}
function authenticator(server, session, envelope, mechanism, auth_data)
  shown.lp = tostring(auth_data)
  shown.fields = ("%s/%s/%s"):format(auth_data.login, auth_data.password == "]] .. PW .. [[" and "pw-ok" or "pw-bad",
    tostring(auth_data.authzid == nil or auth_data.authzid == ""))
  shown.eq = tostring(auth_data == smtpd.LoginPassword("alice", "]] .. PW .. [["))
  shown.ne = tostring(auth_data == smtpd.LoginPassword("alice", "other"))
  if auth_data.login == "crash" then
    error("cannot check " .. auth_data.password)
  end
  local ok = auth_data.login == "alice" and auth_data.password == "]] .. PW .. [["
  local r = smtpd.AuthResult{ success = ok, handled = false, auth_data = "]] .. SECRET_AD .. [[" }
  shown.ar = tostring(r)
  return r
end
function auth_XSECRET(server, args)
  local resp = server:challenge_auth("")
  local r = smtpd.AuthResult{ success = resp == "]] .. PW .. [[", auth_data = resp }
  shown.ar = tostring(r)
  return r
end
function handle_NOOP(server, session, envelope, arg)
  if arg == "fields" then
    local r = smtpd.AuthResult{ success = false, handled = false }
    local lp = smtpd.LoginPassword("u", "p", "z")
    return ("250 %s %s %s %s/%s/%s"):format(tostring(r.success), tostring(r.handled), tostring(r.message),
      lp.login, lp.password, lp.authzid)
  end
  return "250 " .. tostring(shown[arg])
end
]]

-- Fails every login with the login in the message ("echo" also quotes the
-- password, which the log must show scrubbed).
local NO_SUCH_USER = [[
function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "echo" then error("no such user: echo with " .. auth_data.password) end
  error("no such user: " .. auth_data.login .. " (strict lookup)")
end
]]

local SECRETS = { PW, PLAIN_IR, LOGIN_PW, SECRET_AD, h.b64(SECRET_AD) }
local DEBUG = { "-d" }

describe("secrets", function()
  h.run{
    { name = "tostring(AuthResult) never shows auth_data",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. PLAIN_IR, h.AUTH_OK },
        { "NOOP ar", "250 AuthResult(success=true, handled=false, message=nil, auth_data=...)" },
      },
      stderr_lacks = SECRETS },

    { name = "tostring(AuthResult) of a failure",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("alice", "not-it"), h.AUTH_INVALID },
        { "NOOP ar", "250 AuthResult(success=false, handled=false, message=nil, auth_data=...)" },
      },
      stderr_lacks = SECRETS },

    { name = "AuthResult and LoginPassword fields are readable; handled defaults to true",
      source = SOURCE, options = { auth_require_tls = false },
      dialogue = { { "NOOP fields", "250 false false nil u/p/z" } } },

    { name = "tostring(LoginPassword) never shows the password; == compares login and password",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. PLAIN_IR, h.AUTH_OK },
        { "NOOP lp", '250 LoginPassword(login="alice", password=...)' },
        { "NOOP fields", "250 false false nil u/p/z" },
        { "NOOP eq", "250 true" },
        { "NOOP ne", "250 false" },
      },
      stderr_lacks = SECRETS },

    { name = "the log shows AUTH PLAIN ******** and never the initial response",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. PLAIN_IR, h.AUTH_OK },
        { "QUIT", "221 Bye", closed = true },
      },
      stderr_has = { "AUTH PLAIN ********" },
      stderr_lacks = SECRETS },

    { name = "PLAIN challenge responses are not logged",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN", "334 " },
        { PLAIN_IR, h.AUTH_OK },
      },
      stderr_lacks = SECRETS },

    { name = "LOGIN responses are not logged",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH LOGIN " .. LOGIN_USER, "334 UGFzc3dvcmQA" },
        { LOGIN_PW, h.AUTH_OK },
        { "NOOP lp", '250 LoginPassword(login="alice", password=...)' },
      },
      stderr_lacks = SECRETS },

    { name = "a custom mechanism's challenge response is not logged",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH XSECRET", "334 " },
        { h.b64(PW), h.AUTH_OK },
        { "NOOP ar", "250 AuthResult(success=true, handled=true, message=nil, auth_data=...)" },
      },
      stderr_lacks = SECRETS },

    { name = "an error message holding the password is logged scrubbed",
      source = SOURCE, options = { auth_require_tls = false }, args = DEBUG,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("crash", PW), h.AUTH_TEMPFAIL },
        { "NOOP", "250 nil" },
      },
      stderr_has = { "cannot check" },
      stderr_lacks = SECRETS },

    -- A password made of '*' once made the scrubber replace "***" with
    -- "***" forever: one AUTH command spun the process at 100% CPU.
    { name = "a password of asterisks does not hang the scrubber",
      source = NO_SUCH_USER, options = { auth_require_tls = false },
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("bob", "***"), h.AUTH_TEMPFAIL },
        { "AUTH PLAIN " .. h.plain("echo", "***"), h.AUTH_TEMPFAIL },
        { "NOOP", "250 OK" },
      },
      stderr_has = { "no such user: bob", "no such user: echo with ***" } },

    -- The login is no secret (the failure line names it anyway): a short
    -- one must not blank those letters in the rest of the message.
    { name = "a short login is not scrubbed from error messages; the password is",
      source = NO_SUCH_USER, options = { auth_require_tls = false },
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("str", PW), h.AUTH_TEMPFAIL },
        { "AUTH PLAIN " .. h.plain("echo", PW), h.AUTH_TEMPFAIL },
      },
      stderr_has = { "no such user: str (strict lookup)", "no such user: echo with " .. ("*"):rep(#PW) },
      stderr_lacks = SECRETS },
  }
end)
