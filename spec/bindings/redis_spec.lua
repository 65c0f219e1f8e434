-- smtpd.redis (lua/smtpd/redis.lua, async-api.md 8): the RESP2 client's
-- protocol code under plain LuaJIT, on a LuaSocket adapter with the
-- cosocket interface, against a real redis-server on a free loopback port
-- and a hostile fake (redis_fake.py) for replies Redis never sends. The
-- client inside the real server (waits, hook_timeout, reload) is
-- spec/functional/redis_spec.lua's.
local build_lua = os.getenv("LUASMTPD_CPATH") or "build/lua/?.so"
package.cpath = build_lua .. ";" .. package.cpath
local smtpd = require "smtpd"
local redis = require "smtpd.redis"
local ru = require "spec.bindings.redis_util"
local hu = require "spec.functional.hostile_util"

local function connect(opts, factory)
  opts.socket = factory or ru.adapter()
  return redis.connect(opts)
end

describe("smtpd.null", function()
  it("is one unique value whose tostring is null", function()
    assert.are.equal("userdata", type(smtpd.null))
    assert.are.equal("null", tostring(smtpd.null))
    assert.are.equal(smtpd.null, require("smtpd").null)
    assert.are_not.equal(smtpd.null, smtpd.MISSING)
    assert.are.equal("null", getmetatable(smtpd.null))
  end)

  it("smtpd.redis is the smtpd.redis module, loaded on first use", function()
    assert.are.equal(redis, smtpd.redis)
    assert.is_nil(smtpd.no_such_field)
  end)
end)

