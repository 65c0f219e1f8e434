-- UNIX-domain listeners (delivery.md 5): `-l unix:PATH`, repeatable and
-- beside TCP listeners; the socket file has unix_socket_mode (0660); a
-- stale socket file is replaced, a live one (something answers connect())
-- refuses the start; the file is removed on shutdown; session.peer tells a
-- UNIX client apart; max_connections_per_ip does not apply; PROXY works on
-- it (by hand and from HAProxy's `server ... unix@PATH send-proxy`).
local socket = require "socket"
local unix = require "socket.unix"
local ffi = require "ffi"
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"

pcall(ffi.cdef, "int getpid(void);")

local SOURCE = [[
function handle_NOOP(server, session, envelope, arg)
  local p = session.peer
  if arg == "peer" then
    return ("250 %s %s unix=%s pid=%s uid=%s gid=%s"):format(p.host, p.port, tostring(p.unix),
      tostring(p.pid), tostring(p.uid), tostring(p.gid))
  end
  if arg == "proxy" then
    local d = session.proxy_data
    return "250 " .. tostring(d and d.src_addr) .. " " .. tostring(d and d.src_port)
  end
  return "250 OK"
end
function handle_PROXY(server, session, envelope, proxy_data) return true end
]]

local function mode_of(path)
  return u.sh("stat -c %a " .. u.shell_quote(path)):match("^(%d+)")
end

local function exists(path)
  return u.sh("test -e " .. u.shell_quote(path) .. " && echo yes || echo no"):match("^(%a+)") == "yes"
end

-- A socket file nothing listens on: bound, then closed (the file stays).
local function stale_socket(path)
  local s = assert(unix.stream())
  assert(s:bind(path))
  s:close()
  assert.is_true(exists(path))
end

describe("UNIX-domain listeners", function()
  local dir, srv
  before_each(function() dir = u.tempdir() end)
  after_each(function()
    if srv then srv:stop() end
    srv = nil
    u.rmdir(dir)
  end)

  it("serves a session over the socket beside a TCP listener; session.peer tells them apart", function()
    local path = dir .. "/smtp.sock"
    srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. path } }
    assert.are.same({ "127.0.0.1:" .. srv.port, "unix:" .. path }, srv.listeners)
    local c = srv:connect_unix(path)
    assert.equal("220 mx.test luasmtpd 0.1.0", c.greeting)
    local code, text = c:cmd("NOOP peer")
    assert.equal(250, code)
    -- SO_PEERCRED: this process (the spec runs as root).
    assert.equal(("unix:%s 0 unix=%s pid=%d uid=0 gid=0"):format(path, path, ffi.C.getpid()), text)
    assert.equal(250, (c:cmd("EHLO client.test")))
    assert.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
    assert.equal(250, (c:cmd("RCPT TO:<b@example.org>")))
    assert.equal(250, (c:data("Subject: over a UNIX socket\r\n\r\nhi\r\n")))
    assert.equal(221, (c:cmd("QUIT")))
    c:close()
    local t = srv:connect()
    local _, ttext = t:cmd("NOOP peer")
    assert.matches("^127%.0%.0%.1 %d+ unix=nil pid=nil uid=nil gid=nil$", ttext)
    t:close()
    srv:stop()
    assert.truthy(srv:stderr():find("connection on unix:" .. path .. " (pid ", 1, true), srv:stderr())
  end)

  it("creates the file with mode 0660, or unix_socket_mode; removes it on SIGTERM", function()
    local a, b = dir .. "/a.sock", dir .. "/b.sock"
    srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. a } }
    assert.equal("660", mode_of(a))
    srv:stop()
    assert.equal(0, srv.status) -- a graceful stop
    assert.is_false(exists(a))
    srv = testing.start{ source = SOURCE, options = { unix_socket_mode = "0600" },
      args = { "-l", "unix:" .. a, "-l", "unix:" .. b } }
    assert.equal("600", mode_of(a))
    assert.equal("600", mode_of(b))
    srv:stop()
    assert.is_false(exists(a))
    assert.is_false(exists(b))
  end)

  it("started as root and dropping to --user, the socket file is that user's", function()
    local path = dir .. "/dropped.sock"
    assert(os.execute("chmod 755 " .. u.shell_quote(dir)) == 0)
    srv = testing.start{ source = SOURCE, user = "nobody", args = { "-l", "unix:" .. path } }
    assert.equal("nobody nogroup 660", u.sh("stat -c '%U %G %a' " .. u.shell_quote(path)):match("^([^\n]+)"))
    local c = srv:connect_unix(path) -- root may connect whatever the mode
    assert.equal(250, (c:cmd("NOOP")))
    c:close()
    srv:stop()
    -- nobody may not write to this root-owned directory: the file stays,
    -- the log says so, and the next start replaces it as stale
    assert.truthy(srv:stderr():find("cannot remove unix:" .. path .. ": Permission denied "
      .. "(the next start replaces it)", 1, true), srv:stderr())
    srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. path } }
    assert.equal("root root", u.sh("stat -c '%U %G' " .. u.shell_quote(path)):match("^([^\n]+)"))
  end)

  it("a bad unix_socket_mode is refused with the option's message", function()
    for _, bad in ipairs{ "0x1b0", "0778", "1777", "rw", "" } do
      local status, out = testing.check{ source = ("options = { unix_socket_mode = %q }\n"):format(bad) }
      assert.are_not.equal(0, status)
      assert.truthy(out:find("option 'unix_socket_mode' must be an octal string of permission bits "
        .. "from \"0000\" to \"0777\" (e.g. \"0660\")", 1, true), out)
    end
    local status, out = testing.check{ source = "options = { unix_socket_mode = 432 }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'unix_socket_mode' must be an octal string", 1, true), out)
  end)

  it("replaces a stale socket file nothing listens on", function()
    local path = dir .. "/stale.sock"
    stale_socket(path)
    srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. path } }
    local c = srv:connect_unix(path)
    assert.equal(250, (c:cmd("NOOP")))
    c:close()
  end)

  it("refuses to start on a live socket, and leaves it to the server that owns it", function()
    local path = dir .. "/live.sock"
    srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. path } }
    local ok, err = pcall(testing.start, { source = SOURCE, args = { "-l", "unix:" .. path } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("--listen unix:" .. path
      .. ": another server is listening on this socket; not replacing it", 1, true), err)
    -- the first server's socket is still there and answering
    local c = srv:connect_unix(path)
    assert.equal(250, (c:cmd("NOOP")))
    c:close()
  end)

  it("refuses to replace a file that is not a socket", function()
    local path = dir .. "/plain"
    u.write_file(path, "keep me\n")
    local ok, err = pcall(testing.start, { source = SOURCE, args = { "-l", "unix:" .. path } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("--listen unix:" .. path
      .. ": exists and is not a socket; not replacing it", 1, true), err)
    assert.equal("keep me\n", u.read_file(path))
  end)

  it("a start that fails after a UNIX listener was made removes its file", function()
    local path = dir .. "/first.sock"
    local bad = dir .. "/no/such/dir/s.sock"
    local ok, err = pcall(testing.start, { source = SOURCE,
      args = { "-l", "unix:" .. path, "-l", "unix:" .. bad } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("--listen unix:" .. bad .. ": bind: No such file or directory", 1, true), err)
    assert.is_false(exists(path))
  end)

  it("max_connections_per_ip does not apply to it (it does to TCP)", function()
    local path = dir .. "/s.sock"
    srv = testing.start{ source = SOURCE, options = { max_connections_per_ip = 1 },
      args = { "-l", "unix:" .. path } }
    local cs = {}
    for i = 1, 4 do
      cs[i] = srv:connect_unix(path)
      assert.equal("220 mx.test luasmtpd 0.1.0", cs[i].greeting)
    end
    for i = 1, 4 do assert.equal(250, (cs[i]:cmd("NOOP"))) end
    local t1 = srv:connect()
    assert.equal(220, t1.greeting_code)
    local t2 = srv:connect()
    assert.equal("421 4.7.0 mx.test Error: too many connections from 127.0.0.1", t2.greeting)
    for _, c in ipairs(cs) do c:close() end
    t1:close()
    t2:close()
  end)

  it("PROXY v1 works on it: the header comes first, the hook sees the client", function()
    local path = dir .. "/proxied.sock"
    srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. path, "--proxy-protocol=5" },
      listen = "127.0.0.1:0" }
    local c = assert(testing.connect(path, nil, { unix = true, greeting = false }))
    assert(c:send("PROXY TCP4 192.0.2.10 192.0.2.20 40123 25\r\n"))
    local code, text = c:reply()
    assert.equal(220, code, text)
    assert.equal("192.0.2.10 40123", select(2, c:cmd("NOOP proxy")))
    assert.equal(("unix:%s 0 unix=%s"):format(path, path),
      select(2, c:cmd("NOOP peer")):match("^(%S+ %d+ unix=%S+)"))
    c:close()
  end)

  it("with --workers the master makes the socket once; every worker (and a restarted one) accepts on it", function()
    local path = dir .. "/w.sock"
    local WORKER = [[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
function handle_NOOP() return "250 pid " .. ffi.C.getpid() end
]]
    srv = u.start{ source = WORKER, args = { "--workers", "2", "-l", "unix:" .. path } }
    local ok, err = pcall(function()
      assert.are.same({ "127.0.0.1:" .. srv.port, "unix:" .. path }, srv.listeners)
      local inode = u.sh("stat -c %i " .. u.shell_quote(path))
      -- Which worker accepts is the kernel's choice: with the other one
      -- stopped (SIGSTOP), the one left running must answer on the socket.
      local function answers_alone(pid, others)
        for _, o in ipairs(others) do assert.is_true(u.kill(o, 19)) end
        local c = srv:connect_unix(path)
        local code, text = c:cmd("NOOP")
        c:close()
        for _, o in ipairs(others) do assert.is_true(u.kill(o, 18)) end
        assert.equal(250, code, text)
        assert.equal("pid " .. pid, text)
      end
      local kids = u.wait_workers(srv, 2)
      u.wait_log(srv, "listening on unix:" .. path, 2)
      answers_alone(kids[1], { kids[2] })
      answers_alone(kids[2], { kids[1] })
      assert.is_true(u.kill(kids[1], 9))
      local again = u.wait_workers(srv, 2, { kids[1] })
      local new_pid = again[1] == kids[2] and again[2] or again[1]
      u.wait_log(srv, "listening on unix:" .. path, 3)
      answers_alone(new_pid, { kids[2] })
      -- the same file all along: no worker made its own
      assert.equal(inode, u.sh("stat -c %i " .. u.shell_quote(path)))
    end)
    u.stop(srv)
    srv = nil
    if not ok then error(err, 0) end
    assert.is_false(exists(path))
  end)

  it("LMTP on a UNIX socket: LHLO and one reply per recipient", function()
    local path = dir .. "/lmtp.sock"
    srv = testing.start{ args = { "--lmtp", "-l", "unix:" .. path },
      source = 'function handle_DATA(s, session, e) local t = {} for _, r in ipairs(e.rcpt_tos) do '
        .. 't[r] = "250 2.0.0 " .. r .. " " .. session.peer.host end return t end\n' }
    local c = srv:connect_unix(path)
    assert.equal(250, (c:cmd("LHLO client.test")))
    assert.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
    assert.equal(250, (c:cmd("RCPT TO:<b@example.org>")))
    assert.equal(250, (c:cmd("RCPT TO:<c@example.org>")))
    assert.equal(354, (c:cmd("DATA")))
    assert(c:send("Subject: x\r\n\r\nhi\r\n.\r\n"))
    assert.equal("2.0.0 b@example.org unix:" .. path, select(2, c:reply()))
    assert.equal("2.0.0 c@example.org unix:" .. path, select(2, c:reply()))
    c:close()
  end)
