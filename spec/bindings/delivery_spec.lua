-- The pure parts of delivery under plain LuaJIT: smtpd.client.wire (the
-- message as it goes on the wire after 354: CRLF line ends, dot-stuffing,
-- termination, RFC 5321 4.5.2), smtpd.handlers.mbox's format (From_
-- line, mboxrd quoting), and -c's argument checks
-- (smtpd.handlers.from_args). Everything that waits is
-- spec/functional/client_spec.lua's and handlers_spec.lua's.
local build_lua = os.getenv("LUASMTPD_CPATH") or "build/lua/?.so"
package.cpath = build_lua .. ";" .. package.cpath
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local client = require "smtpd.client"
local mbox = require "smtpd.handlers.mbox"
local handlers = require "smtpd.handlers"

describe("smtpd.client.wire", function()
  it("terminates, stuffs leading dots and turns bare LF into CRLF", function()
    assert.equal(".\r\n", client.wire(""))
    assert.equal("x\r\n.\r\n", client.wire("x"))
    assert.equal("x\r\n.\r\n", client.wire("x\r\n"))
    assert.equal("..\r\n.\r\n", client.wire("."))
    assert.equal("a\r\n..\r\n...b\r\n.\r\n", client.wire("a\n.\n..b\n"))
    assert.equal("a\r\n..\r\nb\r\n.\r\n", client.wire("a\r\n.\r\nb"))
    -- a bare CR is data, not a line end
    assert.equal("a\rb\r\n.\r\n", client.wire("a\rb"))
  end)

  it("round-trips: unstuffing the wire form gives the CRLF message back", function()
    local msg = ".\r\n..\r\n.x\r\nFrom y\r\n\r\n.\r\nend\r\n"
    local wire = client.wire(msg)
    local body = wire:sub(1, -4):gsub("\r\n%.", "\r\n"):gsub("^%.", "")
    assert.equal(msg, body)
  end)
end)

describe("smtpd.handlers.mbox format", function()
  local T = 0 -- Thu Jan  1 00:00:00 1970
  it("writes a From_ line, LF line ends, mboxrd quoting and an empty line", function()
    assert.equal("From a@b Thu Jan  1 00:00:00 1970\nSubject: s\n\n>From x\n>>From y\n From z\n\n",
      mbox.format("a@b", "Subject: s\r\n\r\nFrom x\r\n>From y\r\n From z\r\n", T))
  end)

  it("quotes a From line at the very start, terminates the last line, names the null sender", function()
    assert.equal("From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n>From start\nlast\n\n",
      mbox.format("<>", "From start\r\nlast", T))
    assert.equal("From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n\n", mbox.format("", "", T))
  end)
end)

describe("-c arguments (smtpd.handlers.from_args)", function()
  local function err(...)
    local ok, e = pcall(handlers.from_args, ...)
    assert.is_false(ok)
    return e
  end

  it("builds each handler from its words", function()
    assert.is_function(handlers.from_args("sink").handle_DATA)
    assert.same({ host = "smtp.example.net", port = 25 }, handlers.from_args("relay", "smtp.example.net").upstream)
    assert.same({ host = "10.0.0.5", port = 2525 }, handlers.from_args("relay", "10.0.0.5", "2525").upstream)
    assert.same({ path = "/run/dovecot/lmtp", lmtp = true, starttls = false },
      handlers.from_args("lmtp", "unix:/run/dovecot/lmtp").upstream)
    assert.same({ host = "::1", port = 24, lmtp = true }, handlers.from_args("lmtp", "[::1]:24").upstream)
    assert.equal("/var/mail/inbox", handlers.from_args("maildir", "/var/mail/inbox").path)
    assert.equal("/var/mail/alice", handlers.from_args("mbox", "/var/mail/alice").path)
  end)

  it("refuses bad words with the usage line", function()
    assert.equal("luasmtpd -c relay HOST [PORT]: expected HOST [PORT]", err("relay"))
    assert.equal("luasmtpd -c relay HOST [PORT]: PORT must be a number 1-65535", err("relay", "h", "0"))
    assert.equal("luasmtpd -c maildir DIR: expected DIR", err("maildir"))
    assert.equal("luasmtpd -c lmtp unix:/PATH | HOST:PORT: expected unix:/PATH or HOST:PORT", err("lmtp", "x"))
    assert.equal("luasmtpd -c: unknown handler 'x' (expected debugging, sink, relay, maildir, mbox, lmtp)",
      err("x"))
  end)
end)
