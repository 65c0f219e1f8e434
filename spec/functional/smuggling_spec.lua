-- SMTP smuggling and injection (issue 6), against the real binary.
--
-- Smuggling: a message whose body holds an end-of-data look-alike
-- (`\n.\n`, `\n.\r\n`, `\r.\r\n`, `\r\n.\r`, `\r\n.\n`) followed by a second
-- transaction must give ONE message (or, by default, a 550 refusal), never
-- two. handle_DATA numbers the messages it sees and shows their content in
-- its reply; after the final dot the client sends NOOP, whose reply gives the
-- count. Since replies come in order, the reply right after the message's
-- must be NOOP's: a smuggled MAIL/RCPT/DATA would have been answered first.
--
-- Commands glued after the end of DATA in the same write are commands, run
-- in order, with PIPELINING (EHLO) and without (HELO), waiting for 354 or not.
-- STARTTLS injection is covered by tls_spec.lua.
--
-- Injection into the log: CR, LF and other control bytes inside AUTH
-- credentials, challenge responses, MAIL addresses and parameters and HELO
-- names never reach a log line unescaped (the server runs with -d, so every
-- command line is logged).
local h = require "spec.functional.common"

local REFUSED = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings"
local GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"

-- handle_DATA counts messages and shows each one's content, non-printable
-- bytes as \xHH; NOOP gives the count.
local COUNT = [[
local n = 0
local function shown(s)
  return (s:gsub("[^%w%p ]", function(c) return ("\\x%02X"):format(c:byte()) end))
end
function handle_DATA(server, session, envelope)
  n = n + 1
  return ("250 OK message %d from %s: %s"):format(n, envelope.mail_from, shown(envelope.content))
end
function handle_NOOP(server, session, envelope, arg)
  return "250 messages=" .. n
end
]]

local function open_data(helo)
  return {
    helo and h.helo or h.ehlo,
    { "MAIL FROM:<a@example.org>", "250 OK" },
    { "RCPT TO:<b@example.org>", "250 OK" },
    { "DATA", GO_AHEAD },
  }
end

-- What follows each end-of-data look-alike: a whole second transaction.
local SMUGGLED = "MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n" ..
  "Subject: smuggled\r\n\r\nsmuggled body\r\n"
local SMUGGLED_SHOWN = "MAIL FROM:<evil@example.org>\\x0D\\x0ARCPT TO:<victim@example.org>\\x0D\\x0A" ..
  "DATA\\x0D\\x0ASubject: smuggled\\x0D\\x0A\\x0D\\x0Asmuggled body\\x0D\\x0A"

-- Each variant: the bytes between "hello" and SMUGGLED, and how the content
-- reads with bare_newline = "normalize" (bare CR and LF become CRLF) and
-- "keep". A line starting with a dot loses it (RFC 5321 4.5.2), which is
-- why `\r\n.\r` keeps no dot.
local VARIANTS = {
  { name = "\\n.\\n", sep = "\n.\n",
    normalize = "hello\\x0D\\x0A.\\x0D\\x0A", keep = "hello\\x0A.\\x0A" },
  { name = "\\n.\\r\\n", sep = "\n.\r\n",
    normalize = "hello\\x0D\\x0A.\\x0D\\x0A", keep = "hello\\x0A.\\x0D\\x0A" },
  { name = "\\r.\\r\\n", sep = "\r.\r\n",
    normalize = "hello\\x0D\\x0A.\\x0D\\x0A", keep = "hello\\x0D.\\x0D\\x0A" },
  { name = "\\r\\n.\\r", sep = "\r\n.\r",
    normalize = "hello\\x0D\\x0A\\x0D\\x0A", keep = "hello\\x0D\\x0A\\x0D" },
  { name = "\\r\\n.\\n", sep = "\r\n.\n",
    normalize = "hello\\x0D\\x0A\\x0D\\x0A", keep = "hello\\x0D\\x0A\\x0A" },
}

local PREFIX_SHOWN = "Subject: s\\x0D\\x0A\\x0D\\x0A"

local cases = {}

local function smuggling_case(name, mode, payload, expect_reply, count)
  cases[#cases + 1] = {
    name = name, source = COUNT, options = mode and { bare_newline = mode } or nil,
    dialogue = h.steps(
      open_data(),
      { send = payload, expect = expect_reply },
      { "NOOP", "250 messages=" .. count },
      -- No transaction was left open by anything smuggled.
      { "MAIL FROM:<next@example.org>", "250 OK" },
      { "RCPT TO:<b@example.org>", "250 OK" },
      { "DATA", GO_AHEAD },
      { send = "next\r\n.\r\n",
        expect = ("250 OK message %d from next@example.org: next\\x0D\\x0A"):format(count + 1) },
      { "NOOP", "250 messages=" .. (count + 1) }),
  }
