-- SMTP commands other than AUTH (auth-api.md 7): replies follow aiosmtpd
-- byte for byte, except the marked fixes (DATA framing and bare newlines,
-- AUTH= on MAIL, 421 on server-initiated closes, PIPELINING). No handler
-- hooks here, only the server's defaults.
local h = require "spec.functional.common"

local EMPTY = "-- a handler with no hooks\n"
local DATA_GO = { "DATA", "354 End data with <CR><LF>.<CR><LF>" }
local HELP_ALL = "Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"
local MAIL_SYNTAX = "501 Syntax: MAIL FROM: <address>"
local MAIL_SYNTAX_E = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
local RCPT_SYNTAX = "501 Syntax: RCPT TO: <address>"
local RCPT_SYNTAX_E = "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
local TRANSACTION = {
  { "MAIL FROM:<a@example.org>", "250 OK" },
  { "RCPT TO:<b@example.org>", "250 OK" },
  DATA_GO,
}

local function case(name, dialogue, extra)
  local c = { name = name, source = EMPTY, dialogue = dialogue }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

describe("greeting, HELO, EHLO", function()
  h.run{
    case("the greeting is 220 <hostname> <ident>", {
      { greeting = "220 mx.test ESMTP test server", "NOOP", "250 OK" } },
      { args = { "--ident", "ESMTP test server" } }),
    case("the default ident names luasmtpd", {
      { "NOOP", "250 OK", check = function(_, conns)
        assert.matches("^220 mx%.test luasmtpd", conns.a.greeting)
      end } }),
    case("the hostname comes from --hostname", {
      { greeting = "220 other.example ESMTP x", "HELO c", "250 other.example" } },
      { hostname = "other.example", args = { "--ident", "ESMTP x" } }),
    case("HELO", {
      { "HELO", "501 Syntax: HELO hostname" },
      { "HELO client.test", "250 mx.test" },
      { "helo client.test", "250 mx.test" } }),
    case("EHLO with default options", {
      { "EHLO", "501 Syntax: EHLO hostname" },
      { "EHLO client.test", h.EHLO_DEFAULT },
      { "ehlo client.test", h.EHLO_DEFAULT } }),
    case("EHLO: data_size_limit sets SIZE, 0 removes it", {
      { "EHLO client.test", { "250-mx.test", "250-8BITMIME", "250-PIPELINING", "250 HELP" } } },
      { options = { data_size_limit = 0 } }),
    case("EHLO: -s sets the size limit", {
      { "EHLO client.test", { "250-mx.test", "250-SIZE 4096", "250-8BITMIME", "250-PIPELINING", "250 HELP" } } },
      { args = { "-s", "4096" } }),
    case("EHLO: enable_SMTPUTF8 adds SMTPUTF8 after 8BITMIME", {
      { "EHLO client.test", { "250-mx.test", "250-SIZE 1000", "250-8BITMIME", "250-SMTPUTF8",
        "250-PIPELINING", "250 HELP" } },
      { "MAIL FROM:<a@example.org> SMTPUTF8", "250 OK" } },
      { options = { enable_SMTPUTF8 = true, data_size_limit = 1000 } }),
    case("the script's options and the command line: the command line wins", {
      { greeting = "220 mx.test From the script", "EHLO client.test",
        { "250-mx.test", "250-SIZE 2000", "250-8BITMIME", "250-PIPELINING", "250 HELP" } } },
      { source = [[options = { data_size_limit = 1000, ident = "From the script", auth_require_tls = false }]],
        options = { data_size_limit = 2000, auth_require_tls = true } }),
  }
end)

