-- smtpd.redis inside the real server, against a real redis-server on a
-- free loopback port: the client is embedded in the binary and reached as
-- a field of the smtpd module; a hook's call waits on the cosockets while
-- other clients are served; a disconnect, hook_timeout (451 / 454 in AUTH)
-- and a reload act on a call in progress; pooled connections are reused;
-- descriptors and RSS stay flat over 10,000 calls. Redis's BLPOP holds a
-- call open for as long as a case needs, and CLIENT LIST shows from
-- Redis's side when the server has closed a connection. The protocol
-- itself is spec/bindings/redis_spec.lua's. Order of events, never elapsed
-- time, is what these cases assert.
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"
local hu = require "spec.functional.hostile_util"
local ru = require "spec.bindings.redis_util"

local EMBEDDED = [[
local smtpd = require "smtpd"
local redis = require "smtpd.redis"
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  if arg == "module" then
    return "250 " .. tostring(smtpd.redis == redis) .. " " .. type(redis.connect) .. " " .. tostring(smtpd.null)
  end
  if arg == "badopt" then redis.connect{ passwd = "x" } end
  if arg == "probe" then return "250 " .. type(smtpd.socket) end
  return "250 OK"
end
]]

describe("smtpd.redis in the server", function()
  h.run{
    { name = "the embedded module is smtpd.redis, and smtpd.null shows as null",
      source = EMBEDDED,
      dialogue = { h.ehlo, { "NOOP module", "250 true function null" } } },

    { name = "a bad option raises a readable error: a hook error",
      source = EMBEDDED,
      dialogue = { h.ehlo, { "NOOP badopt", "451 4.3.0 Error: local error in processing" } },
      stderr_has = { "handler.lua:8: smtpd.redis.connect: unknown option passwd" } },
  }
end)

-- Whether this build has the cosockets smtpd.redis runs on.
local function have_sockets()
  local srv = testing.start{ source = EMBEDDED }
  local ok, res = pcall(function()
    local c = srv:connect()
    local _, text = c:cmd("NOOP probe")
    c:close()
    return text
  end)
  srv:stop()
  return ok and res == "table"
end

local SOURCE = [[
local smtpd = require "smtpd"
local redis = require "smtpd.redis"
local VERSION = "v1"
local PORT, CLOSED_PORT = %d, %d
options = { auth_require_tls = false, hook_timeout = 3 }

local function conn(opts)
  opts = opts or {}
  opts.port = opts.port or PORT
  opts.timeout = 10
  return redis.connect(opts)
end

function handle_NOOP(server, session, envelope, arg)
  arg = arg or ""
  if arg == "ver" then return "250 " .. VERSION end
  if arg == "incr" then
    local r = assert(conn())
    local n = assert(r:call("INCR", "f:n"))
    assert(r:setkeepalive())
    return "250 " .. n
  end
  if arg == "types" then
    local r = assert(conn())
    r:call("DEL", "f:s", "f:l")
    r:call("SET", "f:s", "a b\r\nSET f:x 1")
    local res = assert(r:pipeline{ { "GET", "f:s" }, { "LPUSH", "f:s", "y" }, { "GET", "f:x" },
      { "RPUSH", "f:l", 1, 2 }, { "LRANGE", "f:l", 0, -1 } })
    local v, err = r:call("NOSUCH")
    r:close()
    local shown = res[1]:gsub("\r", "<CR>"):gsub("\n", "<LF>")
    return ("250 %%s|%%s|%%s|%%d|%%s|%%s|%%s"):format(shown, res[2][2], tostring(res[3]), res[4],
      table.concat(res[5], ","), tostring(v), err)
  end
  if arg == "refused" then
    local r, err = conn{ port = CLOSED_PORT }
    return "250 " .. tostring(r) .. " " .. err
  end
  local key = arg:match("^wait (%%S+)$")
  if key then
    local r = assert(conn())
    local v, err = r:call("BLPOP", key, 0)
    if not v then return "250 failed " .. err end
    r:setkeepalive()
    return "250 " .. VERSION .. " popped " .. v[2]
  end
  if arg == "reuse" then
    local r = assert(conn{ pool = "reuse" })
    local n = r:getreusedtimes()
    local id = assert(r:call("CLIENT", "ID"))
    assert(r:setkeepalive())
    return "250 " .. n .. " " .. id
  end
  local n = tonumber(arg:match("^loop (%%d+)$"))
  if n then
    for _ = 1, n do
      local r = assert(conn())
      assert(r:call("INCR", "f:loop"))
      assert(r:setkeepalive())
    end
    return "250 looped " .. n
  end
  return "250 OK"
end

function authenticator(server, session, envelope, mechanism, auth_data)
  local r = assert(conn())
  r:call("BLPOP", "f:auth", 0)
  return smtpd.AuthResult{ success = true }
end
]]

local function source(port)
  return SOURCE:format(port, hu.free_port())
