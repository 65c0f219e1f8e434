-- The README's worked example (scripts/examples/policy_service.lua) against
-- real services on 127.0.0.1, started by the spec and stopped by PID: a
-- Postfix-style policy service (Python) asked once per RCPT over one pooled
-- connection, and dnsmasq serving a DNSBL zone that lists 127.0.0.1 and
-- one that does not.
local testing = require "smtpd.testing"
local du = require "spec.functional.dns_util"
local hu = require "spec.functional.hostile_util"
local u = require "spec.functional.reload_util"

local SCRIPT = "scripts/examples/policy_service.lua"

-- Answers REJECT for blocked@, DEFER for later@, DUNNO otherwise; logs one
-- line per connection and per request.
local POLICYD = [[
import socket, sys, threading
port_file, log_file = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def log(s):
    with lock, open(log_file, "a") as f:
        f.write(s + "\n")
def serve(conn):
    log("connection")
    f = conn.makefile("rb")
    while True:
        req = {}
        while True:
            line = f.readline()
            if not line:
                return
            line = line.rstrip(b"\n").decode()
            if line == "":
                break
            k, _, v = line.partition("=")
            req[k] = v
        log("request " + req.get("recipient", "?") + " from " + req.get("client_address", "?"))
        rcpt = req.get("recipient", "")
        if rcpt.startswith("blocked@"):
            action = "REJECT 5.7.1 <%s>: no thanks" % rcpt
        elif rcpt.startswith("later@"):
            action = "DEFER come back later"
        else:
            action = "DUNNO"
        conn.sendall(("action=%s\n\n" % action).encode())
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
with open(port_file, "w") as p:
    p.write(str(ls.getsockname()[1]))
ls.settimeout(600)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
]]

local function start_policyd()
  local dir = hu.tempdir()
  local d = { dir = dir, log = dir .. "/policyd.log" }
  local f = assert(io.open(dir .. "/policyd.py", "w"))
  f:write(POLICYD)
  f:close()
  local p = assert(io.popen(("/usr/bin/python3 %s/policyd.py %s/port %s >%s/out 2>&1 & echo $!")
    :format(dir, dir, d.log, dir)))
  d.pid = tonumber(p:read("*l"))
  p:close()
  assert(d.pid and d.pid > 1, "policyd did not start")
  hu.wait_until(function()
    d.port = tonumber(hu.read_file(dir .. "/port") or "")
    return d.port ~= nil
  end, 10, "policyd's port")
  return d
end

local function count(text, s) return select(2, (text or ""):gsub(s, "")) end

describe("the policy service example (README: Waiting on the network)", function()
  local dns, policyd
  setup(function()
    dns = du.start_dnsmasq{ "--host-record=1.0.0.127.zen.test,127.0.0.2", "--auth-zone=clean.test" }
    policyd = start_policyd()
  end)
  teardown(function()
    if policyd and policyd.pid and policyd.pid > 1 then u.kill(policyd.pid, 15) end
    if dns then dns.close() end
  end)

  local function start(zone)
    return testing.start{ handler = SCRIPT,
      script_args = { "127.0.0.1:" .. policyd.port, zone },
      options = { resolver = "127.0.0.1:" .. dns.port, auth_require_tls = false } }
  end

  it("asks the service once per RCPT over one pooled connection and applies its actions", function()
    local srv = start("clean.test")
    local before = count(hu.read_file(policyd.log), "connection\n")
    for i = 1, 3 do
      local c = srv:connect()
      assert.equal(250, (c:cmd("EHLO client.test")))
      assert.equal(250, (c:cmd("MAIL FROM:<s@example.org>")))
      assert.equal(250, (c:cmd("RCPT TO:<ok" .. i .. "@example.org>")))
      local code, text = c:cmd("RCPT TO:<blocked@example.org>")
      assert.equal(554, code)
      assert.equal("5.7.1 <blocked@example.org>: no thanks", text)
      code, text = c:cmd("RCPT TO:<later@example.org>")
      assert.equal(450, code)
      assert.equal("4.7.1 come back later", text)
      assert.equal(354, (c:cmd("DATA")))
      assert.equal(250, (c:cmd("Subject: x\r\n\r\nbody\r\n.")))
      c:close()
    end
    srv:stop()
    local log = hu.read_file(policyd.log)
    assert.equal(9, count(log, "request [^\n]* from 127%.0%.0%.1\n"))
    -- nine requests from three sessions, one connection: the pool
    assert.equal(1, count(log, "connection\n") - before)
  end)

  it("refuses a client listed in the DNSBL at MAIL", function()
    local srv = start("zen.test")
    local c = srv:connect()
    assert.equal(250, (c:cmd("EHLO client.test")))
    local code, text = c:cmd("MAIL FROM:<s@example.org>")
    assert.equal(554, code)
    assert.equal("5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.test", text)
    c:close()
    srv:stop()
  end)

  it("answers 451 at RCPT while the policy service is down, and goes on", function()
    local srv = testing.start{ handler = SCRIPT, script_args = { "127.0.0.1:1", "clean.test" },
      options = { resolver = "127.0.0.1:" .. dns.port, auth_require_tls = false } }
    local c = srv:connect()
    assert.equal(250, (c:cmd("EHLO client.test")))
    assert.equal(250, (c:cmd("MAIL FROM:<s@example.org>")))
    local code, text = c:cmd("RCPT TO:<a@example.org>")
    assert.equal(451, code)
    assert.equal("4.3.0 policy service: connection refused", text)
    assert.equal(250, (c:cmd("NOOP")))
    c:close()
    srv:stop()
  end)
end)
