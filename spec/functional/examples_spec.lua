-- The shipped examples lose no message: 200 messages from four concurrent
-- smtplib clients (/usr/bin/python3) through each example under
-- --workers 2, every one answered 250, and 200 stored (spool files, or
-- stdout lines flushed before the 250).
local ffi = require "ffi"
local testing = require "smtpd.testing"

pcall(ffi.cdef, "int setenv(const char *, const char *, int); int unsetenv(const char *);")

local MESSAGES, CLIENTS = 200, 4

-- Each client sends MESSAGES / CLIENTS messages on one connection and
-- prints, in one write, how many were accepted (sendmail raises on a
-- refusal).
local CLIENT = [[
import smtplib, sys
host, port, n, login = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = smtplib.SMTP(host, port, timeout=30)
s.ehlo("client.test")
if login != "-":
    s.login(login, "s3cret")
sent = 0
for i in range(n):
    msg = "Subject: m %s %d\r\n\r\nbody %d\r\n" % (sys.argv[5], i, i)
    s.sendmail("sender@example.com", ["rcpt@example.com"], msg)
    sent = i + 1
s.quit()
sys.stdout.write("sent=%d\n" % sent)
]]

local function send_all(srv, login, tag)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(CLIENT)
  f:close()
  local parts = {}
  for i = 1, CLIENTS do
    parts[#parts + 1] = ("timeout 120 /usr/bin/python3 %s 127.0.0.1 %d %d %s %s-%d &"):format(
      script, srv.port, MESSAGES / CLIENTS, login, tag, i)
  end
  local p = assert(io.popen(table.concat(parts, " ") .. " wait 2>&1"))
  local out = p:read("*a")
  p:close()
  os.remove(script)
  local oks = 0
  for n in out:gmatch("sent=(%d+)") do oks = oks + tonumber(n) end
  return oks, out
end

local function count_lines(text, pattern)
  local n = 0
  for line in text:gmatch("[^\n]+") do
    if line:match(pattern) then n = n + 1 end
  end
  return n
end

local function stop_and_stdout(srv)
  srv:stop()
  return srv:stdout()
end

describe("scripts/examples/users.lua under --workers 2", function()
  it("stores every accepted message in SPOOL_DIR under its own name", function()
    local spool = io.popen("mktemp -d /tmp/luasmtpd-spool.XXXXXX"):read("*l")
    ffi.C.setenv("SPOOL_DIR", spool, 1)
    local srv = testing.start{ handler = "scripts/examples/users.lua",
      options = { auth_require_tls = false }, args = { "--workers", "2" } }
    ffi.C.unsetenv("SPOOL_DIR")
    finally(function()
      srv:stop()
      os.execute("rm -rf " .. spool)
    end)
    local oks, out = send_all(srv, "alice", "spool")
    assert.equal(MESSAGES, oks, out)
    local files = io.popen("ls -A " .. spool):read("*a")
    assert.equal(MESSAGES, count_lines(files, "%.eml$"), files)
    assert.equal(0, count_lines(files, "%.tmp$"), files)
  end)

  it("prints one flushed line per message without SPOOL_DIR", function()
    local srv = testing.start{ handler = "scripts/examples/users.lua",
      options = { auth_require_tls = false }, args = { "--workers", "2" } }
    local oks, out = send_all(srv, "alice", "stdout")
    finally(function() srv:stop() end)
    assert.equal(MESSAGES, oks, out)
    assert.equal(MESSAGES, count_lines(stop_and_stdout(srv), " bytes from sender@example%.com %(alice%)"))
  end)
end)

describe("scripts/examples/token_mechanism.lua under --workers 2", function()
  it("prints one flushed line per message", function()
    local srv = testing.start{ handler = "scripts/examples/token_mechanism.lua",
      args = { "--workers", "2" } }
    finally(function() srv:stop() end)
    local oks, out = send_all(srv, "-", "token")
    assert.equal(MESSAGES, oks, out)
    assert.equal(MESSAGES, count_lines(stop_and_stdout(srv), " bytes from sender@example%.com"))
  end)
end)