end

for _, v in ipairs(VARIANTS) do
  local payload = "Subject: s\r\n\r\nhello" .. v.sep .. SMUGGLED .. ".\r\n"
  smuggling_case(v.name .. " then a second transaction: refused with 550 by default, no message",
    nil, payload, REFUSED, 0)
  smuggling_case(v.name .. " with bare_newline = \"reject\": 550, no message", "reject", payload, REFUSED, 0)
  smuggling_case(v.name .. " with bare_newline = \"normalize\": one message holding the smuggled text",
    "normalize", payload,
    "250 OK message 1 from a@example.org: " .. PREFIX_SHOWN .. v.normalize .. SMUGGLED_SHOWN, 1)
  smuggling_case(v.name .. " with bare_newline = \"keep\": one message holding the smuggled text", "keep",
    payload, "250 OK message 1 from a@example.org: " .. PREFIX_SHOWN .. v.keep .. SMUGGLED_SHOWN, 1)
end

-- Bare CR and bare LF on their own.
for _, v in ipairs{
  { name = "a bare CR", body = "one\rtwo\r\n",
    normalize = "one\\x0D\\x0Atwo\\x0D\\x0A", keep = "one\\x0Dtwo\\x0D\\x0A" },
  { name = "a bare LF", body = "one\ntwo\r\n",
    normalize = "one\\x0D\\x0Atwo\\x0D\\x0A", keep = "one\\x0Atwo\\x0D\\x0A" },
  { name = "a line ending in CR CR LF", body = "one\r\r\ntwo\r\n",
    normalize = "one\\x0D\\x0A\\x0D\\x0Atwo\\x0D\\x0A", keep = "one\\x0D\\x0D\\x0Atwo\\x0D\\x0A" },
} do
  smuggling_case(v.name .. " in DATA is refused with 550 by default", nil, v.body .. ".\r\n", REFUSED, 0)
  smuggling_case(v.name .. " with bare_newline = \"normalize\"", "normalize", v.body .. ".\r\n",
    "250 OK message 1 from a@example.org: " .. v.normalize, 1)
  smuggling_case(v.name .. " with bare_newline = \"keep\"", "keep", v.body .. ".\r\n",
    "250 OK message 1 from a@example.org: " .. v.keep, 1)
end

