-- AUTH: the EHLO advertisement (auth-api.md 4.1), the checks of the AUTH
-- command in their order (4.2), handle_AUTH (4.3), and the gates, lifetime
-- and limits of an authentication (4.6). Each case is data: a handler
-- script, options, and a dialogue of sends and byte-exact replies.
local h = require "spec.functional.common"

local NO_TLS = { auth_require_tls = false }
local GATED = { auth_require_tls = false, auth_required = true }
local ALICE = h.ALICE
local PLAIN = "AUTH PLAIN " .. h.ALICE_PLAIN
local BAD_PLAIN = "AUTH PLAIN " .. h.plain("alice", "wrong")

describe("EHLO advertises AUTH (4.1)", function()
  h.run{
    { name = "no AUTH line while auth_require_tls holds and there is no TLS",
      source = ALICE,
      dialogue = { { "EHLO client.test", h.EHLO_DEFAULT } } },

    { name = "built-in mechanisms, sorted, when auth_require_tls is false",
      source = ALICE, options = NO_TLS,
      dialogue = { { "EHLO client.test", h.EHLO_AUTH } } },

    { name = "handler mechanisms join the built-ins, sorted by byte order, __ becomes -",
      source = [[
local smtpd = require "smtpd"
function auth_XOAUTH2(server, args) return false end
function auth_CRAM__MD5(server, args) return false end
function auth_ANONYMOUS(server, args) return false end
auth_x_mine = smtpd.auth_mechanism("x-mine", function(server, args) return false end)
]],
      options = NO_TLS,
      dialogue = { { "EHLO client.test", {
        "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING",
        "250-AUTH ANONYMOUS CRAM-MD5 LOGIN PLAIN X-MINE XOAUTH2", "250 HELP" } } } },

    { name = "no AUTH line when every mechanism is excluded",
      source = ALICE, options = { auth_require_tls = false, auth_exclude_mechanism = { "LOGIN", "PLAIN" } },
      dialogue = {
        { "EHLO client.test", {
          "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING", "250 HELP" } },
        { PLAIN, h.UNRECOGNIZED_MECH },
      } },

    { name = "auth_exclude_mechanism is case-insensitive and removes the mechanism",
      source = ALICE, options = { auth_require_tls = false, auth_exclude_mechanism = "login" },
      dialogue = {
        { "EHLO client.test", {
          "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING",
          "250-AUTH PLAIN", "250 HELP" } },
        { "AUTH LOGIN", h.UNRECOGNIZED_MECH },
        { PLAIN, h.AUTH_OK },
      } },

    { name = "auth_exclude_mechanism in the script's options removes a handler mechanism",
      source = [[
function auth_XFOO(server, args) return true end
options = { auth_require_tls = false, auth_exclude_mechanism = { "xfoo", "LOGIN" } }
]],
      dialogue = {
        { "EHLO client.test", {
          "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING",
          "250-AUTH PLAIN", "250 HELP" } },
        { "AUTH XFOO", h.UNRECOGNIZED_MECH },
      } },
  }
end)

