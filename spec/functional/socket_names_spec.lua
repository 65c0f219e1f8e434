-- sock:connect to a host name (async-api.md 4 and 5): the name goes through
-- the process's c-ares resolver and its cache (dnsmasq on a loopback port,
-- started by the spec), its A then AAAA addresses are tried in order, and
-- the wait is the socket's own (connect timeout, hook_timeout, disconnect,
-- reload). "localhost" and cached names connect without waiting for DNS.
-- Order of events is asserted, never elapsed time.
local socket = require "socket"
local testing = require "smtpd.testing"
local du = require "spec.functional.dns_util"
local su = require "spec.functional.socket_util"
local u = require "spec.functional.reload_util"

-- NOOP <name> <port> [timeout|quiet]: connect, then one ECHO round trip
-- (none when "quiet").
local SOURCE = [[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = %s }
local VERSION = "v1"
function handle_NOOP(server, session, envelope, arg)
  if not arg or arg == "" then return "250 OK plain" end
  local name, port, t = arg:match("^(%%S+) (%%d+) ?(%%S*)$")
  local s = smtpd.socket.tcp()
  s:settimeouts(tonumber(t) or 5, 5, 5)
  local ok, err = s:connect(name, tonumber(port))
  if not ok then return "250 " .. VERSION .. " nil " .. tostring(err) end
  local reply = "connected"
  if t ~= "quiet" then
    s:send("ECHO via " .. name .. "\n")
    reply = tostring(s:receive())
  end
  s:close()
  return "250 " .. VERSION .. " " .. reply
end
]]

local EXTRA = { "--host-record=peer.example.test,127.0.0.1",
  -- A first (nothing listens on 127.0.0.3), then AAAA
  "--host-record=v6.example.test,127.0.0.3,::1" }

local function text(c, line, timeout)
  local code, t = c:cmd(line, timeout)
  return code and (code .. " " .. t) or ("no reply: " .. tostring(t))
end

describe("sock:connect to a name", function()
  local dns, peer, srv, c
  setup(function()
    dns = du.start_dnsmasq(EXTRA)
    peer = su.peer()
    srv = testing.start{ source = SOURCE:format("3"),
      options = { resolver = "127.0.0.1:" .. dns.port, resolver_timeout = 2 } }
    c = srv:connect()
  end)
  teardown(function()
    if c then c:close() end
    if srv then srv:stop() end
    if peer then su.stop(peer) end
    if dns then dns.close() end
  end)

  it("resolves through the resolver and talks to the address it found", function()
    assert.equal("250 v1 via peer.example.test",
      text(c, ("NOOP peer.example.test %d"):format(peer.port)))
  end)

  it("connects to localhost without a query", function()
    assert.equal("250 v1 via localhost", text(c, ("NOOP localhost %d"):format(peer.port)))
  end)

  it("tries the A address first, then the AAAA one", function()
    local l6 = assert(socket.tcp6())
    assert(l6:setoption("reuseaddr", true))
    assert(l6:bind("::1", 0))
    assert(l6:listen(8))
    local _, port = l6:getsockname()
    -- 127.0.0.3 refuses (nothing listens there); ::1 takes the connection
    assert.equal("250 v1 connected", text(c, "NOOP v6.example.test " .. port .. " quiet"), srv:stderr())
    l6:settimeout(5)
    local a = assert(l6:accept())
    a:close()
    l6:close()
  end)

  it("a name that does not exist: nil, 'name not found'", function()
    assert.equal("250 v1 nil name not found", text(c, "NOOP nosuch.example.test 25"))
  end)

  it("answers from the cache once dnsmasq is gone", function()
    assert.equal("250 v1 via peer.example.test",
      text(c, ("NOOP peer.example.test %d"):format(peer.port)))
    dns.stop()
    assert.equal("250 v1 via peer.example.test",
      text(c, ("NOOP peer.example.test %d"):format(peer.port)))
  end)
end)

describe("sock:connect to a name while the resolver is silent", function()
  local quiet, qport, srv
  setup(function()
    quiet, qport = du.silent_server()
    srv = testing.start{ source = SOURCE:format("1"),
      options = { resolver = "127.0.0.1:" .. qport, resolver_timeout = 30 } }
  end)
  teardown(function()
    if srv then srv:stop() end
    if quiet then quiet:close() end
  end)

  it("the connect timeout ends the lookup: nil, 'timeout'", function()
    local c = srv:connect()
    -- the hook_timeout (1 s) is longer than this connect timeout
    assert.equal("250 v1 nil timeout", text(c, "NOOP slow1.example.test 25 0.3"))
    c:close()
  end)

  it("another client is served while the lookup waits; hook_timeout then fails the step with 451", function()
    local a, b = srv:connect(), srv:connect()
    assert(a:send("NOOP slow2.example.test 25 10\r\n"))
    -- the lookup is under way (the query reached the silent server) ...
    quiet:settimeout(10)
    assert(quiet:receivefrom(), "the query reached the resolver")
    -- ... and b is answered meanwhile
    assert.equal("250 OK plain", text(b, "NOOP"))
    local code = a:reply(10)
    assert.equal(451, code)
    a:close()
    b:close()
  end)

  it("a client that disconnects mid-lookup leaves the server serving", function()
    local a = srv:connect()
    assert(a:send("NOOP slow3.example.test 25 10\r\n"))
    assert(quiet:receivefrom(), "the query reached the resolver")
    a:close()
    local b = srv:connect()
    assert.equal("250 v1 nil timeout", text(b, "NOOP slow4.example.test 25 0.2"))
    b:close()
    assert.truthy(u.alive(srv.pid))
  end)
end)