end)

-- HAProxy speaking PROXY v1 to luasmtpd's UNIX socket (`server ...
-- unix@PATH send-proxy`), as a load balancer in front of a local MTA does.
describe("UNIX-domain listener behind HAProxy", function()
  it("send-proxy to unix@PATH: the hook sees the TCP client HAProxy accepted", function()
    local haproxy = u.sh("command -v haproxy || ls /usr/sbin/haproxy 2>/dev/null"):match("^(/%S+)")
    assert.truthy(haproxy, "haproxy is not installed (tools/deps.sh installs it)")
    local dir = u.tempdir()
    local path = dir .. "/smtp.sock"
    local srv, pid
    local ok, err = pcall(function()
      srv = testing.start{ source = SOURCE, args = { "-l", "unix:" .. path, "--proxy-protocol=5" } }
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, port = s:getsockname()
      s:close()
      u.write_file(dir .. "/haproxy.cfg", table.concat({
        "global", "  maxconn 100", "defaults", "  mode tcp", "  timeout connect 5s",
        "  timeout client 30s", "  timeout server 30s", "frontend f", "  bind 127.0.0.1:" .. port,
        "  default_backend b", "backend b", "  server s unix@" .. path .. " send-proxy", "",
      }, "\n"))
      local p = assert(io.popen(u.shell_quote(haproxy) .. " -db -f " .. u.shell_quote(dir .. "/haproxy.cfg")
        .. " </dev/null >" .. u.shell_quote(dir .. "/haproxy.log") .. " 2>&1 & echo $!"))
      pid = tonumber(p:read("*l"))
      p:close()
      local c = u.wait_until(function() return testing.connect("127.0.0.1", tonumber(port)) end, 10,
        "haproxy to listen", function() return u.read_file(dir .. "/haproxy.log") end)
      assert.equal("220 mx.test luasmtpd 0.1.0", c.greeting)
      local _, lport = c.sock:getsockname()
      assert.equal("127.0.0.1 " .. lport, select(2, c:cmd("NOOP proxy")))
      assert.equal("unix:" .. path, select(2, c:cmd("NOOP peer")):match("^(%S+)"))
      assert.equal(221, (c:cmd("QUIT")))
      c:close()
    end)
    if pid and u.alive(pid) then
      u.kill(pid, 15)
      pcall(u.wait_until, function() return not u.alive(pid) end, 5, "haproxy to stop")
      if u.alive(pid) then u.kill(pid, 9) end
    end
    if srv then srv:stop() end
    u.rmdir(dir)
    if not ok then error(err, 0) end
  end)
end)