describe("AUTH checks, in order (4.2)", function()
  h.run{
    { name = "1: before EHLO -> 503 send EHLO first (wins over 3 and 6)",
      source = ALICE,
      dialogue = {
        { "AUTH", "503 Error: send EHLO first" },
        { PLAIN, "503 Error: send EHLO first" },
      } },

    { name = "1: before EHLO -> 503 (wins over 8, auth_require_tls off)",
      source = ALICE, options = NO_TLS,
      dialogue = { { "AUTH NOPE", "503 Error: send EHLO first" } } },

    { name = "2: after HELO -> 500 not recognized (wins over 3)",
      source = ALICE,
      dialogue = {
        h.helo,
        { PLAIN, "500 Error: command 'AUTH' not recognized" },
        { "AUTH", "500 Error: command 'AUTH' not recognized" },
      } },

    { name = "2: after HELO -> 500 (auth_require_tls off)",
      source = ALICE, options = NO_TLS,
      dialogue = { h.helo, { PLAIN, "500 Error: command 'AUTH' not recognized" } } },

    { name = "3: no TLS while auth_require_tls -> 538 (wins over 6, 7 and 8)",
      source = ALICE,
      dialogue = {
        h.ehlo,
        { PLAIN, "538 5.7.11 Encryption required for requested authentication mechanism" },
        { "AUTH", "538 5.7.11 Encryption required for requested authentication mechanism" },
        { "AUTH NOPE", "538 5.7.11 Encryption required for requested authentication mechanism" },
        { "AUTH NOPE a b", "538 5.7.11 Encryption required for requested authentication mechanism" },
      } },

    { name = "4: already authenticated -> 503 (wins over 5, 6, 7 and 8)",
      source = ALICE, options = NO_TLS,
      dialogue = {
        h.ehlo, { PLAIN, h.AUTH_OK },
        { PLAIN, "503 Already authenticated" },
        { "AUTH", "503 Already authenticated" },
        { "AUTH NOPE a b", "503 Already authenticated" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "AUTH", "503 Already authenticated" },
      } },

    { name = "5: mail transaction open -> 503 5.5.1 (wins over 6, 7 and 8)",
      source = ALICE, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { PLAIN, "503 5.5.1 Error: MAIL transaction in progress" },
        { "AUTH", "503 5.5.1 Error: MAIL transaction in progress" },
        { "AUTH NOPE a b", "503 5.5.1 Error: MAIL transaction in progress" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { PLAIN, "503 5.5.1 Error: MAIL transaction in progress" },
        { "RSET", "250 OK" },
        { PLAIN, h.AUTH_OK },
      } },

    { name = "5: a transaction ended by DATA no longer blocks AUTH",
      source = ALICE, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "Subject: x\r\n\r\nbody\r\n.\r\n", expect = "250 OK" },
        { PLAIN, h.AUTH_OK },
      } },

    { name = "6: no argument -> 501 Not enough value",
      source = ALICE, options = NO_TLS,
      dialogue = { h.ehlo, { "AUTH", "501 Not enough value" }, { "AUTH ", "501 Not enough value" } } },

    { name = "7: more than two words -> 501 Too many values (wins over 8)",
      source = ALICE, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN a b", "501 Too many values" },
        { "AUTH NOPE a b", "501 Too many values" },
        { "AUTH LOGIN a b c", "501 Too many values" },
      } },

    { name = "8: unknown mechanism -> 504; known ones match case-insensitively",
      source = ALICE, options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "AUTH NOPE", h.UNRECOGNIZED_MECH },
        { "AUTH NOPE abc", h.UNRECOGNIZED_MECH },
        { "AUTH CRAM-MD5", h.UNRECOGNIZED_MECH },
        { "AUTH pLaIn " .. h.ALICE_PLAIN, h.AUTH_OK },
      } },

    { name = "generic checks come first: the line-length limit (before 1)",
      source = ALICE, options = NO_TLS,
      dialogue = {
        { "AUTH PLAIN " .. string.rep("A", 13000), "500 Command line too long" },
        h.ehlo,
        { "AUTH PLAIN " .. string.rep("A", 13000), "500 Command line too long" },
        { PLAIN, h.AUTH_OK },
      } },

    { name = "generic checks come first: command_call_limit (before 4)",
      source = ALICE, options = { auth_require_tls = false, command_call_limit = 1 },
      dialogue = {
        h.ehlo,
        { PLAIN, h.AUTH_OK },
        { PLAIN, "421 4.7.0 AUTH sent too many times", closed = true },
      } },

    { name = "an initial response may make the AUTH line longer than 512 octets",
      source = [[
local smtpd = require "smtpd"
function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "long" and auth_data.password == string.rep("p", 6000) then
    return smtpd.AuthResult{ success = true }
  end
  return smtpd.AuthResult{ success = false, handled = false }
end
]],
      options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("long", string.rep("p", 6000)), h.AUTH_OK },
      } },
  }
end)

local HANDLE_AUTH = ALICE .. [[
local ran = "no"
function handle_AUTH(server, session, envelope, args)
  ran = table.concat(args, " ")
  local mode = args[2]
  if mode == "string" then
    return "535 5.7.8 hook says no"
  elseif mode == "ok" then
    session.authenticated = true
    server:push("235 2.7.0 hook pushed")
    return nil
  elseif mode == "silent" then
    return nil
  elseif mode == "challenge" then
    local r = server:challenge_auth("again")
    ran = ran .. " resp=" .. tostring(r)
    return nil
  end
  return smtpd.MISSING
end
function handle_NOOP(server, session, envelope, arg)
  return "250 ran=" .. ran
end
]]

