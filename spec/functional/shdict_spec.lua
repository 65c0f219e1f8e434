-- smtpd.shared.NAME (async-api.md 7) against the real binary: every method
-- and answer, each value type and the 1 MiB limit, TTL expiry, LRU eviction
-- ("evicted"), "no memory", argument errors that raise, the shared_dict
-- option and its errors, atomic incr across two workers, values that
-- survive a reload and a worker restart, and a reload that changes the set
-- refused while the old generation keeps serving. (A process killed while
-- it holds a dictionary's lock is spec/c/test_shdict.c: only a test can
-- choose that moment.) Order of events, never elapsed time, is asserted.
local socket = require "socket"
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"

local SIGKILL = 9

local function script(dicts, version)
  return ([==[
local smtpd = require "smtpd"
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local cache = smtpd.shared.cache -- taken at the top level, used in hooks
options = { auth_require_tls = false, shared_dict = %s }
local function arg_value(s)
  if s == "nil" then return nil end
  local t, v = s:match("^(%%a):(.*)$")
  if t == "n" then return tonumber(v) end
  if t == "b" then return v == "true" end
  if t == "r" then return string.rep("x", tonumber(v)) end
  if t == "t" then return {} end
  return s
end
local function show(n, ...)
  local out = {}
  for i = 1, n do
    local x = select(i, ...)
    if type(x) == "string" and #x > 64 then x = "#" .. #x end
    out[i] = tostring(x)
  end
  return table.concat(out, " ")
end
local function pack(...) return select("#", ...), { ... } end
local function call(f, ...)
  local n, r = pack(pcall(f, ...))
  if not r[1] then return "raised: " .. tostring(r[2]):gsub("^[^:]*:%%d+: ", "") end
  return show(n - 1, unpack(r, 2, n))
end
function handle_NOOP(server, session, envelope, arg)
  local w = {}
  for x in (arg or ""):gmatch("%%S+") do w[#w + 1] = x end
  if w[1] == nil or w[1] == "pid" then return "250 %s pid " .. ffi.C.getpid() end
  if w[1] == "same" then return "250 " .. tostring(cache == smtpd.shared.cache) end
  if w[1] == "undeclared" then
    return "250 " .. tostring(smtpd.shared.nope) .. " " .. tostring(smtpd.shared["bad-name"])
  end
  if w[1] == "fill" then -- 1000-byte values into d until a set evicts
    local d = smtpd.shared[w[2]]
    for i = 1, 100000 do
      local ok, err = d:set("k" .. i, string.rep("v", 1000))
      if err == "evicted" then
        return ("250 evicted at %%d: k1=%%s k%%d=%%s"):format(i, tostring(d:get("k1")), i,
          tostring(d:get("k" .. i) ~= nil))
      end
    end
    return "250 never evicted"
  end
  if w[1] == "count" then -- many increments of one key in one hook
    for _ = 1, tonumber(w[2]) do cache:incr("count", 1, 0) end
    return "250 counted pid " .. ffi.C.getpid()
  end
  if w[1] == "churn" then
    for i = 1, tonumber(w[2]) do
      cache:set("churn" .. i %% 100, string.rep("c", i %% 500), 60)
      cache:get("churn" .. (i * 7) %% 100)
      if i %% 3 == 0 then cache:delete("churn" .. i %% 100) end
    end
    return "250 churned"
  end
  if w[1] == "nocolon" then return "250 " .. call(cache.get, "k") end
  local d = smtpd.shared[w[1]]
  if not d then return "250 no dict " .. tostring(w[1]) end
  local args = {}
  for i = 3, #w do args[i - 2] = arg_value(w[i]) end
  return "250 " .. call(d[w[2]], d, unpack(args, 1, #w - 2))
end
]==]):format(dicts, version or "v1")
end

local DICTS = [[{ cache = "1m", small = "32k", big = "3m" }]]
local SOURCE = script(DICTS)
-- The top level counts the loads and stores a value with a ttl.
local TOP = SOURCE .. [[
cache:incr("loads", 1, 0)
assert(smtpd.shared.small:set("boot", "yes", 1000))
assert(smtpd.shared.small:ttl("boot") > 0)
]]

-- code and text of one command (cmd's transcript left out)
local function ask(c, line)
  local code, text = c:cmd(line)
  return code, text
end

local function r(line, reply) return { "NOOP " .. line, "250 " .. reply } end

describe("smtpd.shared", function()
  h.run{
    { name = "set and get each value type; a missing key is nil",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("cache get a", "nil"),
        r("cache set a hello", "true"),
        r("cache get a", "hello"),
        r("cache set n n:2.5", "true"),
        r("cache get n", "2.5"),
        r("cache set t b:true", "true"),
        r("cache get t", "true"),
        r("cache set f b:false", "true"),
        r("cache get f", "false"),
        r("cache set a n:7", "true"),
        r("cache get a", "7"),
        r("cache set a nil", "true"),
        r("cache get a", "nil"),
        r("same", "true"),
        r("undeclared", "nil nil") } },

    { name = "add: true, or nil, exists; delete; flush_all",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("cache add k one", "true"),
        r("cache add k two", "nil exists"),
        r("cache get k", "one"),
        r("cache delete k", ""),
        r("cache delete k", ""),
        r("cache add k three", "true"),
        r("cache set other x", "true"),
        r("cache flush_all", ""),
        r("cache get k", "nil"),
        r("cache get other", "nil") } },

    { name = "incr: not found, init and init_ttl, not a number",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("cache incr c n:1", "nil not found"),
        r("cache incr c n:1 n:10", "11"),
        r("cache incr c n:-3 n:100", "8"),
        r("cache incr c n:0.5", "8.5"),
        r("cache ttl c", "0"),
        r("cache incr d n:1 n:0 n:100", "1"),
        r("cache set s text", "true"),
        r("cache incr s n:1", "nil not a number"),
        r("cache incr s n:1 n:0", "nil not a number") } },

    { name = "ttl and expire: seconds left, 0 for none, not found",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("cache ttl k", "nil not found"),
        r("cache expire k n:10", "nil not found"),
        r("cache set k v", "true"),
        r("cache ttl k", "0"),
        r("cache expire k n:1000", "true"),
        { "NOOP cache ttl k", match = "^250 9%d%d%.%d+$" },
        r("cache expire k n:0", "true"),
        r("cache ttl k", "0") } },

    { name = "a 1 MiB string is stored and read back; one byte more raises",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("big set k r:1048576", "true"),
        r("big get k", "#1048576"),
        r("big set k r:1048577", "raised: bad argument #3 to '?' (a string value is at most 1 MiB (1048576 bytes))"),
        r("big get k", "#1048576") } },

    { name = "a full dictionary evicts the least recently used and says evicted",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP fill small", match = "^250 evicted at %d+: k1=nil k%d+=true$" } } },

    { name = "a value that cannot fit even after evicting: nil, no memory; the old value stays",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("small set k v", "true"),
        r("small set k r:40000", "nil no memory"),
        r("small get k", "v"),
        r("small add j r:40000", "nil no memory") } },

    -- (Called through pcall(d.get, d, ...), so self is argument #1; as
    -- d:get(...) the key is #1, as Lua numbers method arguments.)
    { name = "argument errors raise readable errors",
      source = SOURCE,
      dialogue = { h.ehlo,
        r("cache get n:1", "raised: bad argument #2 to '?' (expected a string key, got number)"),
        r("cache get nil", "raised: bad argument #2 to '?' (expected a string key, got nil)"),
        r("cache get r:0", "raised: bad argument #2 to '?' (the key is empty)"),
        r("cache get r:65536", "raised: bad argument #2 to '?' (the key is longer than 65535 bytes)"),
        r("cache set r:65535 v", "true"),
        r("cache get r:65535", "v"),
        r("cache incr k n:1 word", "raised: bad argument #4 to '?' (expected an initial number, got string)"),
        r("cache set k t:", "raised: bad argument #3 to '?' (expected a string, number or boolean, got table)"),
        r("cache set k v n:-1", "raised: bad argument #4 to '?' (expected a ttl in seconds between 0 (none) and 1e9)"),
        r("cache set k v word", "raised: bad argument #4 to '?' (expected a ttl in seconds, got string)"),
        r("cache add k nil", "raised: bad argument #3 to '?' (expected a string, number or boolean, got nil)"),
        r("cache incr k word", "raised: bad argument #3 to '?' (expected a number to add, got string)"),
        r("cache expire k", "raised: bad argument #3 to '?' (expected a ttl in seconds (0: none), got no value)"),
        r("nocolon", "raised: get: expected a shared dictionary as self, got string (call it as d:get(...))") } },
  }

  it("a ttl expires: present first, then gone (polled, bounded)", function()
    local srv = testing.start{ source = SOURCE }
    local c = srv:connect()
    c:cmd("EHLO client.test")
    assert.same({ 250, "true" }, { ask(c, "NOOP cache set k v n:0.2") })
    assert.same({ 250, "true" }, { ask(c, "NOOP cache set stays v n:1000") })
    local _, first = c:cmd("NOOP cache get k")
    assert.equal("v", first)
    local got, polls = first, 0
    while got == "v" and polls < 500 do
      socket.sleep(0.01)
      polls = polls + 1
      _, got = c:cmd("NOOP cache get k")
    end
    assert.equal("nil", got)
    assert.same({ 250, "nil not found" }, { ask(c, "NOOP cache ttl k") })
    assert.same({ 250, "v" }, { ask(c, "NOOP cache get stays") })
    assert.same({ 250, "true" }, { ask(c, "NOOP cache add k again") })
    c:close()
    srv:stop()
  end)

  it("the option: -t accepts it; bad names, sizes and types are refused with a message", function()
    local dir = u.tempdir()
    local path = dir .. "/h.lua"
    u.write_file(path, SOURCE)
    local status, out = u.check(path)
    assert.equal(0, status, out)
    status, out = u.check(path, { "-o", "shared_dict=cache:64k,other:1m" })
    assert.equal(0, status, out)
    local bad = {
      { "shared_dict=1x:64k", "bad dictionary name '1x'" },
      { "shared_dict=a-b:64k", "bad dictionary name 'a-b'" },
      { "shared_dict=a:1k", "the size of 'a' must be between 32k and 1024m, got 1024 bytes" },
      { "shared_dict=a:2g", "the size of 'a' must be between 32k and 1024m" },
      { "shared_dict=a:64k,a:1m", "dictionary 'a' is declared twice" },
      { "shared_dict=a", "option 'shared_dict' must be a table of name = size" },
      { "shared_dict=a:lots", "option 'shared_dict' must be a table of name = size" },
    }
    for _, b in ipairs(bad) do
      status, out = u.check(path, { "-o", b[1] })
      assert.equal(1, status, b[1])
      assert.truthy(out:find(b[2], 1, true), b[1] .. ": " .. out)
    end
    u.write_file(path, "options = { shared_dict = { cache = true } }")
    status, out = u.check(path)
    assert.equal(1, status)
    assert.truthy(out:find("option 'shared_dict' must be a table of name = size", 1, true), out)
    -- -t: the dictionaries exist (empty) while the top level runs
    u.write_file(path, "options = { shared_dict = { cache = \"10m\" } }\n" ..
      "local c = require('smtpd').shared.cache\n" ..
      "assert(c:get('boot') == nil); assert(c:set('boot', 1)); assert(c:get('boot') == 1)")
    status, out = u.check(path)
    assert.equal(0, status, out)
    u.write_file(path, "options = { shared_dict = { cache = \"10m\" } }\n" ..
      "require('smtpd').shared.nope:set('boot', 1)")
    status, out = u.check(path)
    assert.equal(1, status)
    assert.truthy(out:find("smtpd.shared.nope is used at the top level of the script, but the option " ..
      "shared_dict does not declare it", 1, true), out)
    u.rmdir(dir)
  end)

  it("single process: a reload keeps the values; a reload that changes the set is refused", function()
    local srv = u.start{ source = SOURCE }
    local c = srv:connect()
    assert.same({ 250, "true" }, { ask(c, "NOOP cache set kept yes") })
    c:close()
    u.reload(srv, script(DICTS, "v2"), 2)
    c = srv:connect()
    assert.same({ 250, "v2 pid " .. srv.pid }, { ask(c, "NOOP pid") })
    assert.same({ 250, "yes" }, { ask(c, "NOOP cache get kept") })
    c:close()
    u.write_file(srv.script, script([[{ cache = "2m", small = "32k", big = "3m" }]], "v3"))
    srv:signal("HUP")
    u.wait_log(srv, "reload refused")
    assert.equal("shared_dict changed: restart to apply ('cache' 1m -> 2m)", u.refusal_reason(srv:stderr()))
    u.write_file(srv.script, script([[{ cache = "1m", small = "32k", big = "3m", more = "1m" }]], "v4"))
    srv:signal("HUP")
    u.wait_log(srv, "reload refused", 2)
    assert.equal("shared_dict changed: restart to apply (added 'more')", u.refusal_reason(srv:stderr()))
    c = srv:connect()
    assert.same({ 250, "v2 pid " .. srv.pid }, { ask(c, "NOOP pid") })
    assert.same({ 250, "yes" }, { ask(c, "NOOP cache get kept") })
    c:close()
    u.stop(srv)
  end)

  it("the top level may use them: at start-up (kept), and on a reload", function()
    local srv = u.start{ source = TOP }
    local c = srv:connect()
    assert.same({ 250, "1" }, { ask(c, "NOOP cache get loads") })
    assert.same({ 250, "yes" }, { ask(c, "NOOP small get boot") })
    assert.same({ 250, "true" }, { ask(c, "NOOP same") })
    c:close()
    u.reload(srv, TOP, 2)
    c = srv:connect()
    assert.same({ 250, "2" }, { ask(c, "NOOP cache get loads") })
    c:close()
    u.stop(srv)
  end)

  it("descriptors and RSS stay flat over 10,000 operations", function()
    local srv = testing.start{ source = SOURCE }
    local c = srv:connect()
    c:cmd("NOOP churn 1000")
    local fds, rss = u.fd_count(srv.pid), u.rss_kb(srv.pid)
    for _ = 1, 10 do assert.same({ 250, "churned" }, { ask(c, "NOOP churn 1000") }) end
    assert.equal(fds, u.fd_count(srv.pid))
    assert.is_true(u.rss_kb(srv.pid) - rss < 8192, "RSS grew by " .. (u.rss_kb(srv.pid) - rss) .. " kB")
    c:close()
    srv:stop()
  end)
end)

