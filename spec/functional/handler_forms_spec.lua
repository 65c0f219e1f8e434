-- Handler scripts (auth-api.md 1, 3): the globals form and the returned
-- table form, hook return conventions (smtpd.MISSING, status strings, a
-- replaced EHLO list), and what hooks see in session and envelope.
local h = require "spec.functional.common"

local DATA_GO = { "DATA", "354 End data with <CR><LF>.<CR><LF>" }

-- handle_DATA reports the envelope: control bytes escaped so the reply
-- stays one line.
local REPORT = [[
local function esc(s)
  return (tostring(s):gsub("[%c\\]", function(c)
    if c == "\r" then return "\\r" elseif c == "\n" then return "\\n" end
    return ("\\x%02X"):format(c:byte())
  end))
end
local function report(envelope)
  return ("250 from=%s to=%s mopts=%s ropts=%s tag=%s content=%s same=%s"):format(
    esc(envelope.mail_from), esc(table.concat(envelope.rcpt_tos, ",")),
    esc(table.concat(envelope.mail_options or {}, ",")), esc(table.concat(envelope.rcpt_options or {}, ",")),
    esc(envelope.tag), esc(envelope.content), tostring(envelope.content == envelope.original_content))
end
]]

describe("handler script forms", function()
  h.run{
    { name = "globals form",
      source = [[
local smtpd = require "smtpd"
function handle_NOOP(server, session, envelope, arg) return "250 globals " .. tostring(arg) end
options = { auth_require_tls = false }
]],
      dialogue = {
        { "NOOP x", "250 globals x" },
        { "EHLO client.test", h.EHLO_AUTH },
      } },

    { name = "returned-table form; top-level globals are then ignored",
      source = [[
local smtpd = require "smtpd"
local handler = { options = { auth_require_tls = false } }
function handler.handle_NOOP(server, session, envelope, arg) return "250 table " .. tostring(arg) end
function handle_RSET() return "250 should not be used" end
return handler
]],
      dialogue = {
        { "NOOP x", "250 table x" },
        { "RSET", "250 OK" },
        { "EHLO client.test", h.EHLO_AUTH },
      } },

    { name = "a handler file given by path",
      handler = "spec/functional/fixtures/noop_handler.lua",
      dialogue = { { "NOOP", "250 from the fixture" } } },

    { name = "the script reads globals through its environment",
      source = [[
function handle_NOOP() return "250 " .. type(string.format) .. " " .. type(require) end
]],
      dialogue = { { "NOOP", "250 function function" } } },
  }

  it("a handler entry of the wrong type is a load error naming it", function()
    local testing = require "smtpd.testing"
    local status, out = testing.check{ source = 'handle_MAIL = "not a function"\n' }
    assert.equal(1, status)
    assert.matches("handle_MAIL", out, 1, true)
  end)
end)