describe("handle_AUTH (4.3)", function()
  h.run{
    { name = "MISSING runs the mechanism",
      source = HANDLE_AUTH, options = GATED,
      dialogue = {
        h.ehlo,
        { PLAIN, h.AUTH_OK },
        { "NOOP", "250 ran=PLAIN " .. h.ALICE_PLAIN },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },

    { name = "a string is the final reply; args[1] is upper-cased",
      source = HANDLE_AUTH, options = GATED,
      dialogue = {
        h.ehlo,
        { "AUTH plain string", "535 5.7.8 hook says no" },
        { "NOOP", "250 ran=PLAIN string" },
        { "AUTH login string", "535 5.7.8 hook says no" },
        { "NOOP", "250 ran=LOGIN string" },
        { "MAIL FROM:<a@example.org>", h.AUTH_REQUIRED },
      } },

    { name = "nil after pushing its own reply; the hook sets session.authenticated",
      source = HANDLE_AUTH, options = GATED,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN ok", "235 2.7.0 hook pushed" },
        { "AUTH PLAIN ok", "503 Already authenticated" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },

    { name = "nil without a final reply -> 535",
      source = HANDLE_AUTH, options = GATED,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN silent", h.AUTH_INVALID },
        { "NOOP", "250 ran=PLAIN silent" },
        { "MAIL FROM:<a@example.org>", h.AUTH_REQUIRED },
      } },

    { name = "nil after only a 334 challenge -> 535 once the response is in",
      source = HANDLE_AUTH, options = GATED,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN challenge", "334 YWdhaW4=" },
        { "aGk=", h.AUTH_INVALID },
        { "NOOP", "250 ran=PLAIN challenge resp=hi" },
      } },

    { name = "not called when check 3 fails (538)",
      source = HANDLE_AUTH,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN string", "538 5.7.11 Encryption required for requested authentication mechanism" },
        { "NOOP", "250 ran=no" },
      } },

    { name = "not called for an unknown mechanism",
      source = HANDLE_AUTH, options = NO_TLS,
      dialogue = {
        { "AUTH PLAIN string", "503 Error: send EHLO first" },
        h.ehlo,
        { "AUTH NOPE string", h.UNRECOGNIZED_MECH },
        { "AUTH PLAIN a b", "501 Too many values" },
        { "NOOP", "250 ran=no" },
      } },
  }
end)

local FIVE_FAILED = "421 4.7.0 mx.test Error: too many failed authentication attempts"

-- The attempt that reaches the limit answers 421 and the server closes.
-- (Whether its 535 comes first is not fixed by auth-api.md 4.6, so either
-- "535 then 421" or "421" alone passes; nothing else does.)
local function limit_reached(line)
  return {
    send = line .. "\r\n",
    check = function(_, conns)
      local c = conns.a
      local code, text, lines = c:reply()
      if code == 535 then
        assert.same({ h.AUTH_INVALID }, lines)
        code, text, lines = c:reply()
      end
      assert(code, "expected 421, got " .. tostring(text) .. "\n" .. c:transcript_text())
      assert.same({ FIVE_FAILED }, lines)
      assert.is_true(c:is_closed(), "the server must close after the 421")
    end,
  }
end