describe("smtpd.redis against redis-server", function()
  local srv, factory, stats

  setup(function()
    srv = ru.start_redis { unix = true }
  end)

  teardown(function()
    if srv then srv:stop() end
    if srv then hu.rmdir(srv.dir) end
  end)

  before_each(function()
    factory, stats = ru.adapter()
  end)

  after_each(function()
    ru.drain(stats)
  end)

  local function client()
    return assert(connect({ port = srv.port }, factory))
  end

  it("maps every reply type", function()
    local c = client()
    assert.are.equal("PONG", c:call("PING"))                    -- status
    assert.are.equal("OK", c:call("SET", "t:k", "v"))
    assert.are.equal("v", c:call("GET", "t:k"))                 -- bulk
    assert.are.equal("", (c:call("SET", "t:empty", "")) and c:call("GET", "t:empty"))
    assert.are.equal(smtpd.null, c:call("GET", "t:missing"))    -- nil bulk
    assert.are.equal(1, c:call("INCR", "t:n"))                  -- integer
    assert.are.equal(-5, c:call("DECRBY", "t:n", 6))
    assert.are.equal(0, c:call("EXISTS", "t:missing"))
    assert.are.same({}, c:call("LRANGE", "t:missing", 0, -1))   -- empty array
    c:call("RPUSH", "t:l", "a", "b", "c")
    assert.are.same({ "a", "b", "c" }, c:call("LRANGE", "t:l", 0, -1))
    -- Nested arrays, a status and an error inside an array, from a script.
    local nested = c:call("EVAL",
      "return {1, {2, 'x', {}}, redis.status_reply('ST'), redis.error_reply('E1 inner'), false}", 0)
    assert.are.same({ 1, { 2, "x", {} }, "ST", { false, "E1 inner" }, smtpd.null }, nested)
    assert.is_true(c:close())
  end)

  it("gives a nil multi-bulk (an aborted EXEC) as smtpd.null", function()
    local c, other = client(), client()
    assert.are.equal("OK", c:call("WATCH", "t:watched"))
    assert.are.equal("OK", other:call("SET", "t:watched", "changed"))
    assert.are.equal("OK", c:call("MULTI"))
    assert.are.equal("QUEUED", c:call("SET", "t:watched", "mine"))
    assert.are.equal(smtpd.null, c:call("EXEC"))
    assert.are.equal("changed", c:call("GET", "t:watched"))
    c:close()
    other:close()
  end)

  it("returns a Redis error as nil and the server's text, and the connection stays usable", function()
    local c = client()
    c:call("SET", "t:str", "x")
    local v, err = c:call("LPUSH", "t:str", "y")
    assert.is_nil(v)
    assert.are.equal("WRONGTYPE Operation against a key holding the wrong kind of value", err)
    v, err = c:call("NOSUCHCMD", "a b")
    assert.is_nil(v)
    assert.are.equal("ERR unknown command 'NOSUCHCMD', with args beginning with: 'a b' ", err)
    assert.are.equal("PONG", c:call("PING"))
    assert.is_true(c:setkeepalive())
  end)

  it("sends arguments as bulk strings: spaces, CRLF and every byte round-trip, nothing is injected", function()
    local c = client()
    assert.are.equal("OK", c:call("FLUSHDB"))
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local values = {
      "a b c",
      "x\r\nSET t:injected 1\r\n",
      "*1\r\n$4\r\nPING\r\n",
      table.concat(bytes),
      "\0\0\r\n\0",
      string.rep("z", 100000),
    }
    for i, v in ipairs(values) do
      local key = "t:k " .. i .. "\r\n"
      assert.are.equal("OK", c:call("SET", key, v))
      assert.are.equal(v, c:call("GET", key))
    end
    assert.are.equal(smtpd.null, c:call("GET", "t:injected"))
    assert.are.equal(#values, c:call("DBSIZE"))
    -- Numbers are sent as tostring(n).
    assert.are.equal("OK", c:call("SET", "t:num", 42))
    assert.are.equal("42", c:call("GET", "t:num"))
    assert.are.equal("OK", c:call("SET", "t:num", 1.5))
    assert.are.equal("1.5", c:call("GET", "t:num"))
    c:close()
  end)

  it("raises for arguments that are not strings or numbers", function()
    local c = client()
    for _, bad in ipairs { {}, true, print } do
      local ok, err = pcall(c.call, c, "SET", "k", bad)
      assert.is_false(ok)
      assert.matches("client:call: argument 3 must be a string or a number, got " .. type(bad), err, 1, true)
    end
    local ok, err = pcall(c.call, c, "SET", "k", nil)
    assert.is_false(ok)
    assert.matches("argument 3 must be a string or a number, got nil", err, 1, true)
    ok, err = pcall(c.call, c)
    assert.is_false(ok)
    assert.matches("expected a command name", err, 1, true)
    ok, err = pcall(c.pipeline, c, { { "GET", "k" }, "PING" })
    assert.is_false(ok)
    assert.matches("command 2 must be a table, got string", err, 1, true)
    ok, err = pcall(c.pipeline, c, { { "GET", false } })
    assert.is_false(ok)
    assert.matches("command 1: argument 2 must be a string or a number, got boolean", err, 1, true)
    ok, err = pcall(c.call, "SET")
    assert.is_false(ok)
    assert.matches("expected a client", err, 1, true)
    -- Nothing half-sent: the connection still answers in order.
    assert.are.equal("PONG", c:call("PING"))
    c:close()
  end)

  it("raises for bad options", function()
    local cases = {
      { nil, "expected a table of options, got nil" },
      { { port = "6379" }, "port must be a number, got string" },
      { { port = 0 }, "port must be an integer 1-65535" },
      { { db = -1 }, "db must be an integer >= 0" },
      { { db = 1.5 }, "db must be an integer >= 0" },
      { { timeout = 0 }, "timeout must be a number of seconds > 0" },
      { { password = 123 }, "password must be a string, got number" },
      { { passwd = "x" }, "unknown option passwd" },
      { { path = "/x", port = 1 }, "path excludes host and port" },
      { { tls = true }, "tls must be a table, got boolean" },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(redis.connect, case[1])
      assert.is_false(ok)
      assert.matches("smtpd.redis.connect: " .. case[2], err, 1, true)
    end
  end)

  it("pipelines commands in one send, an error reply in place", function()
    local c = client()
    stats.sends = 0
    local r = c:pipeline {
      { "SET", "t:p", "1" },
      { "INCR", "t:p" },
      { "LPUSH", "t:p", "x" },
      { "GET", "t:p" },
      { "GET", "t:p-missing" },
      { "LRANGE", "t:p-missing", 0, -1 },
    }
    assert.are.equal(1, stats.sends)
    assert.are.same({ "OK", 2, { false, "WRONGTYPE Operation against a key holding the wrong kind of value" },
      "2", smtpd.null, {} }, r)
    assert.are.same({}, c:pipeline {})
    -- The replies were all read: the next call gets its own.
    assert.are.equal("PONG", c:call("PING"))
    c:close()
  end)

  it("connects through a unix socket (path)", function()
    local c = assert(connect({ path = srv.path }, factory))
    assert.are.equal("PONG", c:call("PING"))
    c:close()
  end)

  it("selects db on a fresh connection", function()
    local c3 = assert(connect({ port = srv.port, db = 3 }, factory))
    assert.are.equal("OK", c3:call("SET", "t:db", "three"))
    local c0 = client()
    assert.are.equal(smtpd.null, c0:call("GET", "t:db"))
    local again = assert(connect({ port = srv.port, db = 3 }, factory))
    assert.are.equal("three", again:call("GET", "t:db"))
    local v, err = connect({ port = srv.port, db = 99 }, factory)
    assert.is_nil(v)
    assert.are.equal("ERR DB index is out of range", err)
    c3:close()
    c0:close()
    again:close()
  end)

  it("reuses a pooled connection without AUTH or SELECT again, pooled by db by default", function()
    local c = assert(connect({ port = srv.port, db = 2 }, factory))
    assert.are.equal(0, c:getreusedtimes())
    local id = c:call("CLIENT", "ID")
    assert.is_true(c:setkeepalive())
    assert.are.equal("smtpd.redis client (closed)", tostring(c))
    local v, err = c:call("PING")
    assert.is_nil(v)
    assert.are.equal("closed", err)

    local again = assert(connect({ port = srv.port, db = 2 }, factory))
    assert.are.equal(1, again:getreusedtimes())
    assert.are.equal(id, again:call("CLIENT", "ID"))
    -- Another db is another pool: a fresh connection.
    local other = assert(connect({ port = srv.port, db = 4 }, factory))
    assert.are.equal(0, other:getreusedtimes())
    assert.are_not.equal(id, other:call("CLIENT", "ID"))
    -- A pool name chosen by the script is the script's promise: a reused
    -- connection keeps the db it was made with, SELECT is not sent again.
    local mine = assert(connect({ port = srv.port, db = 7, pool = "mine" }, factory))
    assert.are.equal("OK", mine:call("SET", "t:in7", "seven"))
    assert.is_true(mine:setkeepalive())
    local named = assert(connect({ port = srv.port, db = 5, pool = "mine" }, factory))
    assert.are.equal(1, named:getreusedtimes())
    assert.are.equal("seven", named:call("GET", "t:in7"))
    named:close()
    again:close()
  end)

  it("returns connection refused", function()
    local v, err = connect({ port = hu.free_port() }, factory)
    assert.is_nil(v)
    assert.are.equal("connection refused", err)
  end)
end)

describe("smtpd.redis with a password", function()
  local srv

  setup(function()
    srv = ru.start_redis { password = "s3cret pass" }
  end)

  teardown(function()
    if srv then srv:stop() end
    if srv then hu.rmdir(srv.dir) end
  end)

  it("authenticates with the right password", function()
    local factory, stats = ru.adapter()
    local c = assert(connect({ port = srv.port, password = "s3cret pass" }, factory))
    assert.are.equal("PONG", c:call("PING"))
    assert.is_nil(tostring(c):find("s3cret", 1, true))
    assert.is_true(c:setkeepalive())
    -- Reused: no AUTH is sent again, and it still works.
    local again = assert(connect({ port = srv.port, password = "s3cret pass" }, factory))
    assert.are.equal(1, again:getreusedtimes())
    assert.are.equal("PONG", again:call("PING"))
    again:close()
    ru.drain(stats)
  end)

  it("returns the server's refusal for a wrong password, and never hands its pool to it", function()
    local factory, stats = ru.adapter()
    local good = assert(connect({ port = srv.port, password = "s3cret pass" }, factory))
    assert.is_true(good:setkeepalive())
    local v, err = connect({ port = srv.port, password = "wrong" }, factory)
    assert.is_nil(v)
    assert.are.equal("WRONGPASS invalid username-password pair or user is disabled.", err)
    assert.is_nil(err:find("wrong", 1, true))
    -- The good connection is still pooled, under its own name.
    local idle = 0
    for _, list in pairs(stats.pool) do idle = idle + #list end
    assert.are.equal(1, idle)
    -- No password: the first command is refused.
    local c = assert(connect({ port = srv.port }, factory))
    v, err = c:call("GET", "k")
    assert.is_nil(v)
    assert.are.equal("NOAUTH Authentication required.", err)
    c:close()
    ru.drain(stats)
  end)
end)

describe("smtpd.redis when Redis goes away", function()
  it("gives nil, err on the next call after a restart, never hangs, and connects again", function()
    local srv = ru.start_redis()
    local factory, stats = ru.adapter()
    local c = assert(connect({ port = srv.port, timeout = 5 }, factory))
    assert.are.equal("PONG", c:call("PING"))
    local pooled = assert(connect({ port = srv.port, timeout = 5, pool = "p" }, factory))
    assert.is_true(pooled:setkeepalive())
    srv:kill()
    local v, err = c:call("PING")
    assert.is_nil(v)
    assert.is_string(err)
    assert.is_not_equal("timeout", err)
    v, err = c:call("PING")
    assert.is_nil(v)
    assert.are.equal("closed", err)
    v, err = connect({ port = srv.port }, factory)
    assert.is_nil(v)
    assert.are.equal("connection refused", err)
    -- The dead pooled connection fails on use and is not handed back.
    local stale = assert(connect({ port = srv.port, pool = "p" }, factory))
    v, err = stale:call("PING")
    assert.is_nil(v)
    assert.is_string(err)
    assert.are.same({}, stats.pool.p)

    local again = ru.start_redis { port = srv.port, dir = srv.dir }
    local c2 = assert(connect({ port = srv.port }, factory))
    assert.are.equal("PONG", c2:call("PING"))
    c2:close()
    again:stop()
    hu.rmdir(srv.dir)
  end)
end)

describe("smtpd.redis against a hostile server", function()
  local fake

  setup(function()
    fake = ru.start_fake()
  end)

  teardown(function()
    if fake then fake.stop() end
    if fake then hu.rmdir(fake.dir) end
  end)

  local function client(stats_out)
    local factory, stats = ru.adapter()
    if stats_out then stats_out[1] = stats end
    return assert(connect({ port = fake.port, timeout = 2 }, factory)), stats
  end

  it("sends exactly the RESP it documents", function()
    local c = client()
    assert.are.same({ "a b", "\r\n", "", "7" }, c:call("ARGS", "a b", "\r\n", "", 7))
    c:close()
  end)

  it("times out against a server that never answers, then is closed, never pooled", function()
    local c, stats = client()
    local v, err = c:call("SILENT")
    assert.is_nil(v)
    assert.are.equal("timeout", err)
    v, err = c:setkeepalive()
    assert.is_nil(v)
    assert.are.equal("closed", err)
    assert.is_nil(next(stats.pool))
    -- AUTH that gets no answer: connect itself times out.
    local factory = ru.adapter()
    v, err = connect({ port = fake.port, timeout = 1, password = "x" }, factory)
    assert.is_nil(v)
    assert.are.equal("timeout", err)
  end)

  local hostile = {
    { "$-2\r\n", "protocol error: bad bulk length" },
    { "$abc\r\nabc\r\n", "protocol error: bad bulk length" },
    { "$1.5\r\nab\r\n", "protocol error: bad bulk length" },
    { "$\r\n", "protocol error: bad bulk length" },
    { "$99999999999999999999\r\n", "protocol error: bad bulk length" },
    { "$" .. (512 * 1024 * 1024 + 1) .. "\r\n", "protocol error: bad bulk length" },
    { "*-2\r\n", "protocol error: bad array length" },
    { "*99999999999\r\n", "protocol error: bad array length" },
    { "*" .. (16 * 1024 * 1024 + 1) .. "\r\n", "protocol error: bad array length" },
    { "*x\r\n", "protocol error: bad array length" },
    { string.rep("*1\r\n", 10000) .. ":1\r\n", "protocol error: reply nested deeper than 16" },
    { string.rep("*1\r\n", 17) .. ":1\r\n", "protocol error: reply nested deeper than 16" },
    { ":12a\r\n", "protocol error: bad integer" },
    { ":\r\n", "protocol error: bad integer" },
    { "!garbage\r\n", 'protocol error: unknown reply type "!"' },
    { "\0\1\2\r\n", "protocol error: unknown reply type 0x00" },
    { "\255\r\n", "protocol error: unknown reply type 0xff" },
    { "\r\n", "protocol error: empty reply line" },
    { "$3\r\nabcXY", "protocol error: bulk string not followed by CRLF" },
  }
  for _, case in ipairs(hostile) do
    it("refuses " .. string.format("%q", case[1]:sub(1, 24)) .. " as " .. case[2] .. " and closes", function()
      local c = client()
      local v, err = c:call("RAW", case[1])
      assert.is_nil(v)
      assert.are.equal(case[2], err)
      v, err = c:call("PING")
      assert.is_nil(v)
      assert.are.equal("closed", err)
    end)
  end

  it("reads a reply just inside the depth limit", function()
    local c = client()
    local v = c:call("RAW", string.rep("*1\r\n", 15) .. ":7\r\n")
    for _ = 1, 15 do v = v[1] end
    assert.are.equal(7, v)
    c:close()
  end)

  local truncated = { "$10\r\nabc", "*3\r\n:1\r\n", "*2\r\n$1\r\na\r\n*1\r\n", "$5\r\n" }
  for _, payload in ipairs(truncated) do
    it("gives a truncated reply " .. string.format("%q", payload) .. " as a protocol error", function()
      local c = client()
      local v, err = c:call("RAWCLOSE", payload)
      assert.is_nil(v)
      assert.are.equal("protocol error: truncated reply", err)
    end)
  end

  it("a close before any reply is closed; a truncated pipeline a protocol error", function()
    local c = client()
    local v, err = c:call("RAWCLOSE", "")
    assert.is_nil(v)
    assert.are.equal("closed", err)
    c = client()
    v, err = c:pipeline { { "RAWCLOSE", "+OK\r\n" }, { "PING" } }
    assert.is_nil(v)
    assert.are.equal("protocol error: truncated reply", err)
  end)

  -- Random replies: valid ones must decode to what was encoded, mutated
  -- ones must give a value or nil, err, never raise or hang.
  local function gen(rnd, depth)
    local k = rnd(depth >= 4 and 5 or 7)
    if k == 1 then return ("x"):rep(rnd(3) - 1) .. "st" end
    if k == 2 then return rnd(2000001) - 1000001 end
    if k == 3 or k == 4 then
      local t = {}
      for i = 1, rnd(40) - 1 do t[i] = string.char(rnd(256) - 1) end
      return table.concat(t)
    end
    if k == 5 then return smtpd.null end
    local arr = {}
    for i = 1, rnd(5) - 1 do arr[i] = gen(rnd, depth + 1) end
    return arr
  end
  local function enc(v, out, as_status)
    if type(v) == "number" then out[#out + 1] = ":" .. v .. "\r\n"
    elseif v == smtpd.null then out[#out + 1] = "$-1\r\n"
    elseif type(v) == "string" and as_status then out[#out + 1] = "+" .. v .. "\r\n"
    elseif type(v) == "string" then out[#out + 1] = "$" .. #v .. "\r\n" .. v .. "\r\n"
    else
      out[#out + 1] = "*" .. #v .. "\r\n"
      for _, e in ipairs(v) do enc(e, out, false) end
    end
    return out
  end

  it("decodes 400 random valid replies exactly and survives 1200 mutated ones", function()
    math.randomseed(12345)
    local rnd = math.random
    for i = 1, 400 do
      local v = gen(rnd, 1)
      local wire = table.concat(enc(v, {}, i % 3 == 0 and type(v) == "string" and not v:find("[\r\n]")))
      local c = client()
      local got, err = c:call("RAWCLOSE", wire)
      assert.are.same(v, got, err)
    end
    local outcomes = { value = 0, err = 0 }
    for _ = 1, 1200 do
      local wire = table.concat(enc(gen(rnd, 1), {}, false))
      local b = { wire:byte(1, -1) }
      for _ = 1, rnd(4) do
        local op, pos = rnd(3), rnd(#b + 1)
        if op == 1 then b[pos] = rnd(256) - 1
        elseif op == 2 then table.remove(b, math.min(pos, #b))
        else table.insert(b, pos, ({ 13, 10, 36, 42, 45, 58, 48 + rnd(10) - 1 })[rnd(7)]) end
      end
      local mutated = {}
      for j = 1, #b do mutated[j] = string.char(b[j]) end
      local c = client()
      local ok, got, err = pcall(c.call, c, "RAWCLOSE", table.concat(mutated))
      assert.is_true(ok, got)
      if got == nil then
        assert.is_string(err)
        assert.is_not_equal("timeout", err, "the client waited for bytes that never come")
        outcomes.err = outcomes.err + 1
      else
        outcomes.value = outcomes.value + 1
      end
      c:close()
    end
    -- Both paths were exercised.
    assert.is_true(outcomes.value > 50 and outcomes.err > 50, outcomes.value .. " / " .. outcomes.err)
  end)
end)