end

-- The spec's own view of Redis (redis_util.cmd, plain LuaSocket): it
-- watches Redis and pushes to the lists the server's hooks wait on.
local function spy(port)
  return { call = function(_, ...) return ru.cmd(port, ...) end, close = function() end }
end

-- Connections blocked in BLPOP, as Redis sees them.
local function blocked(c)
  local list = assert(c:call("CLIENT", "LIST"))
  local n = 0
  for _ in list:gmatch("cmd=blpop") do n = n + 1 end
  return n
end

local function noop(c, arg, timeout)
  assert(c:send("NOOP " .. arg .. "\r\n"))
  local code, text = c:reply(timeout or 10)
  assert.equal(250, code, text)
  return text
end

describe("smtpd.redis waiting in hooks", function()
  local rsrv, watch, sockets

  setup(function()
    sockets = have_sockets()
    if not sockets then return end
    rsrv = ru.start_redis()
    watch = spy(rsrv.port)
  end)

  teardown(function()
    if watch then watch:close() end
    if rsrv then
      rsrv:stop()
      hu.rmdir(rsrv.dir)
    end
  end)

  local function with_server(fn, opts)
    if not sockets then
      pending("this build has no smtpd.socket (the cosockets smtpd.redis runs on)")
      return
    end
    local srv = testing.start(opts or { source = source(rsrv.port) })
    local ok, err = pcall(fn, srv)
    srv:stop()
    if not ok then error(err, 0) end
  end

  it("returns replies, errors verbatim and smtpd.null; arguments are never commands", function()
    with_server(function(srv)
      local c = srv:connect()
      assert.equal("1", noop(c, "incr"))
      assert.equal("2", noop(c, "incr"))
      assert.equal("a b<CR><LF>SET f:x 1|WRONGTYPE Operation against a key holding the wrong kind of value"
        .. "|null|2|1,2|nil|ERR unknown command 'NOSUCH', with args beginning with: ", noop(c, "types"))
      assert.equal("nil connection refused", noop(c, "refused"))
      c:close()
    end)
  end)

  it("serves another client while a hook waits on Redis", function()
    with_server(function(srv)
      local a, b = srv:connect(), srv:connect()
      assert(a:send("NOOP wait f:other\r\n"))
      hu.wait_until(function() return blocked(watch) == 1 end, 10, "the hook's BLPOP to reach Redis")
      local code, text = b:cmd("NOOP")
      assert.equal(250, code)
      assert.equal("OK", text)
      assert.is_nil((a:reply(0.05)), "the waiting hook answered before Redis did")
      assert.equal(1, watch:call("RPUSH", "f:other", "x"))
      code, text = a:reply(10)
      assert.equal(250, code)
      assert.equal("v1 popped x", text)
      a:close()
      b:close()
    end)
  end)

  it("a client that disconnects mid-call: its Redis connection is closed, the server goes on", function()
    with_server(function(srv)
      local a = srv:connect()
      assert(a:send("NOOP wait f:gone\r\n"))
      hu.wait_until(function() return blocked(watch) == 1 end, 10, "the hook's BLPOP to reach Redis")
      a:close()
      hu.wait_log(srv, "abandoning suspended hook handle_NOOP")
      hu.wait_until(function() return blocked(watch) == 0 end, 10, "the server to close its Redis connection")
      -- Nobody pops what comes now: the cancelled call is gone for good.
      assert.equal(1, watch:call("RPUSH", "f:gone", "late"))
      local b = srv:connect()
      assert.equal("OK", noop(b, "x"))
      b:close()
      assert.equal(1, watch:call("LLEN", "f:gone"))
      assert.is_nil(srv:stderr():find("ERROR", 1, true), srv:stderr())
      watch:call("DEL", "f:gone")
    end)
  end)

  it("hook_timeout mid-call fails the command with 451 and closes the Redis connection", function()
    with_server(function(srv)
      local c = srv:connect()
      assert(c:send("NOOP wait f:never\r\n"))
      local code, text = c:reply(15)
      assert.equal(451, code, text)
      hu.wait_log(srv, "handle_NOOP still waiting for sock:receive after hook_timeout (3 s)")
      hu.wait_until(function() return blocked(watch) == 0 end, 10, "the server to close its Redis connection")
      assert.equal("1", (noop(c, "incr"):gsub("%d+", "1")))
      c:close()
    end)
  end)

  it("hook_timeout while the authenticator waits on Redis is 454", function()
    with_server(function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      local code, text = c:auth_plain("alice", "s3cret")
      assert.equal(454, code, text)
      hu.wait_log(srv, "still waiting for sock:receive after hook_timeout")
      hu.wait_until(function() return blocked(watch) == 0 end, 10, "the server to close its Redis connection")
      c:close()
    end)
  end)

  it("reuses a pooled connection: no new connection, getreusedtimes counts", function()
    with_server(function(srv)
      local c = srv:connect()
      local n1, id1 = noop(c, "reuse"):match("^(%d+) (%d+)$")
      local n2, id2 = noop(c, "reuse"):match("^(%d+) (%d+)$")
      assert.equal("0", n1)
      assert.equal("1", n2)
      assert.equal(id1, id2)
      c:close()
    end)
  end)

  it("descriptors and RSS are flat after 10,000 calls", function()
    with_server(function(srv)
      local c = srv:connect()
      assert.equal("looped 500", noop(c, "loop 500", 60))
      collectgarbage()
      local fd_before, rss_before = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
      for _ = 1, 20 do
        assert.equal("looped 500", noop(c, "loop 500", 60))
      end
      assert.equal(10500, tonumber(watch:call("GET", "f:loop")))
      c:close()
      hu.wait_until(function() return hu.fd_count(srv.pid) <= fd_before + 1 end, 10,
        "descriptors back", function() return hu.sh("ls -l /proc/" .. srv.pid .. "/fd") end)
      local rss_after = hu.rss_kib(srv.pid)
      assert(hu.sanitized(srv.pid) or rss_after - rss_before < 4096,
        ("VmRSS %d KiB before, %d KiB after"):format(rss_before, rss_after))
    end)
  end)

  it("a call in progress when SIGHUP arrives completes on its generation", function()
    if not sockets then
      pending("this build has no smtpd.socket (the cosockets smtpd.redis runs on)")
      return
    end
    local src = source(rsrv.port)
    local srv = u.start{ source = src }
    local ok, err = pcall(function()
      local a = srv:connect()
      assert(a:send("NOOP wait f:reload\r\n"))
      hu.wait_until(function() return blocked(watch) == 1 end, 10, "the hook's BLPOP to reach Redis")
      u.write_file(srv.script, (src:gsub('local VERSION = "v1"', 'local VERSION = "v2"', 1)))
      srv:signal("HUP")
      u.wait_log(srv, "loaded (policy generation 2)")
      assert.equal(1, watch:call("RPUSH", "f:reload", "y"))
      local code, text = a:reply(10)
      assert.equal(250, code)
      assert.equal("v1 popped y", text)
      a:close()
      local b = srv:connect()
      assert.equal("v2", noop(b, "ver"))
      b:close()
    end)
    u.stop(srv)
    if not ok then error(err, 0) end
  end)

  it("cannot wait at the script's top level: the load fails with a readable error", function()
    if not sockets then
      pending("this build has no smtpd.socket (the cosockets smtpd.redis runs on)")
      return
    end
    local status, out = testing.check{ source = ('require("smtpd.redis").connect{ port = %d }\n'):format(rsrv.port) }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("cannot wait while the script loads", 1, true), out)
  end)
