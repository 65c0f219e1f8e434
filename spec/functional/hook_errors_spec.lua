-- Errors in handler code (auth-api.md 5): a Lua error or a return value of
-- the wrong type in any hook gives the client a temporary failure (454 in
-- AUTH, 451 elsewhere) and never the error text; the session goes on; the
-- log names the hook. handle_exception may supply the status.
local h = require "spec.functional.common"

local BOOM = "KABOOM-7731"

-- Every hook misbehaves when its argument (or, for hooks without one, a
-- flag set by NOOP) asks it to: "error" raises, "type" returns a table.
local SOURCE = [[
local smtpd = require "smtpd"
local mode = {}
local function act(hook, how)
  how = how or mode[hook]
  if how == "error" then error("]] .. BOOM .. [[") end
  if how == "type" then return { "not", "a", "status" } end
  if how == "number" then return 42 end
  if how == "nothing" then return end
  return smtpd.MISSING
end
function handle_NOOP(server, session, envelope, arg)
  local hook, how = (arg or ""):match("^set (%S+) (%S+)$")
  if hook then mode[hook] = how return "250 set" end
  return act("NOOP", arg)
end
function handle_HELO(server, session, envelope, hostname)
  local r = act("HELO")
  if r == smtpd.MISSING then session.host_name = hostname return "250 mx.test" end
  return r
end
function handle_EHLO(server, session, envelope, hostname, responses)
  local r = act("EHLO")
  if r == smtpd.MISSING then session.host_name = hostname return responses end
  if mode.EHLO == "type" then return "250 a string, not a list" end
  return r
end
function handle_MAIL(server, session, envelope, address, options)
  return act("MAIL", address:match("^(%a+)@") )
end
function handle_RCPT(server, session, envelope, address, options)
  return act("RCPT", address:match("^(%a+)@"))
end
function handle_DATA(server, session, envelope)
  return act("DATA", envelope.content:match("^(%a+)"))
end
function handle_RSET() return act("RSET") end
function handle_VRFY(server, session, envelope, address) return act("VRFY", address:match("^(%a+)@")) end
function handle_AUTH(server, session, envelope, args)
  return act("AUTH", args[2] == "hook-error" and "error" or args[2] == "hook-type" and "type" or nil)
end
function auth_XMECH(server, args)
  if args[2] == "error" then error("]] .. BOOM .. [[") end
  if args[2] == "type" then return 42 end
  if args[2] == "string" then return "235 2.7.0 not an AuthResult" end
  if args[2] == "after" then
    server:challenge_auth("")
    error("]] .. BOOM .. [[")
  end
  return smtpd.AuthResult{ success = true }
end
function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "error" then error("]] .. BOOM .. [[-A") end
  if auth_data.login == "type" then return "yes" end
  return smtpd.AuthResult{ success = auth_data.login == "alice", handled = false }
end
]]

local NO_TLS = { auth_require_tls = false }
local DATA_GO = { "DATA", "354 End data with <CR><LF>.<CR><LF>" }

local function case(name, dialogue, extra)
  local c = { name = name, source = SOURCE, options = NO_TLS, dialogue = dialogue,
    stderr_lacks = {}, stderr_has = {} }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function erring(name, hook, dialogue)
  return case(name, dialogue, { stderr_has = { BOOM, hook } })
end

