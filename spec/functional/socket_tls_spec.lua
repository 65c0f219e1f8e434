-- sock:sslhandshake (async-api.md 4): the mbedTLS client against a real TLS
-- peer (socket_peer.py with a certificate from a CA the spec makes): verify
-- against a cafile, the errors for a wrong name and an unknown CA,
-- verify = false, session resumption seen by the peer, close_notify, large
-- writes, a handshake the peer never answers (timeout, disconnect,
-- hook_timeout), and a keepalive pool keyed by every TLS setting.
local testing = require "smtpd.testing"
local hu = require "spec.functional.hostile_util"
local su = require "spec.functional.socket_util"

local TEMPLATE = [[
local smtpd = require "smtpd"
local PORT, CA, OTHER_CA = %d, %q, %q
options = { auth_require_tls = false, hook_timeout = 3 }
local T, G = {}, {}

local function show(...)
  local t = { ... }
  for i = 1, select("#", ...) do t[i] = tostring(t[i]) end
  return table.concat(t, "|")
end
local function open(opts)
  local s = smtpd.socket.tcp()
  assert(s:connect("127.0.0.1", PORT))
  local sess, err = s:sslhandshake(opts)
  return s, sess, err
end
local function ask(s, line)
  assert(s:send(line .. "\n"))
  return s:receive()
end

function T.verified()
  local s, sess, err = open{ server_name = "localhost", cafile = CA }
  if not sess then return show(nil, err) end
  local r = ask(s, "ECHO over tls")
  s:close()
  return show(tostring(sess), r)
end
function T.wrong_name() return show(select(2, open{ server_name = "other.test", cafile = CA })) end
function T.unknown_ca() return show(select(2, open{ server_name = "localhost", cafile = OTHER_CA })) end
function T.system_ca() return show(select(2, open{ server_name = "localhost" })) end
function T.no_name() return show(select(2, open{ cafile = CA })) end
function T.bad_cafile() return show(select(2, open{ server_name = "localhost", cafile = "/nonexistent/ca.pem" })) end
function T.noverify()
  local s, sess, err = open{ verify = false }
  if not sess then return show(nil, err) end
  local r = ask(s, "ECHO unverified")
  s:close()
  return r
end
local PIECE = ("0123456789"):rep(1000)
function T.sink(arg)
  local s = open{ verify = false }
  local n = tonumber(arg)
  local pieces = {}
  for i = 1, n / #PIECE do pieces[i] = PIECE end
  assert(s:send("SINK " .. n .. "\n"))
  local sent, err = s:send(pieces)
  local r = { s:receive() }
  s:close()
  return show(sent, err, unpack(r))
end
function T.resume()
  local s, sess = open{ server_name = "localhost", cafile = CA }
  local id1 = ask(s, "ID")
  s:close()
  local s2, sess2, err = open{ server_name = "localhost", cafile = CA, session = sess }
  if not sess2 then return show(nil, err) end
  local id2 = ask(s2, "ID")
  s2:close()
  return show(id1, id2)
end
function T.swap_resume()
  local s, sess = open{ server_name = "localhost", cafile = CA }
  ask(s, "ID")
  s:close()
  -- a plain connection idles in pool "swap"
  local p = smtpd.socket.tcp()
  assert(p:connect("127.0.0.1", PORT, { pool = "swap" }))
  assert(p:setkeepalive())
  local s2 = smtpd.socket.tcp()
  assert(s2:connect("127.0.0.1", PORT, { pool = "swap" }))
  local taken = s2:getreusedtimes()
  -- other TLS settings than the pooled one has: a fresh connection, offering sess
  local sess2, err = s2:sslhandshake{ server_name = "localhost", cafile = CA, session = sess }
  if not sess2 then return show(nil, err) end
  local id = ask(s2, "ID")
  local reused = s2:getreusedtimes()
  s2:close()
  return show(taken, reused, id)
end
function T.keep(arg)
  local opts = arg == "noverify" and { verify = false } or { server_name = "localhost", cafile = CA }
  local s, sess, err = open(opts)
  if not sess then return show(nil, err) end
  local id = ask(s, "ID")
  return show(id, s:getreusedtimes(), s:setkeepalive())
end
function T.bad_args(arg)
  local s = smtpd.socket.tcp()
  assert(s:connect("127.0.0.1", PORT))
  local f = ({
    function() s:sslhandshake{ verify = "no" } end,
    function() s:sslhandshake{ server_name = 1 } end,
    function() s:sslhandshake{ session = {} } end,
    function() s:sslhandshake(5) end,
  })[tonumber(arg)]
  local ok, err = pcall(f)
  s:close()
  return ok and "ok" or tostring(err)
end
function T.twice()
  local s = open{ verify = false }
  local ok, err = pcall(s.sslhandshake, s, { verify = false })
  s:close()
  return show(ok, err)
end
function T.silent(arg)
  -- a plain peer port that never answers the hello
  local s = smtpd.socket.tcp()
  s:settimeout(tonumber(arg) or 0.3)
  assert(s:connect("127.0.0.1", tonumber(G.plain)))
  return show(s:sslhandshake{ verify = false })
end
function T.plain(arg) G.plain = arg; return "ok" end

function handle_NOOP(server, session, envelope, arg)
  local case, rest = (arg or ""):match("^(%%S+)%%s*(.*)$")
  if not T[case] then return "250 OK" end
  return "250 " .. T[case](rest)
end
]]

