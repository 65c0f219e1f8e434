-- TLS session resumption (issue 15): RFC 5077 tickets whose keys every
-- worker derives from one secret the master creates, and the bounded
-- session-ID cache for clients that send no ticket. Real clients only:
-- `openssl s_client` (-sess_out / -sess_in, "Reused" in its output) and
-- Python's ssl module (session=) through /usr/bin/python3.
--
-- Every client command runs under `timeout`; the waits for log lines and
-- for a key period to pass are bounded.
local testing = require "smtpd.testing"
local socket = require "socket"
local mime = require "mime"

local SIGKILL = 9

-- session.ssl as a hook sees it: NOOP answers whether the handshake resumed.
local SCRIPT = [[
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  local s = session.ssl
  return "250 resumed=" .. tostring(s and s.resumed) .. " helo=" .. tostring(session.host_name)
end
]]

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local tmp = run("mktemp -d /tmp/luasmtpd-resume-spec.XXXXXX"):gsub("%s+$", "")

-- One SMTP connection through `openssl s_client`; returns "New", "Reused"
-- or what it printed instead. sess_out / sess_in: session files.
local function s_client(port, o)
  local args = { "openssl s_client -connect 127.0.0.1:" .. port, "-tls1_2" }
  if not o.implicit then args[#args + 1] = "-starttls smtp" end
  if o.no_ticket then args[#args + 1] = "-no_ticket" end
  if o.sess_out then args[#args + 1] = "-sess_out " .. shell_quote(o.sess_out) end
  if o.sess_in then args[#args + 1] = "-sess_in " .. shell_quote(o.sess_in) end
  local out = run("printf 'QUIT\\r\\n' | timeout 10 " .. table.concat(args, " "))
  return out:match("\n(New), TLS") or out:match("\n(Reused), TLS") or out
end

local function file(name) return tmp .. "/" .. name end

-- Bounded wait for `pattern` (plain text) to occur `n` times in stderr.
local function wait_log(srv, text, n, secs)
  local deadline = socket.gettime() + (secs or 15)
  repeat
    local log, count, i = srv:stderr(), 0, 1
    while true do
      local s, e = log:find(text, i, true)
      if not s then break end
      count, i = count + 1, e + 1
    end
    if count >= (n or 1) then return log end
    socket.sleep(0.05)
  until socket.gettime() > deadline
  error(("no %d x %q in the log within %s s:\n%s"):format(n or 1, text, secs or 15, srv:stderr()))
end

-- The worker tags ("w0", "w1") of every TLS handshake logged so far, in order,
-- each with "resumed" or "full".
local function handshakes(srv)
  local list = {}
  for tag, rest in srv:stderr():gmatch(" (w%d+) %[s%d+%] TLS established: ([^\n]*)") do
    list[#list + 1] = { worker = tag, resumed = rest:find(", resumed", 1, true) ~= nil }
  end
  return list
end

describe("TLS session resumption", function()
  local srv
  after_each(function()
    if srv then srv:stop() end
    srv = nil
  end)
  teardown(function() os.execute("rm -rf " .. shell_quote(tmp)) end)

  it("resumes a STARTTLS session by ticket (openssl -sess_out / -sess_in)", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls" }
    assert.equal("New", s_client(srv.port, { sess_out = file("t1") }))
    assert.equal("Reused", s_client(srv.port, { sess_in = file("t1") }))
    assert.matches("TLS established: [^\n]*, resumed", srv:stderr())
  end)

  it("resumes implicit TLS (--listen-smtps) by ticket", function()
    srv = testing.start{ source = SCRIPT, tls = "implicit" }
    local port = srv.smtps_port or srv.port
    assert.equal("New", s_client(port, { implicit = true, sess_out = file("i1") }))
    assert.equal("Reused", s_client(port, { implicit = true, sess_in = file("i1") }))
  end)

  it("resumes from the session cache for a client that sends no ticket", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls" }
    assert.equal("New", s_client(srv.port, { no_ticket = true, sess_out = file("c1") }))
    assert.equal("Reused", s_client(srv.port, { no_ticket = true, sess_in = file("c1") }))
  end)

  it("Python's ssl session reuse: session.ssl.resumed, and STARTTLS still resets the session", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls" }
    local py = [[
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
def one(session):
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    s.ehlo("before.tls")
    code, _ = s.docmd("STARTTLS")
    assert code == 220, code
    s.sock = ctx.wrap_socket(s.sock, server_hostname="localhost", session=session)
    s.file = None
    reused = s.sock.session_reused
    code, text = s.docmd("NOOP")
    sess = s.sock.session
    s.quit()
    return reused, text.decode(), sess
r1, t1, sess = one(None)
r2, t2, _ = one(sess)
print(r1, t1)
print(r2, t2)
]]
    local f = assert(io.open(file("resume.py"), "w"))
    f:write(py)
    f:close()
    local out = run("timeout 30 /usr/bin/python3 " .. shell_quote(file("resume.py")) .. " " .. srv.port)
    -- The hook sees resumed = false, then true; host_name from the
    -- pre-TLS EHLO is forgotten both times (RFC 3207 4.2).
    assert.equal("False resumed=false helo=nil\nTrue resumed=true helo=nil\n", out)
  end)

  it("a ticket from one worker resumes on the other (--workers 2)", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls", args = { "--workers", "2" } }
    wait_log(srv, "worker 1 started", 1)
    assert.equal("New", s_client(srv.port, { sess_out = file("w1") }))
    local first = handshakes(srv)[1].worker
    local other
    for _ = 1, 40 do
      assert.equal("Reused", s_client(srv.port, { sess_in = file("w1") }))
      local list = handshakes(srv)
      if list[#list].worker ~= first then
        other = list[#list]
        break
      end
    end
    assert.is_truthy(other, "no connection reached the second worker in 40 tries")
    assert.is_true(other.resumed)
  end)

  it("a ticket survives a reload (SIGHUP) and a worker restart (SIGKILL)", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls", args = { "--workers", "2" } }
    wait_log(srv, "worker 1 started", 1)
    assert.equal("New", s_client(srv.port, { sess_out = file("r1") }))
    srv:signal("HUP")
    wait_log(srv, "policy generation 2", 2)
    assert.equal("Reused", s_client(srv.port, { sess_in = file("r1") }))
    -- Kill both workers: their replacements have never seen the ticket.
    for pid in srv:stderr():gmatch("worker %d started %(pid (%d+)%)") do
      run("kill -" .. SIGKILL .. " " .. pid)
    end
    wait_log(srv, "started (pid", 4)
    wait_log(srv, "policy generation 1", 4)
    local ok
    for _ = 1, 20 do -- a restarted worker may not listen yet: connection refused
      ok = s_client(srv.port, { sess_in = file("r1") })
      if ok == "Reused" then break end
      socket.sleep(0.1)
    end
    assert.equal("Reused", ok)
  end)

  it("a ticket past its two key periods gets a full handshake", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls", args = { "-d" },
      options = { tls_ticket_lifetime = 1 } }
    local issued = os.time()
    assert.equal("New", s_client(srv.port, { sess_out = file("e1") }))
    -- Periods N and N+1 accept it; wait (bounded) until N+2 has begun.
    local deadline = socket.gettime() + 5
    while os.time() < issued + 3 and socket.gettime() < deadline do socket.sleep(0.1) end
    assert.equal("New", s_client(srv.port, { sess_in = file("e1") }))
    assert.matches("TLS ticket from key period %d+ refused", srv:stderr())
  end)

  it("a ticket from another server's secret, or a corrupted one, gets a full handshake", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls", args = { "-d" } }
    assert.equal("New", s_client(srv.port, { sess_out = file("f1") }))
    srv:stop()
    srv = testing.start{ source = SCRIPT, tls = "starttls", args = { "-d" } }
    assert.equal("New", s_client(srv.port, { sess_in = file("f1") }))
    assert.matches("TLS ticket does not authenticate", srv:stderr())
    -- Corrupt one ciphertext byte of a ticket this server issued: the
    -- ticket starts with its 4-byte key period, then a 12-byte IV.
    assert.equal("New", s_client(srv.port, { sess_out = file("f2") }))
    local pem = assert(io.open(file("f2"))):read("*a")
    local der = mime.unb64((pem:gsub("%-%-%-%-%-[^\n]*%-%-%-%-%-", ""):gsub("%s", "")))
    local pos
    for d = 0, 1 do
      local n = math.floor(os.time() / 3600) - d
      local name = string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
        math.floor(n / 256) % 256, n % 256)
      pos = pos or der:find(name, 1, true)
    end
    assert.is_truthy(pos, "no ticket in the saved session")
    local at = pos + 20
    der = der:sub(1, at - 1) .. string.char((der:byte(at) + 1) % 256) .. der:sub(at + 1)
    local out = assert(io.open(file("f3"), "w"))
    out:write("-----BEGIN SSL SESSION PARAMETERS-----\n", (mime.b64(der)), "\n-----END SSL SESSION PARAMETERS-----\n")
    out:close()
    assert.equal("New", s_client(srv.port, { sess_in = file("f3") }))
    assert.equal(2, select(2, srv:stderr():gsub("TLS ticket does not authenticate", "")))
    assert.equal("Reused", s_client(srv.port, { sess_in = file("f2") })) -- still running, still resumes
  end)

  it("a full session cache evicts its oldest entry and never grows", function()
    srv = testing.start{ source = SCRIPT, tls = "starttls", args = { "-d" },
      options = { tls_session_cache_size = 2 } }
    for i = 1, 4 do
      assert.equal("New", s_client(srv.port, { no_ticket = true, sess_out = file("k" .. i) }))
    end
    local most = 0
    for n, max in srv:stderr():gmatch("TLS session cache: (%d+) of (%d+) entries") do
      assert.equal("2", max)
      most = math.max(most, tonumber(n))
    end
    assert.equal(2, most)
    -- The newest is still there, the oldest was evicted.
    assert.equal("Reused", s_client(srv.port, { no_ticket = true, sess_in = file("k4") }))
    assert.equal("New", s_client(srv.port, { no_ticket = true, sess_in = file("k1") }))
  end)

  it("refuses a ticket lifetime over 7 days", function()
    local out = run("timeout 10 " .. shell_quote(os.getenv("LUASMTPD_BIN") or "build/luasmtpd") ..
      " --check -o tls_ticket_lifetime=604801")
    assert.matches("option 'tls_ticket_lifetime' must be at most 604800 seconds", out)
  end)
end)

-- The ticket secret reaches workers only: a program a hook starts inherits
-- neither its descriptor nor the variable naming it.
describe("the TLS ticket secret", function()
  local LEAK = [[
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  local p = io.popen("ls -l /proc/self/fd 2>/dev/null; env")
  local out = p:read("*a")
  p:close()
  local fd = out:find("luasmtpd-tickets", 1, true) and "fd" or "nofd"
  local env = out:find("LUASMTPD_TICKET_FD", 1, true) and "env" or "noenv"
  return "250 " .. fd .. " " .. env
end
]]
  for _, mode in ipairs({ "single", "workers" }) do
    it("is not inherited by programs a hook starts (" .. mode .. ")", function()
      local srv = testing.start{ source = LEAK, tls = "starttls",
        args = mode == "workers" and { "--workers", "2" } or nil }
      local ok, err = pcall(function()
        for _ = 1, 4 do -- both workers, by chance of the kernel
          local c = srv:connect()
          local code, text = c:cmd("NOOP")
          c:close()
          assert.equal(250, code)
          assert.equal("nofd noenv", text)
        end
      end)
      srv:stop()
      if not ok then error(err, 0) end
    end)
  end
end)