-- A look-alike as the very first line of the message (the CRLF before it is
-- the DATA command's). The line up to the first CRLF starts with a dot and
-- holds more: the dot goes (RFC 5321 4.5.2), the bare LF stays.
smuggling_case("\".\\n\" as the first line of DATA does not end it (normalize)", "normalize",
  ".\n" .. SMUGGLED .. ".\r\n",
  "250 OK message 1 from a@example.org: \\x0D\\x0A" .. SMUGGLED_SHOWN, 1)
smuggling_case("\".\\n\" as the first line of DATA does not end it (keep)", "keep",
  ".\n" .. SMUGGLED .. ".\r\n",
  "250 OK message 1 from a@example.org: \\x0A" .. SMUGGLED_SHOWN, 1)
smuggling_case("\".\\n\" as the first line of DATA: refused by default", nil, ".\n" .. SMUGGLED .. ".\r\n",
  REFUSED, 0)

-- The look-alike arriving one byte per write: the reader's state carries
-- across reads.
do
  local payload = "hello\n.\r\n" .. SMUGGLED .. ".\r\n"
  local steps = open_data()
  for i = 1, #payload - 1 do steps[#steps + 1] = { send = payload:sub(i, i) } end
  steps[#steps + 1] = { send = payload:sub(-1), expect = REFUSED }
  steps[#steps + 1] = { "NOOP", "250 messages=0" }
  cases[#cases + 1] = { name = "\\n.\\r\\n sent one byte per write: refused, no message", source = COUNT,
    dialogue = steps }
  local steps2 = open_data()
  for i = 1, #payload - 1 do steps2[#steps2 + 1] = { send = payload:sub(i, i) } end
  steps2[#steps2 + 1] = { send = payload:sub(-1),
    expect = "250 OK message 1 from a@example.org: hello\\x0D\\x0A.\\x0D\\x0A" .. SMUGGLED_SHOWN }
  steps2[#steps2 + 1] = { "NOOP", "250 messages=1" }
  cases[#cases + 1] = { name = "\\n.\\r\\n sent one byte per write, normalize: one message", source = COUNT,
    options = { bare_newline = "normalize" }, dialogue = steps2 }
end

-- Dot-stuffing is not a way in either: "..\r\n" is a line holding ".".
smuggling_case("a dot-stuffed line is content, not the end", nil,
  "hello\r\n..\r\n" .. SMUGGLED .. ".\r\n",
  "250 OK message 1 from a@example.org: hello\\x0D\\x0A.\\x0D\\x0A" .. SMUGGLED_SHOWN, 1)

describe("SMTP smuggling", function()
  h.run(cases)
end)

-- ---------------------------------------------------------------------------
-- Commands glued after the end of DATA

local function message_reply(n, from, body)
  return ("250 OK message %d from %s: %s"):format(n, from, body)
end

describe("commands glued after the end of DATA", function()
  h.run{
    { name = "in the same write as the final dot (after waiting for 354): run as commands, in order",
      source = COUNT,
      dialogue = h.steps(
        open_data(),
        { send = "first\r\n.\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.org>\r\nDATA\r\n",
          expect = message_reply(1, "a@example.org", "first\\x0D\\x0A") },
        { expect = "250 OK" },
        { expect = "250 OK" },
        { expect = GO_AHEAD },
        { send = "second\r\n.\r\nNOOP\r\n", expect = message_reply(2, "c@example.org", "second\\x0D\\x0A") },
        { expect = "250 messages=2" }) },

    { name = "two whole transactions in one write, without waiting for any reply (PIPELINING)",
      source = COUNT,
      dialogue = {
        h.ehlo,
        { send = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nfirst\r\n.\r\n" ..
          "MAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nsecond\r\n.\r\nNOOP\r\nQUIT\r\n",
          expect = "250 OK" },
        { expect = "250 OK" },
        { expect = GO_AHEAD },
        { expect = message_reply(1, "a@example.org", "first\\x0D\\x0A") },
        { expect = "250 OK" },
        { expect = "250 OK" },
        { expect = GO_AHEAD },
        { expect = message_reply(2, "c@example.org", "second\\x0D\\x0A") },
        { expect = "250 messages=2" },
        { expect = "221 Bye", closed = true },
      } },

    { name = "the same without PIPELINING (HELO): same replies, same order",
      source = COUNT,
      dialogue = {
        h.helo,
        { send = "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nfirst\r\n.\r\n" ..
          "MAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nsecond\r\n.\r\nNOOP\r\n",
          expect = "250 OK" },
        { expect = "250 OK" },
        { expect = GO_AHEAD },
        { expect = message_reply(1, "a@example.org", "first\\x0D\\x0A") },
        { expect = "250 OK" },
        { expect = "250 OK" },
        { expect = GO_AHEAD },
        { expect = message_reply(2, "c@example.org", "second\\x0D\\x0A") },
        { expect = "250 messages=2" },
      } },

    { name = "the final CRLF split across writes, a command after it: still one message, then the command",
      source = COUNT,
      dialogue = h.steps(
        open_data(),
        { send = "body\r\n.\r" },
        { send = "\nNOOP\r\n", expect = message_reply(1, "a@example.org", "body\\x0D\\x0A") },
        { expect = "250 messages=1" }) },

    { name = "a refused message (bare LF) with commands glued after it: they run, in order",
      source = COUNT,
      dialogue = h.steps(
        open_data(),
        { send = "bad\nline\r\n.\r\nNOOP\r\nMAIL FROM:<c@example.org>\r\n", expect = REFUSED },
        { expect = "250 messages=0" },
        { expect = "250 OK" },
        { "RCPT TO:<d@example.org>", "250 OK" }) },
  }
end)

-- ---------------------------------------------------------------------------
-- Log injection

local LOGGING = [[
local smtpd = require "smtpd"
function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.password == "boom" then error("no such user: " .. auth_data.login) end
  return false
end
function auth_ECHO(server, args)
  local r = server:challenge_auth("say", true, true)   -- log_client_response
  return false
end
function handle_MAIL(server, session, envelope, address, options)
  if address:find("boom", 1, true) then error("refused sender " .. address) end
  return smtpd.MISSING
end
function handle_HELO(server, session, envelope, hostname)
  error("bad helo " .. hostname)
end
]]

local FAKE = "\r\n2026-01-01T00:00:00.000Z INFO [s9] FAKE LOG LINE"

-- No raw CR or control byte (tab and the line feeds ending lines aside)
-- and no line that starts with the injected text.
local function clean_log(srv)
  local log = srv:stderr()
  local bad = log:find("[%z\1-\8\11-\31\127]")
  if bad then
    error(("a raw control byte 0x%02X in the log: %q"):format(log:byte(bad),
      log:sub(math.max(1, bad - 120), bad + 60)), 0)
  end
  for line in log:gmatch("[^\n]+") do
    if line:find("FAKE LOG LINE", 1, true) and not line:match("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z %u+ ") then
      error("a log line forged by the client: " .. ("%q"):format(line), 0)
    end
    if line:find("^2026%-01%-01T00:00:00%.000Z") then
      error("a log line forged by the client: " .. ("%q"):format(line), 0)
    end
  end
  return log
end

describe("client bytes in log lines", function()
  h.run{
    -- A PLAIN login is no secret (issue: scrubbing a short login blanked
    -- its letters everywhere), so it may appear, escaped on one line; LOGIN's
    -- login is a challenge response and stays scrubbed.
    { name = "CR/LF in an AUTH PLAIN login and an AUTH LOGIN login never forge a log line",
      source = LOGGING, args = { "-d" }, options = { auth_require_tls = false, auth_failure_limit = 0 },
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.plain("ev" .. FAKE, "pw"), h.AUTH_INVALID },
        -- The authenticator raises with the login in its message.
        { "AUTH PLAIN " .. h.plain("ev" .. FAKE, "boom"), h.AUTH_TEMPFAIL },
        { "AUTH LOGIN", "334 VXNlciBOYW1lAA==" },
        { h.b64("ev" .. FAKE), "334 UGFzc3dvcmQA" },
        { h.b64("boom"), h.AUTH_TEMPFAIL },
        { "AUTH LOGIN " .. h.b64("ev" .. FAKE), "334 UGFzc3dvcmQA" },
        { h.b64("pw" .. FAKE), h.AUTH_INVALID },
      },
      stderr_has = { ">> AUTH PLAIN ********", ">> AUTH LOGIN",
        [[no such user: ev\r\n2026-01-01T00:00:00.000Z INFO [s9] FAKE LOG LINE\n]] },
      after = clean_log },

    { name = "a challenge response logged on request (log_client_response) is escaped",
      source = LOGGING, args = { "-d" }, options = { auth_require_tls = false },
      dialogue = {
        h.ehlo,
        { "AUTH ECHO", "334 " .. h.b64("say") },
        { "YWJj\rFAKE LOG LINE\tand\27[2J", "501 5.5.2 Can't decode base64" },
      },
      stderr_has = { "YWJj\\rFAKE LOG LINE\\tand\\x1b[2J" },
      after = clean_log },

    { name = "CR and control bytes in MAIL addresses and parameters are escaped, also in hook errors",
      source = LOGGING, args = { "-d" },
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org> BODY=8BITMIME\rFAKE LOG LINE", code = 555 },
        { "MAIL FROM:<\"a\rFAKE LOG LINE\"@example.org>", match = "^250" },
        { "RSET", "250 OK" },
        -- handle_MAIL raises with the address in its message.
        { "MAIL FROM:<\"boom\rFAKE LOG LINE\27[2J\"@example.org>", h.LOCAL_ERROR },
      },
      stderr_has = { "\\rFAKE LOG LINE" },
      after = clean_log },

    { name = "CR and escape sequences in a HELO name are escaped, also in a hook error",
      source = LOGGING, args = { "-d" },
      dialogue = {
        { "HELO x\rFAKE LOG LINE\27[31m", h.LOCAL_ERROR },
      },
      stderr_has = { "HELO x\\rFAKE LOG LINE\\x1b[31m" },
      after = clean_log },

    { name = "control bytes a hook echoes into its status line are escaped in the message log line",
      source = [[
function handle_DATA(server, session, envelope)
  return "250 OK queued: " .. (envelope.content:match("Subject: ([^\r\n]*)") or "")
end
]],
      dialogue = h.steps(
        open_data(),
        { send = "Subject: \27[2J\27]0;FAKE LOG LINE\7\r\n\r\nhi\r\n.\r\n",
          expect = "250 OK queued: \27[2J\27]0;FAKE LOG LINE\7" }),
      stderr_has = { "\\x1b[2J" },
      after = clean_log },

    { name = "CR in an unknown command and in NOOP's argument is escaped",
      args = { "-d" },
      dialogue = {
        { "NOOP x\rFAKE LOG LINE", "250 OK" },
        { "XFAKE\rFAKE LOG LINE", code = 500 },
      },
      stderr_has = { "NOOP x\\rFAKE LOG LINE" },
      after = clean_log },
  }
end)
