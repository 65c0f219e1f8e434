-- What a new user trips over (issue 16): -t warnings about blocking modules
-- and a handle_DATA that can return nothing; the log line when it does; a
-- bare port for -l; the bare-LF refusal telling curl users what to do; the
-- CLI requiring STARTTLS with --tlscert as aiosmtpd's does.
local socket = require "socket"
local testing = require "smtpd.testing"

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)exit=(%d+)\n$")
  return tonumber(rc), body
end

describe("-t warnings", function()
  it("names blocking network modules the top level requires", function()
    local rc, out = testing.check{ flag = "-t", source = [[
local http = require "socket.http"
function handle_DATA() return "250 OK" end
]] }
    assert.equal(0, rc)
    assert.matches("warning: the script requires socket, socket.http, which block", out, 1, true)
    assert.matches("every connection of this process waits", out, 1, true)
  end)

  it("says nothing about a script without them", function()
    local rc, out = testing.check{ flag = "-t", source = [[
local smtpd = require "smtpd"
function handle_DATA(server, session, envelope)
  if #envelope.content > 10 then return "250 OK" else return "250 small" end
end
]] }
    assert.equal(0, rc)
    assert.is_nil(out:find("warning", 1, true), out)
  end)

  it("flags a handle_DATA that never returns a status line", function()
    local rc, out = testing.check{ flag = "-t", source = [[
local handler = {}
function handler.handle_DATA(server, session, envelope)
  io.stdout:write(envelope.content)
end
return handler
]] }
    assert.equal(0, rc)
    assert.matches("handle_DATA %(.-:2%) never returns a status line", out)
  end)

  it("flags a handle_DATA with a path that falls off the end", function()
    local rc, out = testing.check{ flag = "-t", source = [[
function handle_DATA(server, session, envelope)
  if #envelope.content > 10 then
    return "250 OK"
  end
end
]] }
    assert.equal(0, rc)
    assert.matches("handle_DATA %(.-:1%) may return nothing on some path", out)
  end)

  it("does not flag the shipped examples or the default handler", function()
    for _, h in ipairs{ "scripts/examples/users.lua", "scripts/examples/token_mechanism.lua",
                        "scripts/default.lua" } do
      local rc, out = testing.check{ flag = "-t", handler = h }
      assert.equal(0, rc)
      assert.is_nil(out:find("warning", 1, true), out)
    end
  end)
end)

describe("a handle_DATA that returns nothing", function()
  it("gets 451 and a log line naming the hook and the resend it invites", function()
    local srv = testing.start{ source = [[
function handle_DATA(server, session, envelope) local _ = #envelope.content end
]] }
    finally(function() srv:stop() end)
    testing.dialogue(srv, {
      { "HELO client.test", "250 mx.test" },
      { "MAIL FROM:<a@example.com>", "250 OK" },
      { "RCPT TO:<b@example.com>", "250 OK" },
      { "DATA", code = 354 },
      { send = "Subject: x\r\n\r\nhi\r\n.\r\n", expect = "451 4.3.0 Error: local error in processing" },
    })
    assert.matches("handle_DATA returned nothing", srv:stderr(), 1, true)
    assert.matches("the client gets 451 and will send the message again", srv:stderr(), 1, true)
  end)
end)

describe("-l with a bare number", function()
  it("listens on that port of localhost", function()
    local port = free_port()
    local srv = testing.start{ listen = tostring(port) }
    finally(function() srv:stop() end)
    assert.equal(port, srv.port)
    local c = assert(testing.connect("127.0.0.1", port))
    assert.equal(250, (c:cmd("NOOP")))
    c:close()
  end)
end)

describe("an LF-only upload with curl", function()
  local file = os.tmpname()
  before_each(function() write(file, "Subject: lf only\n\nline one\nline two\n") end)
  after_each(function() os.remove(file) end)

  local function curl(srv)
    return sh(("curl -sS -v --max-time 20 smtp://127.0.0.1:%d --mail-from a@example.com "
      .. "--mail-rcpt b@example.com --upload-file %s"):format(srv.port, file))
  end

  it("is refused with a reply that says to use CRLF", function()
    local srv = testing.start{}
    finally(function() srv:stop() end)
    local rc, out = curl(srv)
    assert.are_not.equal(0, rc)
    assert.matches("< 550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings",
      out, 1, true)
  end)

  it("is accepted with bare_newline = normalize", function()
    local srv = testing.start{ options = { bare_newline = "normalize" } }
    finally(function() srv:stop() end)
    local rc, out = curl(srv)
    assert.equal(0, rc, out)
    assert.matches("line one\r?\nline two", srv:stdout())
  end)
end)

describe("the CLI with --tlscert (aiosmtpd's default)", function()
  local function mail(srv)
    local c = assert(srv:connect())
    c:cmd("EHLO client.test")
    local code = c:cmd("MAIL FROM:<a@example.com>")
    c:close()
    return code
  end

  it("requires STARTTLS before MAIL", function()
    local srv = testing.start{ tls = "starttls" }
    finally(function() srv:stop() end)
    assert.equal(530, mail(srv))
  end)

  it("does not with --no-requiretls", function()
    local srv = testing.start{ tls = "starttls", args = { "--no-requiretls" } }
    finally(function() srv:stop() end)
    assert.equal(250, mail(srv))
  end)

  it("lets a script's require_starttls = false decide", function()
    local srv = testing.start{ tls = "starttls",
      source = "options = { require_starttls = false }" }
    finally(function() srv:stop() end)
    assert.equal(250, mail(srv))
  end)

  it("does not without --tlscert", function()
    local srv = testing.start{}
    finally(function() srv:stop() end)
    assert.equal(250, mail(srv))
  end)
end)