describe("NOOP, QUIT, RSET, VRFY, EXPN, HELP", function()
  h.run{
    case("NOOP", {
      { "NOOP", "250 OK" },
      { "NOOP anything at all", "250 OK" },
      { "noop", "250 OK" } }),
    case("QUIT closes", {
      { "QUIT", "221 Bye", closed = true } }),
    case("nothing is answered after QUIT, even pipelined", {
      { send = "QUIT\r\nNOOP\r\n" },
      { expect = "221 Bye", closed = true } }),
    case("QUIT with an argument", {
      { "QUIT now", "501 Syntax: QUIT" },
      { "quit", "221 Bye", closed = true } }),
    case("RSET", {
      { "RSET", "250 OK" },
      { "RSET x", "501 Syntax: RSET" } }),
    case("HELO and EHLO end the transaction", {
      h.ehlo,
      { "MAIL FROM:<a@example.org>", "250 OK" },
      h.helo,
      { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      h.ehlo,
      { "DATA", "503 Error: need RCPT command" },
      { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" } }),
    case("RSET ends the transaction", {
      h.ehlo,
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RSET", "250 OK" },
      { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
      { "MAIL FROM:<a@example.org>", "250 OK" } }),
    case("VRFY (no HELO needed)", {
      { "VRFY", "501 Syntax: VRFY <address>" },
      { "VRFY <a@example.org>", "252 Cannot VRFY user, but will accept message and attempt delivery" },
      { "VRFY a@example.org", "252 Cannot VRFY user, but will accept message and attempt delivery" } }),
    case("EXPN", {
      { "EXPN", "502 EXPN not implemented" },
      { "EXPN list", "502 EXPN not implemented" } }),
    case("HELP", {
      { "HELP", "250 " .. HELP_ALL },
      { "HELP MAIL", "250 Syntax: MAIL FROM: <address>" },
      { "HELP RCPT", "250 Syntax: RCPT TO: <address>" },
      { "HELP helo", "250 Syntax: HELO hostname" },
      { "HELP EHLO", "250 Syntax: EHLO hostname" },
      { "HELP AUTH", "250 Syntax: AUTH <mechanism>" },
      { "HELP NOOP", "250 Syntax: NOOP [ignored]" },
      { "HELP QUIT", "250 Syntax: QUIT" },
      { "HELP DATA", "250 Syntax: DATA" },
      { "HELP RSET", "250 Syntax: RSET" },
      { "HELP VRFY", "250 Syntax: VRFY <address>" },
      { "HELP HELP", "250 Syntax: HELP [command]" },
      { "HELP EXPN", "501 " .. HELP_ALL },
      { "HELP STARTTLS", "501 " .. HELP_ALL },
      { "HELP BOGUS", "501 " .. HELP_ALL },
      h.ehlo,
      { "HELP MAIL", "250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]" },
      { "HELP RCPT", "250 Syntax: RCPT TO: <address> [SP <mail-parameters>]" } }),
    case("STARTTLS without TLS configured", {
      h.ehlo,
      { "STARTTLS x", "501 Syntax: STARTTLS" },
      { "STARTTLS", "454 TLS not available" },
      { "NOOP", "250 OK" } }),
    -- As in aiosmtpd, require_starttls only applies when TLS is configured
    -- (the TLS specs cover it with TLS).
    case("require_starttls without TLS configured has no effect", {
      { "NOOP", "250 OK" },
      { "HELO client.test", "250 mx.test" },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "HELP", "250 " .. HELP_ALL },
      { "QUIT", "221 Bye", closed = true } },
      { options = { require_starttls = true } }),
  }
end)

describe("MAIL and RCPT", function()
  h.run{
    case("MAIL: order of checks and syntax after HELO", {
      { "MAIL FROM:<a@example.org>", "503 Error: send HELO first" },
      h.helo,
      { "MAIL", MAIL_SYNTAX },
      { "MAIL TO:<a@example.org>", MAIL_SYNTAX },
      { "MAIL FROM:", MAIL_SYNTAX },
      { "MAIL FROM:<a@example.org> SIZE=10", MAIL_SYNTAX },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "MAIL FROM:<c@example.org>", "503 Error: nested MAIL command" } }),
    case("MAIL after EHLO", {
      h.ehlo,
      { "MAIL", MAIL_SYNTAX_E },
      { "MAIL FROM:<@example.org>", "553 5.1.3 Error: malformed address" },
      { "MAIL FROM:<a@b@example.org>", "553 5.1.3 Error: malformed address" },
      { "MAIL FROM:<a@example.org> BODY=FOO", "501 Error: BODY can only be one of 7BIT, 8BITMIME" },
      { "MAIL FROM:<a@example.org> SMTPUTF8", "501 Error: SMTPUTF8 disabled" },
      { "MAIL FROM:<a@example.org> SIZE=99999999999",
        "552 Error: message size exceeds fixed maximum message size" },
      { "MAIL FROM:<a@example.org> FOO=bar", "555 MAIL FROM parameters not recognized or not implemented" },
      { "mail from:<a@example.org> size=10 body=8BITMIME", "250 OK" },
      { "MAIL FROM:<a@example.org>", "503 Error: nested MAIL command" } }),
    case("MAIL FROM:<> (null sender)", {
      h.ehlo,
      { "MAIL FROM:<>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" } }),
    case("MAIL FROM:<...> AUTH=<> and AUTH=xtext are accepted", {
      h.ehlo,
      { "MAIL FROM:<a@example.org> AUTH=<>", "250 OK" },
      { "RSET", "250 OK" },
      { "MAIL FROM:<a@example.org> AUTH=alice+40example.org", "250 OK" } }),
    case("RCPT: order of checks and syntax", {
      { "RCPT TO:<b@example.org>", "503 Error: send HELO first" },
      h.ehlo,
      { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT", RCPT_SYNTAX_E },
      { "RCPT FROM:<b@example.org>", RCPT_SYNTAX_E },
      { "RCPT TO:<@example.org>", "553 5.1.3 Error: malformed address" },
      { "RCPT TO:<b@example.org> FOO=1", "555 RCPT TO parameters not recognized or not implemented" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      { "rcpt to:<c@example.org>", "250 OK" } }),
    case("RCPT syntax after HELO", {
      h.helo,
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "RCPT", RCPT_SYNTAX },
      { "RCPT TO:<b@example.org> FOO=1", RCPT_SYNTAX } }),
  }
end)

describe("DATA", function()
  h.run{
    case("order of checks", {
      { "DATA", "503 Error: send HELO first" },
      h.ehlo,
      { "DATA", "503 Error: need RCPT command" },
      { "MAIL FROM:<a@example.org>", "250 OK" },
      { "DATA", "503 Error: need RCPT command" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      { "DATA now", "501 Syntax: DATA" },
      DATA_GO,
      { send = "Subject: hi\r\n\r\nbody\r\n.\r\n", expect = "250 OK" },
      { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
      { "NOOP", "250 OK" } }),
    case("data_size_limit -> 552 after the final dot; the session goes on", h.steps(
      h.ehlo, TRANSACTION,
      { send = string.rep("0123456789012345678\r\n", 20) .. ".\r\n", expect = "552 Error: Too much mail data" },
      { "NOOP", "250 OK" },
      { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
      TRANSACTION,
      { send = "small\r\n.\r\n", expect = "250 OK" }),
      { options = { data_size_limit = 100 } }),
    case("a 1001-octet line (999 + CRLF) is fine", h.steps(
      h.ehlo, TRANSACTION,
      { send = string.rep("a", 999) .. "\r\n.\r\n", expect = "250 OK" })),
    case("a 1002-octet line -> 500 Line too long after the final dot", h.steps(
      h.ehlo, TRANSACTION,
      { send = "ok\r\n" .. string.rep("a", 1000) .. "\r\nmore\r\n.\r\n",
        expect = "500 Line too long (see RFC5321 4.5.3.1.6)" },
      { "NOOP", "250 OK" })),
    case("a 100000-octet line -> 500 Line too long; the session goes on", h.steps(
      h.ehlo, TRANSACTION,
      { send = string.rep("b", 100000) .. "\r\n.\r\n", expect = "500 Line too long (see RFC5321 4.5.3.1.6)" },
      TRANSACTION,
      { send = "fine\r\n.\r\n", expect = "250 OK" })),
    case("a bare LF in the message -> 550 after the final dot", h.steps(
      h.ehlo, TRANSACTION,
      { send = "Subject: x\r\n\r\none\ntwo\r\n.\r\n",
        expect = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings" },
      { "NOOP", "250 OK" },
      TRANSACTION,
      { send = "fine\r\n.\r\n", expect = "250 OK" })),
    case("a bare CR in the message -> 550", h.steps(
      h.ehlo, TRANSACTION,
      { send = "one\rtwo\r\n.\r\n", expect = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings" },
      { "NOOP", "250 OK" })),
    case("DATA ends only on CRLF.CRLF: LF.LF does not end it", h.steps(
      h.ehlo, TRANSACTION,
      { send = "one\n.\n" },
      { send = "still data\r\n.\r\n",
        expect = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings" },
      { "NOOP", "250 OK" })),
    case("DATA ends only on CRLF.CRLF: CR.CR and .CRLF inside a line do not end it", h.steps(
      h.ehlo, TRANSACTION,
      { send = "one\r.\rtwo. \r\n.x\r\n .\r\n" },
      { send = ".\r\n", expect = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings" },
      { "NOOP", "250 OK" })),
    case("a message split over many writes", h.steps(
      h.ehlo, TRANSACTION,
      { send = "Sub" }, { send = "ject: x\r" }, { send = "\n\r\nbody\r\n." }, { send = "\r" },
      { send = "\n", expect = "250 OK" })),
  }
end)

describe("limits and closes", function()
  h.run{
    case("a 512-octet command line is fine, 513 is too long", {
      { "NOOP " .. string.rep("x", 507), "250 OK" },
      { "NOOP " .. string.rep("x", 508), "500 Command line too long" },
      { "NOOP", "250 OK" } }),
    case("a very long command line is refused, and the next line is read normally", {
      { "NOOP " .. string.rep("x", 5000), "500 Command line too long" },
      { "MAIL FROM:<" .. string.rep("a", 3000) .. "@example.org>", "500 Command line too long" },
      { "NOOP", "250 OK" } }),
    case("after EHLO, MAIL may be 26 octets longer (SIZE is offered)", {
      h.ehlo,
      { "MAIL FROM:<" .. string.rep("a", 538 - 24) .. "@example.org>", "250 OK" },
      { "RSET", "250 OK" },
      { "MAIL FROM:<" .. string.rep("a", 539 - 24) .. "@example.org>", "500 Command line too long" },
      h.helo,
      { "MAIL FROM:<" .. string.rep("a", 512 - 24) .. "@example.org>", "250 OK" },
      { "RSET", "250 OK" },
      { "MAIL FROM:<" .. string.rep("a", 513 - 24) .. "@example.org>", "500 Command line too long" } }),
    case("non-ASCII arguments without SMTPUTF8 -> strict ASCII mode", {
      { "NOOP \195\169", "500 Error: strict ASCII mode" },
      h.ehlo,
      { "MAIL FROM:<\195\169@example.org>", "500 Error: strict ASCII mode" },
      { "MAIL FROM:<a@example.org>", "250 OK" } }),
    case("non-ASCII arguments with SMTPUTF8", {
      h.ehlo,
      { "MAIL FROM:<\195\169@example.org> SMTPUTF8", "250 OK" },
      { "RCPT TO:<\195\169t\195\169@example.org>", "250 OK" } },
      { options = { enable_SMTPUTF8 = true } }),
    case("an empty line", {
      { "", "500 Error: bad syntax" },
      { "NOOP", "250 OK" } }),
    case("the fifth unknown command -> 421 and close", {
      { "FOO", '500 Error: command "FOO" not recognized' },
      { "bar baz", '500 Error: command "BAR" not recognized' },
      { "NOOP", "250 OK" },
      { "XYZZY", '500 Error: command "XYZZY" not recognized' },
      { "FOO", '500 Error: command "FOO" not recognized' },
      { "FOO", "421 4.7.0 mx.test Error: too many unrecognized commands", closed = true } }),
    case("idle timeout -> 421 and close", {
      { "NOOP", "250 OK" },
      { expect = "421 4.4.2 mx.test Error: timeout exceeded", closed = true } },
      { args = { "--timeout", "1" } }),
    case("idle timeout in the middle of DATA", h.steps(
      h.ehlo, TRANSACTION,
      { send = "Subject: slow\r\n\r\nhalf" },
      { expect = "421 4.4.2 mx.test Error: timeout exceeded", closed = true }),
      { args = { "--timeout", "1" } }),
    case("idle timeout from the options", {
      { expect = "421 4.4.2 mx.test Error: timeout exceeded", closed = true } },
      { options = { timeout = 1 } }),
    case("pipelined commands are answered in order", {
      { send = "EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n" ..
        "RCPT TO:<@bad>\r\nNOOP\r\nDATA\r\n" },
      { expect = h.EHLO_DEFAULT },
      { expect = "250 OK" },
      { expect = "250 OK" },
      { expect = "553 5.1.3 Error: malformed address" },
      { expect = "250 OK" },
      { expect = "354 End data with <CR><LF>.<CR><LF>" },
      { send = "hi\r\n.\r\nRSET\r\nMAIL FROM:<c@example.org>\r\nQUIT\r\n" },
      { expect = "250 OK" },
      { expect = "250 OK" },
      { expect = "250 OK" },
      { expect = "221 Bye", closed = true } }),
    case("SIGTERM stops the server gracefully", {
      { "NOOP", "250 OK" } },
      { after = function(srv) assert.equal(0, srv.status) end }),
  }
end)
