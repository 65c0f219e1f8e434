-- The server without --handler (the built-in default handler) and the
-- -t/--check mode.
local testing = require "smtpd.testing"
local h = require "spec.functional.common"

local BEGIN = "---------- MESSAGE FOLLOWS ----------"
local END = "------------ END MESSAGE ------------"

describe("the default handler", function()
  h.run{
    { name = "prints each message to stdout between the markers, with X-Peer",
      dialogue = {
        { "EHLO client.test", h.EHLO_DEFAULT },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "Subject: first\r\n\r\nHello ONE\r\n..dotted\r\n.\r\n", expect = "250 OK" },
        { "MAIL FROM:<c@example.org>", "250 OK" },
        { "RCPT TO:<d@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "Subject: second\r\n\r\nHello TWO\r\n.\r\n", expect = "250 OK" },
        { "QUIT", "221 Bye", closed = true },
      },
      after = function(srv)
        local out = srv:stdout()
        local blocks = {}
        for block in out:gmatch(BEGIN:gsub("%-", "%%-") .. "\r?\n(.-)" .. END:gsub("%-", "%%-")) do
          blocks[#blocks + 1] = block
        end
        assert.equal(2, #blocks, "two messages between the markers in:\n" .. out)
        assert.matches("Subject: first", blocks[1], 1, true)
        assert.matches("Hello ONE", blocks[1], 1, true)
        assert.matches("\n%.dotted\r?\n", blocks[1])
        assert.matches("\nX%-Peer: [^\n]*127%.0%.0%.1", "\n" .. blocks[1])
        assert.matches("Subject: second", blocks[2], 1, true)
        assert.matches("\nX%-Peer: [^\n]*127%.0%.0%.1", "\n" .. blocks[2])
        assert.is_nil(blocks[2]:find("Hello ONE", 1, true))
      end },

    { name = "rejects AUTH: 538 without TLS",
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.ALICE_PLAIN, "538 5.7.11 Encryption required for requested authentication mechanism" },
      } },

    { name = "rejects AUTH: 535 when TLS is not required",
      options = { auth_require_tls = false },
      dialogue = {
        { "EHLO client.test", h.EHLO_AUTH },
        { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_INVALID },
        { "AUTH LOGIN", "334 VXNlciBOYW1lAA==" },
        { h.b64("alice"), "334 UGFzc3dvcmQA" },
        { h.b64("s3cret"), h.AUTH_INVALID },
        { "MAIL FROM:<a@example.org>", "250 OK" },
      } },
  }
end)

describe("--check", function()
  it("accepts a good script (exit 0)", function()
    local status, out = testing.check{ handler = "spec/functional/fixtures/good_handler.lua" }
    assert.equal(0, status, out)
    status, out = testing.check{ handler = "spec/functional/fixtures/good_handler.lua", flag = "-t" }
    assert.equal(0, status, out)
  end)

  it("refuses a script with a syntax error (exit 1, file:line)", function()
    local status, out, path = testing.check{ source = "-- line 1\nlocal x = 1\nfunction handle_NOOP(\n" ..
      "  return '250 OK'\nend\n" }
    assert.equal(1, status, out)
    assert.matches(path:match("[^/]*$") .. ":%d+", out)
    status, out = testing.check{ source = "local = 3\n", flag = "-t" }
    assert.equal(1, status, out)
    assert.matches("handler%.lua:1", out)
  end)

  it("refuses a script that raises while loading (exit 1, file:line)", function()
    local status, out = testing.check{ source = "local a = 1\nerror('broken on purpose')\n" }
    assert.equal(1, status, out)
    assert.matches("handler%.lua:2", out)
    assert.matches("broken on purpose", out, 1, true)
  end)

  it("start raises with the server's reason for a broken script", function()
    local ok, err = pcall(testing.start, { source = "function handle_NOOP(\n" })
    assert.is_false(ok)
    assert.matches("handler%.lua:%d", err)
  end)
end)