describe("hook errors (5)", function()
  h.run{
    erring("handle_MAIL raises -> 451, then MAIL works", "handle_MAIL", {
      h.ehlo,
      { "MAIL FROM:<error@example.org>", h.LOCAL_ERROR },
      { "MAIL FROM:<fine@example.org>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" } }),
    case("handle_MAIL returns a table -> 451", {
      h.ehlo,
      { "MAIL FROM:<type@example.org>", h.LOCAL_ERROR },
      { "MAIL FROM:<number@example.org>", h.LOCAL_ERROR },
      { "MAIL FROM:<nothing@example.org>", h.LOCAL_ERROR },
      { "MAIL FROM:<fine@example.org>", "250 OK" } }),
    erring("handle_RCPT raises -> 451, then RCPT works", "handle_RCPT", {
      h.ehlo,
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT TO:<error@example.org>", h.LOCAL_ERROR },
      { "RCPT TO:<type@example.org>", h.LOCAL_ERROR },
      { "RCPT TO:<fine@example.org>", "250 OK" },
      DATA_GO,
      { send = "hello\r\n.\r\n", expect = "250 OK" } }),
    erring("handle_DATA raises -> 451, then a new transaction works", "handle_DATA", {
      h.ehlo,
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      DATA_GO,
      { send = "error\r\n.\r\n", expect = h.LOCAL_ERROR },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      DATA_GO,
      { send = "type\r\n.\r\n", expect = h.LOCAL_ERROR },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      DATA_GO,
      { send = "fine\r\n.\r\n", expect = "250 OK" } }),
    erring("handle_NOOP raises -> 451", "handle_NOOP", {
      { "NOOP error", h.LOCAL_ERROR },
      { "NOOP type", h.LOCAL_ERROR },
      { "NOOP number", h.LOCAL_ERROR },
      { "NOOP", "250 OK" } }),
    erring("handle_VRFY raises -> 451", "handle_VRFY", {
      { "VRFY <error@example.org>", h.LOCAL_ERROR },
      { "VRFY <type@example.org>", h.LOCAL_ERROR },
      { "VRFY <fine@example.org>", "252 Cannot VRFY user, but will accept message and attempt delivery" } }),
    erring("handle_RSET raises -> 451", "handle_RSET", {
      { "NOOP set RSET error", "250 set" },
      { "RSET", h.LOCAL_ERROR },
      { "NOOP set RSET type", "250 set" },
      { "RSET", h.LOCAL_ERROR },
      { "NOOP set RSET ok", "250 set" },
      { "RSET", "250 OK" } }),
    erring("handle_HELO raises -> 451, then HELO works", "handle_HELO", {
      { "NOOP set HELO error", "250 set" },
      { "HELO client.test", h.LOCAL_ERROR },
      { "NOOP set HELO type", "250 set" },
      { "HELO client.test", h.LOCAL_ERROR },
      { "NOOP set HELO ok", "250 set" },
      h.helo,
      { "MAIL FROM:<a@example.org>", "250 OK" } }),
    erring("handle_EHLO raises -> 451, then EHLO works", "handle_EHLO", {
      { "NOOP set EHLO error", "250 set" },
      { "EHLO client.test", h.LOCAL_ERROR },
      { "NOOP set EHLO type", "250 set" },
      { "EHLO client.test", h.LOCAL_ERROR },
      { "NOOP set EHLO ok", "250 set" },
      { "EHLO client.test", { "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING",
        "250-AUTH LOGIN PLAIN XMECH", "250 HELP" } },
      { "MAIL FROM:<a@example.org>", "250 OK" } }),
    erring("handle_AUTH raises -> 454, then AUTH works", "handle_AUTH", {
      h.ehlo,
      { "AUTH PLAIN hook-error", h.AUTH_TEMPFAIL },
      { "AUTH PLAIN hook-type", h.AUTH_TEMPFAIL },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK } }),
    erring("an auth_ mechanism raises -> 454", "XMECH", {
      h.ehlo,
      { "AUTH XMECH error", h.AUTH_TEMPFAIL },
      { "AUTH XMECH type", h.AUTH_TEMPFAIL },
      { "AUTH XMECH string", h.AUTH_TEMPFAIL },
      { "AUTH XMECH", h.AUTH_OK } }),
    erring("a mechanism raising after a challenge -> 454", "XMECH", {
      h.ehlo,
      { "AUTH XMECH after", "334 " },
      { "", h.AUTH_TEMPFAIL },
      { "NOOP", "250 OK" } }),
    erring("the authenticator raises -> 454", "authenticator", {
      h.ehlo,
      { "AUTH PLAIN " .. h.plain("error", "x"), h.AUTH_TEMPFAIL },
      { "AUTH PLAIN " .. h.plain("type", "x"), h.AUTH_TEMPFAIL },
      { "AUTH LOGIN " .. h.b64("error"), "334 UGFzc3dvcmQA" },
      { h.b64("x"), h.AUTH_TEMPFAIL },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK } }),
  }
end)

