-- smtpd.socket.tcp(), the cosockets of async-api.md 4, against a real peer
-- (spec/functional/socket_peer.py) on 127.0.0.1 and on a UNIX socket: each
-- method's result and error string, the keepalive pool, ownership and the
-- hook's cleanup scope, and what every wait kind must survive (another
-- client served during the wait, disconnect, hook_timeout, reload, many
-- waits with flat descriptors and memory). Order of events is asserted,
-- never elapsed time. TLS is in socket_tls_spec.lua.
local testing = require "smtpd.testing"
local hu = require "spec.functional.hostile_util"
local u = require "spec.functional.reload_util"
local su = require "spec.functional.socket_util"

-- Every case is one NOOP: "NOOP <case> <args>" runs T[case] in the hook,
-- whose return value is the reply text.
local TEMPLATE = [[
local smtpd = require "smtpd"
local PORT, UNIX, DEAD = %d, %q, %d
options = { auth_require_tls = false, hook_timeout = 3, socket_line_max = 100 }
local VERSION = "v1"
local T, G = {}, {}

local function open(timeout)
  local s = smtpd.socket.tcp()
  if timeout then s:settimeout(timeout) end
  assert(s:connect("127.0.0.1", PORT))
  return s
end
local function ask(s, line, pattern)
  assert(s:send(line .. "\n"))
  return s:receive(pattern)
end
local function show(...)
  local t = { ... }
  for i = 1, select("#", ...) do t[i] = tostring(t[i]) end
  return table.concat(t, "|")
end

function T.echo() local s = open(); local r = { ask(s, "ECHO hello world") }; s:close(); return show(unpack(r)) end
function T.crlf() local s = open(); local r = ask(s, "CRLF with cr"); s:close(); return show(r, #r) end
function T.lpattern() local s = open(); local r = ask(s, "ECHO x", "l"); s:close(); return r end
function T.array()
  local s = open()
  local n = s:send({ "EC", "HO ", "in ", "pieces", "\n" })
  local line = s:receive()
  s:close()
  return show(n, line)
end
function T.count()
  local s = open()
  assert(s:send("BYTES 10\n"))
  local a, b = s:receive(4), s:receive(6)
  local z = s:receive(0)
  s:close()
  return show(a, b, z == "")
end
function T.all() local s = open(); assert(s:send("ALL the rest\n")); return show(s:receive("*a")) end
function T.closed()
  local s = open()
  local r = { ask(s, "PARTIAL abc") }
  -- after "closed" the socket is closed
  local again = { s:send("ECHO x\n") }
  return show(unpack(r)) .. "/" .. show(unpack(again))
end
function T.closed_n() local s = open(); assert(s:send("PARTIAL abc\n")); return show(s:receive(10)) end
function T.hangup() local s = open(); return show(ask(s, "HANGUP")) end
T["until"] = function()
  local s = open()
  assert(s:send("UNTIL\n"))
  local it = s:receiveuntil("--sep--")
  local a, b = it(), it()
  s:close()
  return show(a, b)
end
function T.until_closed()
  local s = open()
  assert(s:send("PARTIAL abc-"))
  assert(s:send("-se\n"))
  local it = s:receiveuntil("--sep--")
  return show(it())
end
function T.refused()
  local s = smtpd.socket.tcp()
  local ok, err = s:connect("127.0.0.1", DEAD)
  return show(ok, err, s:getreusedtimes())
end
function T.refused_unix()
  local s = smtpd.socket.tcp()
  return show(s:connect("unix:" .. UNIX .. ".nobody"))
end
function T.name() local s = smtpd.socket.tcp(); return show(s:connect("mx.example.invalid", 25)) end
function T.unix()
  local s = smtpd.socket.tcp()
  assert(s:connect("unix:" .. UNIX))
  local r = ask(s, "ECHO over unix")
  s:close()
  return r
end
function T.v6()
  local s = smtpd.socket.tcp()
  return show(s:connect("[::1]", DEAD))
end
function T.timeout()
  local s = open(0.2)
  local r = { ask(s, "SILENT") }
  -- after a timeout the socket stays usable
  local again = ask(s, "ECHO still here")
  s:close()
  return show(unpack(r)) .. "/" .. again
end
function T.timeouts()
  local s = smtpd.socket.tcp()
  s:settimeouts(5, 5, 0.2)
  assert(s:connect("127.0.0.1", PORT))
  local r = { ask(s, "SILENT") }
  s:close()
  return show(unpack(r))
end
function T.toolong(arg)
  local s = open()
  local r = { ask(s, "LONG " .. arg) }
  -- after any error but a timeout the socket is closed
  local after = r[1] and "open" or show(s:send("ECHO x\n"))
  return show(#(r[1] or ""), r[2]) .. "/" .. after
end
function T.drip() local s = open(); local r = ask(s, "DRIP one byte at a time"); s:close(); return r end
function T.close_twice()
  local s = open()
  return show(s:close(), s:close())
end
function T.keep()
  local s = open()
  local id = ask(s, "ID")
  return show(id, s:getreusedtimes(), s:setkeepalive())
end
function T.reuse()
  local s = open()
  local id = ask(s, "ID")
  local n = s:getreusedtimes()
  return show(id, n, s:setkeepalive())
end
function T.pool_named()
  local s = smtpd.socket.tcp()
  assert(s:connect("127.0.0.1", PORT, { pool = "named" }))
  local id = ask(s, "ID")
  return show(id, s:getreusedtimes(), s:setkeepalive(10, 4))
end
function T.keep_timedout()
  local s = open(0.2)
  local id = ask(s, "ID")
  local r = { ask(s, "SILENT") }
  return show(id, r[2], s:setkeepalive())
end
function T.keep_unread()
  local s = open()
  local id = ask(s, "ID")
  local a = ask(s, "TWO a b")
  return show(id, a, s:setkeepalive())
end
function T.keep_unread_kernel()
  local s = open()
  assert(s:send("TWO a b\n"))
  -- exactly "a\n": a count reads no more than it misses, so "b\n" is still in the kernel
  local a = s:receive(2)
  return show(a == "a\n", s:setkeepalive())
end
function T.keep_later()
  local s = open()
  local id = ask(s, "ID")
  local ok = ask(s, "LATER")
  return show(id, ok, s:setkeepalive())
end
function T.after_keep()
  local s = open()
  assert(s:setkeepalive())
  return show(s:send("x"))
end
local PIECE = ("0123456789"):rep(1000)
function T.sink(arg)
  local s = open()
  local n = tonumber(arg)
  local pieces = {}
  for i = 1, n / #PIECE do pieces[i] = PIECE end
  assert(s:send("SINK " .. n .. "\n"))
  local sent, err = s:send(pieces)
  local r = { s:receive() }
  s:close()
  return show(sent, err, unpack(r))
end
-- An array of digits (numbers and strings) with one big piece inside:
-- gathered while it fits, sent piece by piece after; the peer checks the
-- bytes spell "0123456789..." in order.
function T.sink_mixed(arg)
  local s = open()
  local pieces = {}
  for _ = 1, tonumber(arg) do
    for d = 0, 9 do pieces[#pieces + 1] = math.fmod(d, 2) == 0 and d or tostring(d) end
    if #pieces == 4000 then pieces[#pieces + 1] = PIECE end
  end
  local n = 0
  for _, p in ipairs(pieces) do n = n + #tostring(p) end
  assert(s:send("SINK " .. n .. "\n"))
  local sent, err = s:send(pieces)
  local r = { s:receive() }
  s:close()
  return show(sent, err, unpack(r))
end
function T.send_timeout()
  local s = open()
  s:settimeouts(5, 0.3, 5)
  assert(s:send("STOPREAD\n"))
  local big = ("x"):rep(1024 * 1024)
  local r
  for _ = 1, 64 do
    r = { s:send(big) }
    if not r[1] then break end
  end
  return show(r[1], r[2], s:setkeepalive())
end
function T.hold()
  G.sock, G.stolen = open(), false
  assert(G.sock:send("ECHO held\n"))
  -- waits until the other session has tried (bounded)
  for _ = 1, 200 do
    if G.stolen then break end
    smtpd.sleep(0.05)
  end
  return show(G.sock:receive())
end
function T.steal()
  local ok, err = pcall(G.sock.send, G.sock, "ECHO stolen\n")
  G.stolen = true
  return show(ok, err)
end
function T.park() local s = open(); local r = ask(s, "PARK"); s:close(); return VERSION .. " " .. r end
function T.leak() local s = open(); return ask(s, "ID") end
function T.wait(arg)
  local s = open(tonumber(arg) or 30)
  return VERSION .. " " .. show(ask(s, "SILENT"))
end
function T.ver() return VERSION end
function T.bad_args(arg)
  local s = smtpd.socket.tcp()
  local f = ({
    function() s:connect("127.0.0.1", 0) end,
    function() s:connect("127.0.0.1") end,
    function() s:connect({}) end,
    function() s:receive("*x") end,
    function() s:send(true) end,
    function() s:send({ "a", {} }) end,
    function() s:settimeout(-1) end,
    function() s:receiveuntil("") end,
    function() s:setkeepalive(1, 0) end,
    function() s:connect("unix:" .. ("p"):rep(200)) end,
    function() s:connect("127.0.0.1", PORT, { pool = 1 }) end,
  })[tonumber(arg)]
  local ok, err = pcall(f)
  return ok and "ok" or tostring(err)
end
function T.loop(arg)
  local n = tonumber(arg)
  for i = 1, n do
    local s = smtpd.socket.tcp()
    assert(s:connect("127.0.0.1", PORT))
    local r = ask(s, "ECHO " .. i)
    assert(r == tostring(i), r)
    if i %% 10 == 0 then s:close() else assert(s:setkeepalive()) end
  end
  return "looped " .. n
end

function handle_NOOP(server, session, envelope, arg)
  local case, rest = (arg or ""):match("^(%%S+)%%s*(.*)$")
  if not T[case] then return "250 OK" end
  return "250 " .. T[case](rest)
end
]]

local function source(p, dead)
  return TEMPLATE:format(p.port, p.unix, dead)
end

local function noop(c, line, timeout)
  assert(c:send("NOOP " .. line .. "\r\n"))
  local code, text = c:reply(timeout or 10)
  return text, code
end

describe("smtpd.socket.tcp", function()
  local peer, srv, dead
  setup(function()
    peer = su.peer{ unix = true }
    dead = hu.free_port()
    srv = testing.start{ source = source(peer, dead) }
  end)
  teardown(function()
    local status = srv and srv:stop()
    su.stop(peer)
    -- a clean exit: under the sanitizers, no leak or error report either
    if srv then assert.equal(0, status, srv:stderr():sub(-3000)) end
  end)

  local function one(line)
    local c = srv:connect()
    local text, code = noop(c, line)
    c:close()
    assert.equal(250, code, text)
    return text
  end

  it("connect, send and receive a line (LF or CRLF stripped, 'l' = '*l')", function()
    assert.equal("hello world", one("echo"))
    assert.equal("with cr|7", one("crlf"))
    assert.equal("x", one("lpattern"))
  end)

  it("send takes an array of strings and returns the bytes sent", function()
    assert.equal("15|in pieces", one("array"))
  end)

  it("a send bigger than the socket takes waits until the peer has read it all, in order", function()
    assert.equal("4000000|nil|ok 4000000", one("sink 4000000"))
  end)

  it("an array of numbers and strings is sent in order, gathered or not", function()
    -- 10 bytes: gathered in one pass; 7,000 + a 10,000-byte piece: more than one gather
    assert.equal("10|nil|ok 10", one("sink_mixed 1"))
    assert.equal("17000|nil|ok 17000", one("sink_mixed 700"))
  end)

  it("a send the peer never reads times out; the socket is then never pooled", function()
    assert.equal("nil|timeout|nil|timeout", one("send_timeout"))
  end)

  it("receive(n) returns exactly n bytes; receive(0) is empty", function()
    assert.equal("xxxx|xxxxxx|true", one("count"))
  end)

  it("receive('*a') reads until the peer closes", function()
    assert.equal("the rest", one("all"))
  end)

  it("a peer that closes mid-line: nil, 'closed', the partial data; the socket is closed", function()
    assert.equal("nil|closed|abc/nil|closed", one("closed"))
    assert.equal("nil|closed|abc", one("closed_n"))
    assert.equal("nil|closed|", one("hangup"))
  end)

  it("receiveuntil returns an iterator over delimited data", function()
    assert.equal("one|two", one("until"))
    -- a delimiter split over two writes is still found; the peer closing first is 'closed'
    assert.equal("nil|closed|abc--se", one("until_closed"))
  end)

  it("connection refused (TCP, IPv6, UNIX), name not found", function()
    assert.equal("nil|connection refused|0", one("refused"))
    assert.equal("nil|connection refused", one("refused_unix"))
    assert.equal("nil|name not found", one("name"))
    local v6 = one("v6")
    -- ::1 may be absent from a container's loopback: then the kernel says no route
    assert.truthy(v6 == "nil|connection refused" or v6 == "nil|no route"
      or v6 == "nil|address family not supported by protocol", v6)
  end)

  it("connects to a UNIX socket", function()
    assert.equal("over unix", one("unix"))
  end)

  it("timeout: nil, 'timeout', partial; the socket stays usable", function()
    assert.equal("nil|timeout|/still here", one("timeout"))
    assert.equal("nil|timeout|", one("timeouts"))
  end)

  it("a line over socket_line_max is 'line too long'; one of exactly that length is fine", function()
    assert.equal("100|nil/open", one("toolong 100"))
    assert.equal("0|line too long/nil|closed", one("toolong 101"))
    assert.equal("0|line too long/nil|closed", one("toolong 5000"))
  end)

  it("input that arrives one byte per write is assembled", function()
    assert.equal("one byte at a time", one("drip"))
  end)

  it("close returns true, then nil, 'closed'", function()
    assert.equal("true|nil|closed", one("close_twice"))
  end)

  it("bad arguments raise readable errors", function()
    for i, want in ipairs{
      "expected a port number 1-65535", "bad argument #2 to 'connect' (number expected, got no value)",
      "bad argument #1 to 'connect' (string expected, got table)",
      "expected \"*l\", \"*a\" or a byte count", "expected a string or an array of strings",
      "expected an array of strings, got table at [2]", "expected a number of seconds >= 0",
      "the pattern must not be empty", "expected a pool size >= 1",
      "a unix socket path must be 1-107 bytes", "sock:connect: pool must be a string",
    } do
      local text = one("bad_args " .. i)
      assert.truthy(text:find(want, 1, true), want .. "\n" .. text)
    end
    -- raised at the script's line (error(msg, 2) style), not inside C
    assert.truthy(one("bad_args 1"):find("handler%.lua:%d+: bad argument #2 to 'connect' %(expected a port"),
      one("bad_args 1"))
    assert.truthy(one("bad_args 11"):find("handler%.lua:%d+: sock:connect: pool must be a string"),
      one("bad_args 11"))
  end)

  it("setkeepalive pools the connection: the next hook reuses it (getreusedtimes)", function()
    local first = one("keep")
    local id = first:match("^(%d+)|0|true$")
    assert.truthy(id, first)
    -- a second session's hook gets the same connection back
    assert.equal(id .. "|1|true", one("reuse"))
    assert.equal(id .. "|2|true", one("reuse"))
    -- a named pool is a pool of its own
    local named = one("pool_named")
    assert.truthy(named:match("^(%d+)|0|true$"), named)
    assert.are_not.equal(id, named:match("^%d+"))
    assert.equal(named:match("^%d+") .. "|1|true", one("pool_named"))
  end)

  it("a socket that timed out or has unread data is closed, never pooled", function()
    local t = one("keep_timedout")
    local tid = t:match("^(%d+)|timeout|nil|timeout$")
    assert.truthy(tid, t)
    local r = one("reuse")
    assert.are_not.equal(tid, r:match("^%d+"), r)
    assert.equal("true|nil|unread data", one("keep_unread_kernel"))
    local n = one("keep_unread")
    local nid = n:match("^(%d+)|a|nil|unread data$")
    assert.truthy(nid, n)
    r = one("reuse")
    assert.are_not.equal(nid, r:match("^%d+"), r)
  end)

  it("an idle pooled connection the peer closes is dropped, never handed out", function()
    local r = one("keep_later")
    local id = r:match("^(%d+)|ok|true$")
    assert.truthy(id, r)
    su.wait_log(peer, "close " .. id)
    r = one("reuse")
    assert.are_not.equal(id, r:match("^%d+"), r)
  end)

  it("after setkeepalive the object is unusable", function()
    assert.equal("nil|closed", one("after_keep"))
  end)

  it("a socket belongs to the hook that made it: another session gets an error", function()
    local a, b = srv:connect(), srv:connect()
    local opened = hu.count(su.log(peer), "got ")
    assert(a:send("NOOP hold\r\n"))
    -- the holder's connection has its request before the other session looks
    su.wait_log(peer, "ECHO held", 1)
    local text = noop(b, "steal")
    assert.truthy(text:find("false|", 1, true) and text:find("socket belongs to another session", 1, true), text)
    local code, held = a:reply(10)
    assert.equal(250, code)
    assert.equal("held", held)
    a:close()
    b:close()
    assert.truthy(hu.count(su.log(peer), "got ") > opened)
  end)

  it("a socket left open when its hook returns is closed (the peer sees it)", function()
    local id = one("leak")
    su.wait_log(peer, "close " .. id)
  end)

  it("another client's NOOP is answered while a hook waits on a socket", function()
    local a, b = srv:connect(), srv:connect()
    local before = hu.count(su.log(peer), "PARK")
    assert(a:send("NOOP park\r\n"))
    su.wait_log(peer, "PARK", before + 1)
    local code, text = b:cmd("NOOP")
    assert.equal(250, code)
    assert.equal("OK", text)
    -- the parked hook has not answered: its peer has said nothing yet
    assert.is_nil((a:reply(0.05)), "the waiting hook answered before its peer did")
    assert.equal(1, su.release(peer))
    local acode, atext = a:reply(10)
    assert.equal(250, acode)
    assert.equal("v1 released", atext)
    a:close()
    b:close()
  end)

  it("a client that disconnects mid-wait: the wait is cancelled and its socket closed", function()
    local before = hu.count(su.log(peer), "SILENT")
    local a = srv:connect()
    assert(a:send("NOOP wait 30\r\n"))
    su.wait_log(peer, "SILENT", before + 1)
    local id = su.log(peer):match(".*got (%d+) SILENT")
    a:close()
    hu.wait_log(srv, "abandoning suspended hook handle_NOOP")
    su.wait_log(peer, "close " .. id)
    local b = srv:connect()
    assert.equal(250, (b:cmd("NOOP")))
    b:close()
  end)

  it("hook_timeout mid-wait fails the command with 451 and closes the socket", function()
    local before = hu.count(su.log(peer), "SILENT")
    local c = srv:connect()
    local text, code = noop(c, "wait 30")
    assert.equal(451, code, text)
    hu.wait_log(srv, "handle_NOOP still waiting for sock:receive after hook_timeout (3 s)")
    local id = su.log(peer):match(".*got (%d+) SILENT")
    assert.truthy(hu.count(su.log(peer), "SILENT") > before)
    su.wait_log(peer, "close " .. id)
    assert.equal(250, (c:cmd("NOOP")))
    c:close()
  end)
end)

describe("smtpd.socket.tcp idle pool", function()
  it("an idle pooled connection the peer closes is closed at once, without a hook asking", function()
    local peer = su.peer{ unix = true }
    local srv = testing.start{ source = source(peer, hu.free_port()) }
    local ok, err = pcall(function()
      local c = srv:connect()
      local r = noop(c, "keep_later")
      local id = r:match("^(%d+)|ok|true$")
      assert.truthy(id, r)
      -- the session stays open: the only descriptor to go is the pooled one
      local before = hu.fd_count(srv.pid)
      su.wait_log(peer, "close " .. id)
      hu.wait_until(function() return hu.fd_count(srv.pid) == before - 1 end, 10,
        "the pooled descriptor closed", function() return hu.sh("ls -l /proc/" .. srv.pid .. "/fd") end)
      assert.equal(250, (c:cmd("NOOP")))
      c:close()
    end)
    local status = srv:stop()
    su.stop(peer)
    if not ok then error(err, 0) end
    assert.equal(0, status, srv:stderr())
  end)
end)

describe("smtpd.socket.tcp in AUTH", function()
  it("hook_timeout while an authenticator waits on a socket is 454", function()
    local peer = su.peer{}
    local srv = testing.start{ source = ([[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = 1 }
function authenticator(server, session, envelope, mechanism, auth_data)
  local s = smtpd.socket.tcp()
  assert(s:connect("127.0.0.1", %d))
  assert(s:send("SILENT\n"))
  s:receive()
  return smtpd.AuthResult{ success = true }
end
]]):format(peer.port) }
    local ok, err = pcall(function()
      local c = srv:connect()
      c:cmd("EHLO client.test")
      local code, text = c:auth_plain("alice", "s3cret")
      assert.equal(454, code, text)
      hu.wait_log(srv, "still waiting for sock:receive after hook_timeout")
      su.wait_log(peer, "close 1")
      c:close()
    end)
    srv:stop()
    su.stop(peer)
    if not ok then error(err, 0) end
  end)
end)

describe("smtpd.socket.tcp across a reload", function()
  local peer, srv
  after_each(function()
    u.stop(srv)
    srv = nil
    su.stop(peer)
  end)

  it("a wait in progress when SIGHUP arrives completes on its generation; its pool is closed", function()
    peer = su.peer{ unix = true }
    local src = source(peer, hu.free_port())
    srv = u.start{ source = src }
    local k = srv:connect()
    -- an idle pooled connection of its own pool, which the waiting hook does not take
    local kept = noop(k, "pool_named")
    local kept_id = kept:match("^(%d+)|0|true$")
    assert.truthy(kept_id, kept)
    k:close()
    local a = srv:connect()
    local before = hu.count(su.log(peer), "PARK")
    assert(a:send("NOOP park\r\n"))
    su.wait_log(peer, "PARK", before + 1)
    u.write_file(srv.script, (src:gsub('local VERSION = "v1"', 'local VERSION = "v2"', 1)))
    srv:signal("HUP")
    u.wait_log(srv, "loaded (policy generation 2)")
    -- the retired generation's idle pooled connection is closed
    su.wait_log(peer, "close " .. kept_id)
    -- only now does the peer answer: the wait spans the reload
    assert.equal(1, su.release(peer))
    local code, text = a:reply(10)
    assert.equal(250, code)
    assert.equal("v1 released", text)
    a:close()
    local b = srv:connect()
    assert.equal("v2", (noop(b, "ver")))
    -- the new generation starts with an empty pool
    local fresh = noop(b, "pool_named")
    assert.truthy(fresh:match("^%d+|0|true$"), fresh)
    b:close()
  end)
end)

describe("smtpd.socket.tcp under load", function()
  it("descriptors and RSS are flat after 10,000 round trips", function()
    local peer = su.peer{ unix = true }
    local srv = testing.start{ source = source(peer, hu.free_port()) }
    local ok, err = pcall(function()
      local c = srv:connect()
      -- warm up: the pool, the allocator, LuaJIT's traces
      assert.equal("looped 500", (noop(c, "loop 500", 60)))
      collectgarbage()
      local fd_before, rss_before = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
      for _ = 1, 20 do
        assert.equal("looped 500", (noop(c, "loop 500", 60)))
      end
      c:close()
      -- closed connections leave; the pool keeps at most its few
      hu.wait_until(function() return hu.fd_count(srv.pid) <= fd_before + 2 end, 10,
        "descriptors back", function() return hu.sh("ls -l /proc/" .. srv.pid .. "/fd") end)
      local rss_after = hu.rss_kib(srv.pid)
      assert(hu.sanitized(srv.pid) or rss_after - rss_before < 4096,
        ("VmRSS %d KiB before, %d KiB after"):format(rss_before, rss_after))
    end)
    srv:stop()
    su.stop(peer)
    if not ok then error(err, 0) end
  end)
end)

describe("option socket_line_max", function()
  it("refuses 0 and values that are not sizes, with the option's name", function()
    local status, out = testing.check{ source = "options = { socket_line_max = 0 }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'socket_line_max' must be at least 1 byte", 1, true), out)
    status, out = testing.check{ source = "options = { socket_line_max = true }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("socket_line_max", 1, true) and out:find("a size in bytes", 1, true), out)
    status, out = testing.check{ source = "options = { socket_line_max = \"64k\" }\n" }
    assert.equal(0, status, out)
  end)
end)

describe("smtpd.socket.tcp where no hook runs", function()
  it("the script's top level may make a socket but not wait on it: the load fails readably", function()
    local status, out = testing.check{ source = [[
local s = require("smtpd").socket.tcp()
assert(tostring(s) == "smtpd.socket.tcp (closed)")
s:settimeouts(1, 1, 1)
s:connect("127.0.0.1", 9)
]] }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("sock:connect: cannot wait while the script loads", 1, true), out)
  end)
end)