describe("hook return conventions", function()
  h.run{
    { name = "smtpd.MISSING asks for the default behaviour",
      source = [[
local smtpd = require "smtpd"
function handle_MAIL() return smtpd.MISSING end
function handle_RCPT() return smtpd.MISSING end
function handle_NOOP() return smtpd.MISSING end
function handle_RSET() return smtpd.MISSING end
function handle_VRFY() return smtpd.MISSING end
function handle_HELO() return smtpd.MISSING end
function handle_EHLO() return smtpd.MISSING end
function handle_QUIT() return smtpd.MISSING end
]] .. REPORT .. [[
function handle_DATA(server, session, envelope) return report(envelope) end
]],
      dialogue = {
        h.helo,
        { "EHLO client.test", h.EHLO_DEFAULT },
        { "NOOP", "250 OK" },
        { "RSET", "250 OK" },
        { "VRFY <x@example.org>", "252 Cannot VRFY user, but will accept message and attempt delivery" },
        { "MAIL FROM:<a@example.org> BODY=8BITMIME", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        DATA_GO,
        { send = "x\r\n.\r\n",
          expect = "250 from=a@example.org to=b@example.org mopts=BODY=8BITMIME ropts= tag=nil " ..
            "content=x\\r\\n same=true" },
        { "QUIT", "221 Bye", closed = true },
      } },

    { name = "status strings replace the default replies",
      source = [[
function handle_NOOP(server, session, envelope, arg) return "250 2.0.0 noop " .. tostring(arg) end
function handle_RSET() return "250 2.0.0 reset done" end
function handle_VRFY(server, session, envelope, address) return "252 2.1.5 maybe " .. address end
function handle_HELO(server, session, envelope, hostname)
  session.host_name = hostname
  return "250 hello " .. hostname
end
function handle_QUIT() return "221 2.0.0 See you" end
]],
      dialogue = {
        { "NOOP", "250 2.0.0 noop nil" },
        { "NOOP a b", "250 2.0.0 noop a b" },
        { "RSET", "250 2.0.0 reset done" },
        { "VRFY <x@example.org>", "252 2.1.5 maybe x@example.org" },
        { "HELO client.test", "250 hello client.test" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "QUIT", "221 2.0.0 See you", closed = true },
      } },

    { name = "handle_MAIL refusing leaves no transaction; setting mail_from opens one",
      source = [[
function handle_MAIL(server, session, envelope, address, options)
  if address == "bad@example.org" then return "550 5.7.1 Not you" end
  envelope.mail_from = address
  envelope.tag = "tagged"
  return "250 2.1.0 Sender ok"
end
]] .. REPORT .. [[
function handle_DATA(server, session, envelope) return report(envelope) end
]],
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<bad@example.org>", "550 5.7.1 Not you" },
        { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
        { "MAIL FROM:<a@example.org>", "250 2.1.0 Sender ok" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        DATA_GO,
        { send = "x\r\n.\r\n",
          expect = "250 from=a@example.org to=b@example.org mopts= ropts= tag=tagged content=x\\r\\n same=true" },
      } },

    { name = "handle_RCPT appends to envelope.rcpt_tos itself",
      source = [[
function handle_RCPT(server, session, envelope, address, options)
  if address:match("^no") then return "550 5.1.1 No such user" end
  table.insert(envelope.rcpt_tos, address:upper())
  return "250 2.1.5 Recipient ok"
end
]] .. REPORT .. [[
function handle_DATA(server, session, envelope) return report(envelope) end
]],
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<nobody@example.org>", "550 5.1.1 No such user" },
        { "DATA", "503 Error: need RCPT command" },
        { "RCPT TO:<b@example.org>", "250 2.1.5 Recipient ok" },
        { "RCPT TO:<c@example.org>", "250 2.1.5 Recipient ok" },
        DATA_GO,
        { send = "x\r\n.\r\n",
          expect = "250 from=a@example.org to=B@EXAMPLE.ORG,C@EXAMPLE.ORG mopts= ropts= tag=nil " ..
            "content=x\\r\\n same=true" },
      } },

    { name = "handle_EHLO returns a modified list and sets host_name",
      source = [[
function handle_EHLO(server, session, envelope, hostname, responses)
  session.host_name = hostname
  local out = {}
  for _, line in ipairs(responses) do
    if line ~= "250-PIPELINING" then out[#out + 1] = line end
  end
  table.insert(out, #out, "250-XFOO " .. #responses .. " " .. responses[#responses])
  return out
end
]],
      dialogue = {
        { "EHLO client.test", { "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-XFOO 5 250 HELP",
          "250 HELP" } },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },

    { name = "handle_EHLO that does not set host_name leaves the client un-greeted",
      source = [[
function handle_EHLO(server, session, envelope, hostname, responses) return responses end
]],
      dialogue = {
        { "EHLO client.test", h.EHLO_DEFAULT },
        { "MAIL FROM:<a@example.org>", "503 Error: send HELO first" },
      } },

    { name = "handle_HELO gets the hostname and must set session.host_name",
      source = [[
function handle_HELO(server, session, envelope, hostname)
  if hostname == "bad.test" then return "550 5.7.1 Go away" end
  session.host_name = hostname
  return "250 mx.test hi " .. hostname
end
]],
      dialogue = {
        { "HELO bad.test", "550 5.7.1 Go away" },
        { "MAIL FROM:<a@example.org>", "503 Error: send HELO first" },
        { "HELO good.test", "250 mx.test hi good.test" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },
  }
end)

local SESSION = REPORT .. [[
function handle_NOOP(server, session, envelope, arg)
  if arg == "peer" then
    return ("250 peer=%s port=%s"):format(session.peer[1], type(session.peer[2]))
  end
  return ("250 host_name=%s esmtp=%s ssl=%s auth=%s"):format(tostring(session.host_name),
    tostring(session.extended_smtp), tostring(session.ssl), tostring(session.authenticated))
end
function handle_MAIL(server, session, envelope, address, options)
  envelope.mail_from = address
  for _, o in ipairs(options) do envelope.mail_options[#envelope.mail_options + 1] = o end
  envelope.tag = "kept"
  return "250 OK"
end
function handle_RCPT(server, session, envelope, address, options)
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  for _, o in ipairs(options) do envelope.rcpt_options[#envelope.rcpt_options + 1] = o end
  return "250 OK"
end
function handle_DATA(server, session, envelope) return report(envelope) end
]]

describe("session and envelope", function()
  h.run{
    { name = "session fields",
      source = SESSION,
      dialogue = {
        { "NOOP peer", match = "^250 peer=127%.0%.0%.1 port=number$" },
        { "NOOP", "250 host_name=nil esmtp=false ssl=nil auth=nil" },
        { "HELO client.test", "250 mx.test" },
        { "NOOP", "250 host_name=client.test esmtp=false ssl=nil auth=nil" },
        { "EHLO other.test", h.EHLO_DEFAULT },
        { "NOOP", "250 host_name=other.test esmtp=true ssl=nil auth=nil" },
      } },

    { name = "handle_DATA sees mail_from, rcpt_tos, options and exact, dot-unstuffed content",
      source = SESSION,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "RCPT TO:<c@example.org>", "250 OK" },
        DATA_GO,
        { send = "Subject: t\r\n\r\n..dot\r\n...two\r\n.\t\r\nline \r\n\r\n.\r\n",
          expect = "250 from=a@example.org to=b@example.org,c@example.org mopts=SIZE=100,BODY=8BITMIME " ..
            "ropts= tag=kept content=Subject: t\\r\\n\\r\\n.dot\\r\\n..two\\r\\n\\x09\\r\\n" ..
            "line \\r\\n\\r\\n same=true" },
      } },

    { name = "a fresh envelope after DATA, RSET and EHLO",
      source = SESSION,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        DATA_GO,
        { send = "one\r\n.\r\n", match = "^250 from=a@example%.org to=b@example%.org " },
        { "MAIL FROM:<c@example.org>", "250 OK" },
        { "RCPT TO:<d@example.org>", "250 OK" },
        DATA_GO,
        { send = "two\r\n.\r\n",
          expect = "250 from=c@example.org to=d@example.org mopts= ropts= tag=kept content=two\\r\\n same=true" },
        { "MAIL FROM:<e@example.org>", "250 OK" },
        { "RSET", "250 OK" },
        { "MAIL FROM:<f@example.org>", "250 OK" },
        { "RCPT TO:<g@example.org>", "250 OK" },
        { "EHLO again.test", h.EHLO_DEFAULT },
        { "MAIL FROM:<h@example.org>", "250 OK" },
        { "RCPT TO:<i@example.org>", "250 OK" },
        DATA_GO,
        { send = "three\r\n.\r\n",
          expect = "250 from=h@example.org to=i@example.org mopts= ropts= tag=kept content=three\\r\\n same=true" },
      } },

    { name = "an empty message",
      source = SESSION,
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        DATA_GO,
        { send = ".\r\n",
          expect = "250 from=a@example.org to=b@example.org mopts= ropts= tag=kept content= same=true" },
      } },

    { name = "bare_newline = keep passes bare LF through",
      source = SESSION .. [[options = { bare_newline = "keep" }]],
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        DATA_GO,
        { send = "a\nb\rc\r\n.\r\n", match = " content=a\\nb\\rc\\r\\n same=" },
      } },

    { name = "bare_newline = normalize turns bare CR and LF into CRLF",
      source = SESSION .. [[options = { bare_newline = "normalize" }]],
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        DATA_GO,
        { send = "a\nb\rc\r\n.\r\n", match = " content=a\\r\\nb\\r\\nc\\r\\n same=" },
      } },
  }
end)