-- Misuse of the API inside hooks: injected reply lines, a stale server
-- object, a bare coroutine.yield, a non-string error value.
local MISUSE = [[
local smtpd = require "smtpd"
local saved
function handle_NOOP(server, session, envelope, arg)
  if arg == "push-crlf" then server:push("250 a\r\n250 b") return "250 OK" end
  if arg == "push-nul" then server:push("250 a\0b") return "250 OK" end
  if arg == "return-crlf" then return "250 a\r\n250 injected" end
  if arg == "return-lf" then return "250 a\n250 injected" end
  if arg == "save" then saved = server return "250 saved" end
  if arg == "use" then saved:push("250 from a dead session") return "250 OK" end
  if arg == "yield" then coroutine.yield() return "250 after yield" end
  if arg == "table-error" then error({ code = 42 }) end
  if arg == "nil-error" then error(nil) end
  return "250 OK"
end
function handle_MAIL(server, session, envelope, address)
  if address:match("^crlf@") then return "250 ok\r\n250 injected" end
  envelope.mail_from = address
  return "250 OK"
end
]]

describe("misusing the API inside hooks (5)", function()
  h.run{
    { name = "a status or pushed line holding CR, LF or NUL is a hook error, never sent",
      source = MISUSE,
      dialogue = {
        { "NOOP push-crlf", h.LOCAL_ERROR },
        { "NOOP push-nul", h.LOCAL_ERROR },
        { "NOOP return-crlf", h.LOCAL_ERROR },
        { "NOOP return-lf", h.LOCAL_ERROR },
        h.ehlo,
        { "MAIL FROM:<crlf@example.org>", h.LOCAL_ERROR },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "NOOP", "250 OK" },
      } },

    { name = "a server object kept from a closed session raises 'session is closed'",
      source = MISUSE,
      dialogue = {
        { "NOOP save", "250 saved" },
        { "QUIT", "221 Bye", closed = true },
        { conn = "b", "NOOP use", h.LOCAL_ERROR },
        { conn = "b", "NOOP", "250 OK" },
      },
      stderr_has = { "session is closed" } },

    { name = "a bare coroutine.yield in a hook fails the hook instead of hanging",
      source = MISUSE,
      dialogue = {
        { "NOOP yield", h.LOCAL_ERROR },
        { "NOOP", "250 OK" },
        { conn = "b", "NOOP", "250 OK" },
      } },

    { name = "error values that are not strings",
      source = MISUSE,
      dialogue = {
        { "NOOP table-error", h.LOCAL_ERROR },
        { "NOOP nil-error", h.LOCAL_ERROR },
        { "NOOP", "250 OK" },
      } },
  }
end)

local WITH_EXCEPTION = SOURCE .. [[
function handle_exception(err)
  if tostring(err):find("]] .. BOOM .. [[-A", 1, true) then
    return "454 4.7.0 custom auth failure"
  end
  return "451 4.3.0 custom: " .. (tostring(err):find("]] .. BOOM .. [[", 1, true) and "saw it" or "other")
end
]]

local BROKEN_EXCEPTION = SOURCE .. [[
function handle_exception(err)
  if tostring(err):find("]] .. BOOM .. [[", 1, true) and not tostring(err):find("-A", 1, true) then
    error("handle_exception failed too: " .. tostring(err))
  end
  return 42
end
]]

describe("handle_exception (5)", function()
  h.run{
    { name = "supplies the status in MAIL, RCPT and NOOP",
      source = WITH_EXCEPTION, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<error@example.org>", "451 4.3.0 custom: saw it" },
        { "MAIL FROM:<type@example.org>", match = "^451 4%.3%.0 custom: " },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<error@example.org>", "451 4.3.0 custom: saw it" },
        { "NOOP error", "451 4.3.0 custom: saw it" },
        { "NOOP", "250 OK" },
      } },

    { name = "supplies the status in AUTH",
      source = WITH_EXCEPTION, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("error", "x"), "454 4.7.0 custom auth failure" },
        { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
      } },

    { name = "a failing or wrongly typed handle_exception falls back to the default",
      source = BROKEN_EXCEPTION, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<error@example.org>", h.LOCAL_ERROR },
        { "NOOP error", h.LOCAL_ERROR },
        { "AUTH PLAIN " .. h.plain("error", "x"), h.AUTH_TEMPFAIL },
        { "NOOP", "250 OK" },
      },
      stderr_has = { BOOM } },
  }
end)