describe("gates, lifetime and limits (4.6)", function()
  h.run{
    { name = "auth_required: HELP and VRFY answer 530 first, before EHLO too",
      source = ALICE, options = GATED,
      dialogue = {
        { "HELP", h.AUTH_REQUIRED },
        { "VRFY", h.AUTH_REQUIRED },
        { "VRFY <a@example.org>", h.AUTH_REQUIRED },
        h.ehlo,
        { "HELP", h.AUTH_REQUIRED },
        { "HELP MAIL", h.AUTH_REQUIRED },
        { "VRFY <a@example.org>", h.AUTH_REQUIRED },
        { PLAIN, h.AUTH_OK },
        { "HELP", "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY" },
        { "VRFY <a@example.org>", "252 Cannot VRFY user, but will accept message and attempt delivery" },
      } },

    { name = "auth_required: MAIL/RCPT/DATA say send HELO first, then 530",
      source = ALICE, options = GATED,
      dialogue = {
        { "MAIL FROM:<a@example.org>", "503 Error: send HELO first" },
        { "RCPT TO:<b@example.org>", "503 Error: send HELO first" },
        { "DATA", "503 Error: send HELO first" },
        h.ehlo,
        { "MAIL FROM:<a@example.org>", h.AUTH_REQUIRED },
        { "RCPT TO:<b@example.org>", h.AUTH_REQUIRED },
        { "DATA", h.AUTH_REQUIRED },
        { "MAIL", h.AUTH_REQUIRED },
        { "NOOP", "250 OK" },
        { "RSET", "250 OK" },
        { PLAIN, h.AUTH_OK },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "hi\r\n.\r\n", expect = "250 OK" },
      } },

    { name = "auth_required without auth_require_tls logs a warning at start-up",
      source = ALICE, options = GATED,
      dialogue = { h.ehlo },
      stderr_matches = { "auth_required[^\n]*auth_require_tls" } },

    { name = "pipelined: MAIL right behind AUTH sees the new state",
      source = ALICE, options = GATED,
      dialogue = {
        h.ehlo,
        { send = "MAIL FROM:<a@example.org>\r\n" .. PLAIN .. "\r\nMAIL FROM:<a@example.org>\r\n" },
        { expect = h.AUTH_REQUIRED },
        { expect = h.AUTH_OK },
        { expect = "250 OK" },
      } },

    { name = "a failed AUTH leaves the gate closed",
      source = ALICE, options = GATED,
      dialogue = {
        h.ehlo,
        { BAD_PLAIN, h.AUTH_INVALID },
        { "MAIL FROM:<a@example.org>", h.AUTH_REQUIRED },
      } },

    { name = "RSET keeps the authentication",
      source = ALICE, options = GATED,
      dialogue = {
        h.ehlo, { PLAIN, h.AUTH_OK },
        { "RSET", "250 OK" },
        { PLAIN, "503 Already authenticated" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },

    { name = "a new EHLO keeps the authentication",
      source = ALICE, options = GATED,
      dialogue = {
        h.ehlo, { PLAIN, h.AUTH_OK },
        { "EHLO again.test", h.EHLO_AUTH },
        { PLAIN, "503 Already authenticated" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },

    { name = "the end of DATA keeps the authentication",
      source = ALICE, options = GATED,
      dialogue = {
        h.ehlo, { PLAIN, h.AUTH_OK },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "hi\r\n.\r\n", expect = "250 OK" },
        { PLAIN, "503 Already authenticated" },
        { "MAIL FROM:<c@example.org>", "250 OK" },
      } },

    { name = "HELO keeps the authentication but makes AUTH unknown",
      source = ALICE, options = GATED,
      dialogue = {
        h.ehlo, { PLAIN, h.AUTH_OK },
        h.helo,
        { PLAIN, "500 Error: command 'AUTH' not recognized" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },

    { name = "command_call_limit as a number",
      source = ALICE, options = { command_call_limit = 3 },
      dialogue = h.steps(
        h.rep({ "NOOP", "250 OK" }, 3),
        { "RSET", "250 OK" },
        { "NOOP", "421 4.7.0 NOOP sent too many times", closed = true }) },

    { name = "command_call_limit as a table: per command, '*' for the rest",
      source = [[options = { command_call_limit = { NOOP = 2, ["*"] = 3 } }]],
      dialogue = h.steps(
        h.rep({ "NOOP", "250 OK" }, 2),
        h.rep({ "RSET", "250 OK" }, 3),
        { "RSET", "421 4.7.0 RSET sent too many times", closed = true }) },

    { name = "command_call_limit table: a command it names",
      source = [[options = { command_call_limit = { NOOP = 2, ["*"] = 3 } }]],
      dialogue = h.steps(
        h.rep({ "NOOP", "250 OK" }, 2),
        { "NOOP", "421 4.7.0 NOOP sent too many times", closed = true }) },

    { name = "command_call_limit table without '*': 20 for the commands it does not name",
      source = [[options = { command_call_limit = { NOOP = 1 } }]],
      dialogue = h.steps(
        h.rep({ "RSET", "250 OK" }, 20),
        { "RSET", "421 4.7.0 RSET sent too many times", closed = true }) },

    { name = "auth_failure_limit: the fifth failure by default gives 421 and close",
      source = ALICE, options = NO_TLS,
      dialogue = h.steps(
        h.ehlo,
        h.rep({ BAD_PLAIN, h.AUTH_INVALID }, 4),
        limit_reached(BAD_PLAIN)) },

    { name = "auth_failure_limit counts failures of every mechanism",
      source = ALICE, options = NO_TLS,
      dialogue = h.steps(
        h.ehlo,
        h.rep({ BAD_PLAIN, h.AUTH_INVALID }, 2),
        { "AUTH LOGIN " .. h.b64("alice"), "334 UGFzc3dvcmQA" },
        { h.b64("nope"), h.AUTH_INVALID },
        { BAD_PLAIN, h.AUTH_INVALID },
        { "AUTH LOGIN " .. h.b64("alice"), "334 UGFzc3dvcmQA" },
        limit_reached(h.b64("nope"))) },

    { name = "auth_failure_limit set to 2",
      source = ALICE, options = { auth_require_tls = false, auth_failure_limit = 2 },
      dialogue = h.steps(h.ehlo, { BAD_PLAIN, h.AUTH_INVALID }, limit_reached(BAD_PLAIN)) },

    { name = "auth_failure_limit: success after four failures still works",
      source = ALICE, options = NO_TLS,
      dialogue = h.steps(h.ehlo, h.rep({ BAD_PLAIN, h.AUTH_INVALID }, 4), { PLAIN, h.AUTH_OK },
        { "NOOP", "250 OK" }) },

    { name = "auth_failure_limit is per session",
      source = ALICE, options = NO_TLS,
      dialogues = {
        h.steps(h.ehlo, h.rep({ BAD_PLAIN, h.AUTH_INVALID }, 4), { "QUIT", "221 Bye", closed = true }),
        h.steps(h.ehlo, h.rep({ BAD_PLAIN, h.AUTH_INVALID }, 4), { PLAIN, h.AUTH_OK }),
      } },
  }
end)
