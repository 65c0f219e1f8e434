-- The verb table's one policy step: a hook that waits and then asks for
-- the default (smtpd.MISSING) proceeds from the arguments the session kept
-- at dispatch, even though pipelined input has replaced the line meanwhile;
-- every state transition goes through one function that logs it at TRACE.
local h = require "spec.functional.common"

local SOURCE = [[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = 2 }
function handle_HELO(server, session, envelope, hostname)
  smtpd.sleep(0.05)
  return smtpd.MISSING
end
function handle_EHLO(server, session, envelope, hostname, responses)
  smtpd.sleep(0.05)
  return smtpd.MISSING
end
function handle_MAIL(server, session, envelope, address, mail_options)
  smtpd.sleep(0.05)
  return smtpd.MISSING
end
function handle_RCPT(server, session, envelope, address, rcpt_options)
  smtpd.sleep(0.05)
  return smtpd.MISSING
end
function handle_NOOP(server, session, envelope, arg)
  if arg == "show" then
    return ("250 %s|%s|%s|%s|%s"):format(session.host_name, envelope.mail_from,
      table.concat(envelope.mail_options, ","), table.concat(envelope.rcpt_tos, ","),
      table.concat(envelope.rcpt_options, ","))
  end
  return smtpd.MISSING
end
]]

describe("verbs", function()
  h.run{
    { name = "waiting HELO, MAIL and RCPT hooks that return MISSING proceed from the kept arguments",
      source = SOURCE,
      dialogue = {
        { send = "HELO first.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
          .. "RCPT TO:<c@example.org>\r\nNOOP show\r\n" },
        { expect = "250 mx.test" }, { expect = "250 OK" }, { expect = "250 OK" },
        { expect = "250 OK" },
        { expect = "250 first.test|a@example.org||b@example.org,c@example.org|" },
      } },

    { name = "a waiting EHLO hook that returns MISSING gives the default lines and keeps the name",
      source = SOURCE,
      dialogue = {
        { send = "EHLO second.test\r\nMAIL FROM:<a@example.org> BODY=8BITMIME\r\n"
          .. "NOOP show\r\n" },
        { expect = h.EHLO_AUTH }, { expect = "250 OK" },
        { expect = "250 second.test|a@example.org|BODY=8BITMIME||" },
      } },

    { name = "state transitions are logged at TRACE with the reason",
      source = SOURCE, args = { "-d", "-d" },
      dialogue = {
        { "HELO client.test", "250 mx.test" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { "hello\r\n.", "250 OK" },
        { "QUIT", "221 Bye" },
      },
      stderr_has = { "state COMMAND -> DATA (DATA)",
                     "state DATA -> COMMAND (end of DATA)", "state COMMAND -> CLOSING (QUIT)" } },
  }
end)
