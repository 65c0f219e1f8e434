-- Suspended hooks (design.md "Sessions, coroutines and suspension"): a hook
-- waiting in challenge_auth holds only its own session; other connections
-- are served meanwhile; a client that leaves while its hook waits is
-- forgotten and the server goes on.
local h = require "spec.functional.common"

local WAIT = h.ALICE .. [[
function auth_WAIT(server, args)
  local r = server:challenge_auth("waiting")
  if r == nil then return nil end
  if r ~= "go" then return false end
  return smtpd.AuthResult{ success = true, message = "235 2.7.0 done " .. tostring(args[2]) }
end
]]

local EHLO = { "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING",
  "250-AUTH LOGIN PLAIN WAIT", "250 HELP" }
local GO = h.b64("go")
local WAITING = "334 " .. h.b64("waiting")

local function full_session(conn)
  return {
    { conn = conn, "EHLO " .. conn .. ".test", EHLO },
    { conn = conn, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
    { conn = conn, "MAIL FROM:<a@example.org>", "250 OK" },
    { conn = conn, "RCPT TO:<b@example.org>", "250 OK" },
    { conn = conn, "DATA", "354 End data with <CR><LF>.<CR><LF>" },
    { conn = conn, send = "Subject: meanwhile\r\n\r\nhi\r\n.\r\n", expect = "250 OK" },
    { conn = conn, "QUIT", "221 Bye", closed = true },
  }
end

local function mentions_disconnect(srv)
  local log = srv:stderr():lower()
  for _, word in ipairs{ "disconnect", "closed", "lost", "abandon", "gone", "eof" } do
    if log:find(word, 1, true) then return end
  end
  error("the log does not mention the client leaving:\n" .. srv:stderr():sub(-3000))
end

describe("suspended hooks", function()
  h.run{
    { name = "another connection completes a whole session while a hook waits",
      source = WAIT, options = { auth_require_tls = false },
      dialogue = h.steps(
        h.ehlo,
        { "AUTH WAIT a", WAITING },
        full_session("b"),
        { GO, "235 2.7.0 done a" },
        { "NOOP", "250 OK" }) },

    { name = "two waiting hooks resume independently, in any order",
      source = WAIT, options = { auth_require_tls = false },
      dialogue = {
        { conn = "a", "EHLO a.test", EHLO },
        { conn = "b", "EHLO b.test", EHLO },
        { conn = "a", "AUTH WAIT a", WAITING },
        { conn = "b", "AUTH WAIT b", WAITING },
        { conn = "b", GO, "235 2.7.0 done b" },
        { conn = "a", h.b64("no"), h.AUTH_INVALID },
        { conn = "a", "AUTH WAIT again", WAITING },
        { conn = "b", "NOOP", "250 OK" },
        { conn = "a", GO, "235 2.7.0 done again" },
      } },

    { name = "a client that leaves while its hook waits: the server goes on and logs it",
      source = WAIT, options = { auth_require_tls = false },
      dialogue = h.steps(
        h.ehlo,
        { "AUTH WAIT a", WAITING },
        { close = true },
        full_session("b"),
        { conn = "c", "EHLO c.test", EHLO },
        { conn = "c", "AUTH WAIT c", WAITING },
        { conn = "c", GO, "235 2.7.0 done c" }),
      after = mentions_disconnect },

    { name = "many clients leave while waiting",
      source = WAIT, options = { auth_require_tls = false },
      dialogue = (function()
        local steps = {}
        for i = 1, 20 do
          local c = "w" .. i
          steps[#steps + 1] = { conn = c, "EHLO w.test", EHLO }
          steps[#steps + 1] = { conn = c, "AUTH WAIT " .. c, WAITING }
        end
        for i = 1, 20, 2 do steps[#steps + 1] = { conn = "w" .. i, close = true } end
        for i = 2, 20, 2 do steps[#steps + 1] = { conn = "w" .. i, GO, "235 2.7.0 done w" .. i } end
        return h.steps(steps, full_session("last"))
      end)() },

    { name = "a client that leaves in the middle of DATA",
      source = WAIT, options = { auth_require_tls = false },
      dialogue = h.steps(
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "Subject: cut\r\n\r\nhalf a mess" },
        { close = true },
        full_session("b")) },

    { name = "the idle timeout also runs while a hook waits for the client",
      source = WAIT, options = { auth_require_tls = false }, args = { "--timeout", "1" },
      dialogue = {
        h.ehlo,
        { "AUTH WAIT t", WAITING },
        { expect = "421 4.4.2 mx.test Error: timeout exceeded", closed = true },
        { conn = "b", "NOOP", "250 OK" },
      } },

    { name = "pipelined input while a hook waits: only the awaited line goes to the hook",
      source = WAIT, options = { auth_require_tls = false },
      dialogue = {
        h.ehlo,
        { send = "AUTH WAIT p\r\n" .. GO .. "\r\nNOOP\r\nMAIL FROM:<a@example.org>\r\n" },
        { expect = WAITING },
        { expect = "235 2.7.0 done p" },
        { expect = "250 OK" },
        { expect = "250 OK" },
      } },
  }
end)