end)

describe("smtpd.redis over TLS with a password", function()
  local rsrv, dir, srv
  local TLS_SOURCE = [[
local redis = require "smtpd.redis"
options = { auth_require_tls = false }
local PORT, CAFILE = %d, %q
function handle_NOOP(server, session, envelope, arg)
  local tls = { server_name = "localhost", cafile = CAFILE }
  if arg == "wrongname" then tls.server_name = "other.test" end
  local password = arg == "badpass" and "nope" or "s3cret"
  local r, err = redis.connect{ port = PORT, password = password, tls = tls, timeout = 5 }
  if not r then return "250 nil " .. tostring(err) end
  local ok, cerr = r:call("SET", "tls:k", "over tls")
  if not ok then return "250 nil " .. tostring(cerr) end
  local v = r:call("GET", "tls:k")
  r:close()
  return "250 " .. tostring(v)
end
]]
  setup(function()
    dir = hu.tempdir()
    assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost " ..
      "-addext subjectAltName=DNS:localhost -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1")
      :format(dir, dir)))
    rsrv = ru.start_redis{ password = "s3cret", tls = { cert = dir .. "/cert.pem", key = dir .. "/key.pem" } }
    srv = testing.start{ source = TLS_SOURCE:format(rsrv.tls_port, dir .. "/cert.pem") }
  end)
  teardown(function()
    if srv then srv:stop() end
    if rsrv then rsrv:stop() end
  end)

  it("connects over TLS, authenticates and round-trips a value", function()
    local c = srv:connect()
    assert.equal("over tls", select(2, c:cmd("NOOP ok")))
    c:close()
  end)

  it("a wrong password is Redis's error, verbatim", function()
    local c = srv:connect()
    local _, text = c:cmd("NOOP badpass")
    assert.truthy(text:find("^nil WRONGPASS"), text)
    c:close()
  end)

  it("a certificate for another name is refused by the TLS check", function()
    local c = srv:connect()
    local _, text = c:cmd("NOOP wrongname")
    assert.truthy(text:find("^nil certificate verify failed"), text)
    c:close()
  end)
end)