describe("smtpd.shared with --workers 2", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("incr is atomic across workers: concurrent clients on both, the final count exact", function()
    srv = u.start{ source = SOURCE, args = { "--workers", "2" } }
    u.wait_workers(srv, 2)
    local per_conn, conns, pids, rounds = 100000, 8, {}, 0
    -- Rounds of 8 concurrent connections until both workers answered (bounded).
    while rounds < 10 do
      rounds = rounds + 1
      local cs = {}
      for i = 1, conns do
        cs[i] = assert(testing.connect(srv.host, srv.port))
        cs[i]:send("NOOP count " .. per_conn .. "\r\n")
      end
      for i = 1, conns do
        local code, text = cs[i]:reply(30)
        assert.equal(250, code, tostring(text))
        pids[tonumber(text:match("pid (%d+)$"))] = true
        cs[i]:close()
      end
      local n = 0
      for _ in pairs(pids) do n = n + 1 end
      if n == 2 then break end
    end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.equal(2, n, "both workers counted")
    local c = srv:connect()
    assert.same({ 250, tostring(rounds * conns * per_conn) }, { ask(c, "NOOP cache get count") })
    c:close()
  end)

  it("the top level runs in the master and in each worker: each load counts once", function()
    srv = u.start{ source = TOP, args = { "--workers", "2" } }
    u.wait_workers(srv, 2)
    local c = srv:connect()
    assert.same({ 250, "3" }, { ask(c, "NOOP cache get loads") })
    assert.same({ 250, "yes" }, { ask(c, "NOOP small get boot") })
    c:close()
  end)

  it("values survive a reload and a worker restart (kill -9); a changed set is refused", function()
    srv = u.start{ source = SOURCE, args = { "--workers", "2" } }
    local kids = u.wait_workers(srv, 2)
    local c = srv:connect()
    assert.same({ 250, "true" }, { ask(c, "NOOP cache set kept yes") })
    c:close()
    u.reload(srv, script(DICTS, "v2"), 2, 2)
    local seen = u.ask_until(srv, function(s)
      for _, pid in ipairs(kids) do if s[pid] ~= "v2" then return false end end
      return true
    end, 200, "both workers on v2")
    assert.truthy(seen)
    c = srv:connect()
    assert.same({ 250, "yes" }, { ask(c, "NOOP cache get kept") })
    c:close()

    assert.is_true(u.kill(kids[1], SIGKILL))
    local after = u.wait_workers(srv, 2, { kids[1] })
    local fresh = after[1] == kids[2] and after[2] or after[1]
    u.wait_log_match(srv, "worker %d+ started %(pid " .. fresh .. "%)")
    -- Ask until the restarted worker answers, then read the value there.
    for _ = 1, 200 do
      c = srv:connect()
      local _, text = c:cmd("NOOP pid")
      if text:match("pid (%d+)$") == tostring(fresh) then break end
      c:close()
      c = nil
    end
    assert.truthy(c, "the restarted worker answered")
    assert.same({ 250, "yes" }, { ask(c, "NOOP cache get kept") })
    c:close()

    u.write_file(srv.script, script([[{ cache = "1m", small = "32k" }]], "v3"))
    srv:signal("HUP")
    u.wait_log(srv, "reload refused, workers keep their generation: shared_dict changed: " ..
      "restart to apply (removed 'big')")
    c = srv:connect()
    assert.same({ 250, "yes" }, { ask(c, "NOOP cache get kept") })
    local _, text = c:cmd("NOOP pid")
    assert.matches("^v2 pid ", text)
    c:close()
  end)
end)