describe("sock:sslhandshake", function()
  local peer, plain, srv, ca, other
  setup(function()
    ca = testing.make_cert{ cn = "Socket Test CA", is_ca = true, alg = "ec" }
    local leaf = testing.make_cert{ cn = "localhost", ca = ca, dir = ca.dir, name = "leaf", alg = "ec" }
    other = testing.make_cert{ cn = "Other CA", is_ca = true, alg = "ec" }
    peer = su.peer{ tls = leaf }
    plain = su.peer{}
    srv = testing.start{ source = TEMPLATE:format(peer.port, ca.cert, other.cert) }
  end)
  teardown(function()
    local status = srv and srv:stop()
    su.stop(peer)
    su.stop(plain)
    if ca then hu.rmdir(ca.dir) end
    if other then hu.rmdir(other.dir) end
    -- a clean exit: under the sanitizers, no leak or error report either
    if srv then assert.equal(0, status, srv:stderr():sub(-3000)) end
  end)

  local function one(line)
    local c = srv:connect()
    assert(c:send("NOOP " .. line .. "\r\n"))
    local code, text = c:reply(10)
    c:close()
    assert.equal(250, code, text)
    return text
  end

  it("verifies the peer against cafile and the name, returns a session, carries data", function()
    assert.equal("smtpd.socket.session|over tls", one("verified"))
  end)

  it("a wrong name or an unknown CA is 'certificate verify failed: ...'", function()
    local r = one("wrong_name")
    assert.truthy(r:find("^nil|certificate verify failed: ") and r:find("CN", 1, true), r)
    r = one("unknown_ca")
    assert.truthy(r:find("^nil|certificate verify failed: ") and r:find("trusted CA", 1, true), r)
    -- the system bundle does not know the spec's CA either
    r = one("system_ca")
    assert.truthy(r:find("^nil|certificate verify failed: "), r)
  end)

  it("verify without a name to check is refused; an unreadable cafile is an error", function()
    assert.equal("nil|certificate verify failed: no server_name to check the certificate against",
      one("no_name"))
    local r = one("bad_cafile")
    assert.truthy(r:find("^nil|cannot read CA file /nonexistent/ca.pem"), r)
  end)

  it("verify = false written out accepts any certificate", function()
    assert.equal("unverified", one("noverify"))
  end)

  it("a send bigger than the socket takes goes out whole and in order over TLS", function()
    -- mbedTLS holds the record of a write that would block: it is repeated with the same bytes
    assert.equal("4000000|nil|ok 4000000", one("sink 4000000"))
  end)

  it("a session passed back resumes: the peer sees a reused session", function()
    local before = hu.count(su.log(peer), " reused")
    local r = one("resume")
    local id1, id2 = r:match("^(%d+)|(%d+)$")
    assert.truthy(id1, r)
    su.wait_log(peer, "tls " .. id2 .. " reused")
    assert.truthy(su.log(peer):find("tls " .. id1 .. " new", 1, true))
    assert.equal(before + 1, hu.count(su.log(peer), " reused"))
  end)

  it("a pooled connection made for other TLS settings is swapped for a fresh one, which offers the session", function()
    local r = one("swap_resume")
    local id = r:match("^1|0|(%d+)$")
    assert.truthy(id, r)
    su.wait_log(peer, "tls " .. id .. " reused")
  end)

  it("close sends close_notify: the peer sees an orderly end", function()
    one("noverify")
    local id = su.log(peer):match(".*got (%d+) ECHO unverified")
    su.wait_log(peer, "close " .. id)
    assert.truthy(su.log(peer):find("last-record " .. id .. " 21\n", 1, true), su.log(peer))
  end)

  it("the pool is keyed by the TLS settings: a verified connection never serves verify = false", function()
    local a = one("keep")
    local id = a:match("^(%d+)|0|true$")
    assert.truthy(id, a)
    local b = one("keep")
    assert.equal(id .. "|1|true", b)
    -- other TLS settings: not that connection
    local c = one("keep noverify")
    local cid = c:match("^(%d+)|0|true$")
    assert.truthy(cid, c)
    assert.are_not.equal(id, cid)
    -- and each settings' connection is still there for its own kind
    assert.equal(id .. "|2|true", one("keep"))
    assert.equal(cid .. "|1|true", one("keep noverify"))
  end)

  it("bad arguments raise readable errors; a second handshake raises", function()
    for i, want in ipairs{ "verify must be a boolean, got string", "server_name must be a string, got number",
        "session must be what a handshake returned, got table", "table expected, got number" } do
      local r = one("bad_args " .. i)
      assert.truthy(r:find(want, 1, true), want .. "\n" .. r)
    end
    local r = one("twice")
    assert.truthy(r:find("false|", 1, true) and r:find("the connection is in TLS already", 1, true), r)
  end)

  it("a handshake the peer never answers times out", function()
    assert.equal("ok", one("plain " .. plain.port))
    assert.equal("nil|timeout", one("silent"))
  end)

  it("a client that disconnects mid-handshake: the wait is cancelled, the peer sees the close", function()
    assert.equal("ok", one("plain " .. plain.port))
    local before = hu.count(su.log(plain), "open ")
    local c = srv:connect()
    assert(c:send("NOOP silent 30\r\n"))
    su.wait_log(plain, "open ", before + 1)
    local id = su.log(plain):match(".*open (%d+)")
    c:close()
    hu.wait_log(srv, "abandoning suspended hook handle_NOOP")
    su.wait_log(plain, "close " .. id)
  end)

  it("hook_timeout mid-handshake is 451, logged with what it waited for", function()
    assert.equal("ok", one("plain " .. plain.port))
    local c = srv:connect()
    assert(c:send("NOOP silent 30\r\n"))
    local code = c:reply(10)
    assert.equal(451, code)
    hu.wait_log(srv, "handle_NOOP still waiting for sock:sslhandshake after hook_timeout (3 s)")
    c:close()
  end)
end)
