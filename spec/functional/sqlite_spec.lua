-- smtpd.sqlite (async-api.md 6): statements run on the thread pool while
-- the hook waits; a real SQLite file made by the sqlite3 CLI. Rows come back
-- keyed by column name (a NULL column is an absent key), `?` parameters are
-- bound, never interpolated (an injection attempt stays data), exec counts
-- the changed rows, a readonly db refuses writes with SQLite's own message.
-- Another client is served during a slow statement; disconnect,
-- hook_timeout and reload detach the job; 10,000 statements leave
-- descriptors and RSS flat. The order of events is asserted, never elapsed
-- time.
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"
local hu = require "spec.functional.hostile_util"

-- About a second of SQLite's CPU: a statement a hook waits on.
local SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) " ..
  "SELECT count(*) AS n FROM c"

local function make_db(dir)
  local path = dir .. "/users.db"
  local out = u.sh(("sqlite3 %s %s; echo exit=$?"):format(u.shell_quote(path), u.shell_quote([[
CREATE TABLE users (name TEXT PRIMARY KEY, quota INTEGER, ratio REAL, avatar BLOB, note TEXT);
INSERT INTO users VALUES ('alice', 10, 0.5, x'00ff41', 'first');
INSERT INTO users VALUES ('bob', 20, 1.25, NULL, NULL);
CREATE TABLE log (what TEXT);
]])), 30)
  assert(out:find("exit=0", 1, true), out)
  return path
end

local function source(version, dir, opts)
  return ([[
local smtpd = require "smtpd"
local DIR, VERSION = %q, %q
options = { auth_require_tls = false, hook_timeout = %s }
local function show(v)
  if type(v) == "string" then
    return '"' .. v:gsub("[^%%w%%p ]", function(c) return ("\\x%%02x"):format(c:byte()) end) .. '"'
  end
  return tostring(v)
end
local function render(rows, err)
  if not rows then return "nil " .. tostring(err) end
  local out = { #rows .. " rows" }
  for _, r in ipairs(rows) do
    local keys = {}
    for k in pairs(r) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. show(r[k]) end
    out[#out + 1] = "{" .. table.concat(parts, ",") .. "}"
  end
  return table.concat(out, " ")
end
local db
local function open()
  if not db then db = assert(smtpd.sqlite.open(DIR .. "/users.db")) end
  return db
end
function handle_NOOP(server, session, envelope, arg)
  arg = arg or ""
  local function reply(s) return "250 " .. VERSION .. " " .. s end
  if arg == "rows" then
    return reply(render(open():query("SELECT * FROM users ORDER BY name")))
  end
  local name = arg:match("^user (.*)$")
  if name then
    return reply(render(open():query("SELECT name, quota FROM users WHERE name = ?", name)))
  end
  local n, q = arg:match("^add (%%S+) (%%d+)$")
  if n then
    local changed, err = open():exec("INSERT INTO users (name, quota) VALUES (?, ?)", n, tonumber(q))
    return reply(tostring(changed) .. (err and " " .. err or ""))
  end
  if arg == "bump" then return reply(tostring(open():exec("UPDATE users SET quota = quota + 1"))) end
  if arg == "count" then return reply(render(open():query("SELECT count(*) AS n FROM users"))) end
  if arg == "types" then
    return reply(render(open():query("SELECT ? AS a, ? AS b, ? AS c, ? AS d, ? AS e, typeof(?) AS t",
      "s", 42, 1.5, true, nil, false)))
  end
  if arg == "readonly" then
    local ro = assert(smtpd.sqlite.open(DIR .. "/users.db", { readonly = true }))
    local rows = ro:query("SELECT count(*) AS n FROM users")
    local ok, err = ro:exec("INSERT INTO users (name) VALUES ('mallory')")
    return reply(rows[1].n .. " " .. tostring(ok) .. " " .. tostring(err) .. " " .. tostring(ro))
  end
  if arg == "missing" then
    local d, err = smtpd.sqlite.open(DIR .. "/missing.db", { readonly = true })
    return reply(tostring(d) .. " " .. tostring(err))
  end
  if arg == "badsql" then return reply(render(open():query("SELEKT 1"))) end
  if arg == "notable" then return reply(tostring(select(2, open():exec("DELETE FROM nosuch")))) end
  if arg == "fewer" then return reply(render(open():query("SELECT ? AS a, ? AS b", 1))) end
  if arg == "more" then return reply(render(open():query("SELECT ? AS a", 1, 2))) end
  if arg == "two" then return reply(render(open():query("SELECT 1 AS a; SELECT 2 AS b"))) end
  if arg == "txn" then
    local changed = open():exec("BEGIN; INSERT INTO log VALUES (?); INSERT INTO log VALUES (?); COMMIT", "x", "y")
    local left, err = open():exec("BEGIN; INSERT INTO log VALUES ('open')")
    return reply(tostring(changed) .. " " .. tostring(left) .. " " .. tostring(err) .. " " ..
      render(open():query("SELECT what FROM log ORDER BY what")))
  end
  if arg == "badparam" then open():query("SELECT ?", {}) end
  if arg == "badopen" then smtpd.sqlite.open(DIR .. "/users.db", { readonly = "yes" }) end
  if arg == "badself" then open().query({}, "SELECT 1") end
  if arg == "slow" then return reply(render(open():query(%q))) end
  if arg == "big" then
    return reply(render(open():query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 " ..
      "FROM c WHERE x < 100000) SELECT x, printf('%%0100d', x) AS pad FROM c")))
  end
  local loops = tonumber(arg:match("^loop (%%d+)$"))
  if loops then
    for i = 1, loops do
      local rows, err = open():query("SELECT quota FROM users WHERE name = ?", "alice")
      if not rows or #rows ~= 1 then return reply("failed at " .. i .. ": " .. tostring(err)) end
    end
    return reply("looped " .. loops)
  end
  return reply("ok")
end
]]):format(dir, version, tostring(opts and opts.hook_timeout or 120), SLOW)
end

local function text(c, line) return select(2, c:cmd(line)) end

describe("smtpd.sqlite", function()
  local srv, dir
  setup(function()
    dir = u.tempdir()
    make_db(dir)
    srv = testing.start{ source = source("v1", dir) }
  end)
  teardown(function()
    if srv then srv:stop() end
    u.rmdir(dir)
  end)

  it("returns rows keyed by column name: integers, floats, text, blobs; a NULL column is absent", function()
    local c = srv:connect()
    assert.equal('v1 2 rows {avatar="\\x00\\xffA",name="alice",note="first",quota=10,ratio=0.5} ' ..
      '{name="bob",quota=20,ratio=1.25}', text(c, "NOOP rows"))
    c:close()
  end)

  it("binds ? parameters from strings, numbers, booleans and nil", function()
    local c = srv:connect()
    assert.equal('v1 1 rows {a="s",b=42,c=1.5,d=1,t="integer"}', text(c, "NOOP types"))
    assert.equal('v1 1 rows {name="bob",quota=20}', text(c, "NOOP user bob"))
    c:close()
  end)

  it("an injection attempt stays data: it matches nothing and drops nothing", function()
    local c = srv:connect()
    assert.equal("v1 0 rows", text(c, "NOOP user x' OR '1'='1"))
    assert.equal("v1 0 rows", text(c, "NOOP user bob'; DROP TABLE users; --"))
    assert.equal("v1 1 rows {n=2}", text(c, "NOOP count"))
    c:close()
  end)

  it("exec returns the number of changed rows; BEGIN and COMMIT go in one exec", function()
    local c = srv:connect()
    assert.equal("v1 1", text(c, "NOOP add carol 5"))
    assert.equal("v1 3", text(c, "NOOP bump"))
    assert.equal("v1 nil UNIQUE constraint failed: users.name", text(c, "NOOP add carol 6"))
    assert.equal('v1 2 nil transaction left open and rolled back (BEGIN and COMMIT go in one exec) ' ..
      '2 rows {what="x"} {what="y"}', text(c, "NOOP txn"))
    c:close()
  end)

  it("a readonly db reads and refuses writes with SQLite's message; a missing file is an error", function()
    local c = srv:connect()
    assert.truthy(text(c, "NOOP readonly"):match("^v1 %d+ nil attempt to write a readonly database " ..
      "smtpd%.sqlite%.db %(.*/users%.db, readonly%)$"))
    assert.equal("v1 nil unable to open database file", text(c, "NOOP missing"))
    c:close()
  end)

  it("bad SQL, a missing table and a wrong parameter count are nil, err", function()
    local c = srv:connect()
    assert.equal('v1 nil near "SELEKT": syntax error', text(c, "NOOP badsql"))
    assert.equal("v1 no such table: nosuch", text(c, "NOOP notable"))
    assert.equal("v1 nil 2 parameters expected, 1 given", text(c, "NOOP fewer"))
    assert.equal("v1 nil 1 parameters expected, 2 given", text(c, "NOOP more"))
    assert.equal("v1 nil query runs one statement (exec runs several)", text(c, "NOOP two"))
    c:close()
  end)

  it("a parameter SQLite cannot take raises a readable error", function()
    local c = srv:connect()
    assert.equal(451, (c:cmd("NOOP badparam")))
    c:close()
    u.wait_log(srv, "bad argument #2 to 'query' (expected a string, number, boolean or nil, got table)")
    c = srv:connect()
    assert.equal(451, (c:cmd("NOOP badopen")))
    assert.equal(451, (c:cmd("NOOP badself")))
    c:close()
    u.wait_log(srv, "bad argument #2 to 'open' (readonly must be a boolean)")
    u.wait_log(srv, "bad argument #1 to 'query' (expected smtpd.sqlite.db, got table)")
  end)

  it("serves another client while one hook waits on a slow statement", function()
    local a, b = srv:connect(), srv:connect()
    assert(a:send("NOOP slow\r\n"))
    assert.equal("v1 ok", text(b, "NOOP"))
    assert.is_nil((a:reply(0.05)), "the slow statement answered before the other client")
    local code, t = a:reply(30)
    assert.equal(250, code)
    assert.equal("v1 1 rows {n=3000000}", t)
    a:close()
    b:close()
  end)

  it("a client that disconnects mid-statement: it finishes, its result is dropped, nothing leaks", function()
    local b = srv:connect()
    local fds = assert(hu.fd_count(srv.pid))
    local a = srv:connect()
    assert(a:send("NOOP slow\r\n"))
    assert.equal("v1 ok", text(b, "NOOP"))
    a:close()
    u.wait_log(srv, "abandoning suspended hook handle_NOOP")
    u.wait_log(srv, "db:query finished after its hook went away: result dropped", 1, 30)
    hu.wait_until(function() return hu.fd_count(srv.pid) == fds end, 10, "a's descriptor to close")
    assert.truthy(text(b, "NOOP user bob"):match('^v1 1 rows {name="bob",quota=%d+}$'))
    b:close()
  end)

  it("1,000 then 10,000 statements: descriptors and RSS stay flat", function()
    local c = srv:connect()
    c.timeout = 120
    assert.equal("v1 looped 1000", text(c, "NOOP loop 1000"))
    local fds, rss = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
    assert.equal("v1 looped 10000", text(c, "NOOP loop 10000"))
    local fds2, rss2 = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
    io.stdout:write(("\nsqlite: 10,000 jobs; fds %d -> %d; VmRSS %d -> %d KiB\n"):format(fds, fds2, rss, rss2))
    assert.equal(fds, fds2)
    assert(hu.sanitized(srv.pid) or rss2 - rss < 2048, ("RSS grew by %d KiB"):format(rss2 - rss))
    c:close()
  end)

  it("the script's top level cannot wait: the load fails with a readable error", function()
    local status, out = testing.check{ source = 'require("smtpd").sqlite.open("/tmp/x.db")\n' }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("smtpd.sqlite.open: cannot wait while the script loads", 1, true), out)
  end)
end)

describe("smtpd.sqlite, hook_timeout and reload", function()
  local dir
  before_each(function()
    dir = u.tempdir()
    make_db(dir)
  end)
  after_each(function() u.rmdir(dir) end)

  it("hook_timeout mid-statement: 451; the thread finishes it and serves the next one", function()
    local srv = testing.start{ source = source("v1", dir, { hook_timeout = 0.3 }),
      options = { thread_pool_size = 1 } }
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(451, (c:cmd("NOOP slow")))
      u.wait_log(srv, "handle_NOOP still waiting for db:query after hook_timeout")
      u.wait_log(srv, "db:query finished after its hook went away: result dropped", 1, 30)
      assert.equal('v1 1 rows {name="bob",quota=20}', text(c, "NOOP user bob"))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("a db file replaced by a rename (a rebuilt user store) is read afresh by every thread", function()
    local srv = testing.start{ source = source("v1", dir) }
    local ok, err = pcall(function()
      local c = srv:connect()
      -- More calls than threads: every pool thread has its connection open.
      for _ = 1, 8 do assert.equal("v1 1 rows {n=2}", text(c, "NOOP count")) end
      local out = u.sh(("sqlite3 %s %s && mv %s %s; echo exit=$?"):format(u.shell_quote(dir .. "/new.db"),
        u.shell_quote("CREATE TABLE users (name TEXT, quota INTEGER); INSERT INTO users VALUES ('zed', 1);"),
        u.shell_quote(dir .. "/new.db"), u.shell_quote(dir .. "/users.db")), 30)
      assert.truthy(out:find("exit=0", 1, true), out)
      for _ = 1, 8 do assert.equal("v1 1 rows {n=1}", text(c, "NOOP count")) end
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("a result the Lua heap could not hold is refused on the thread: nil, err", function()
    local srv = testing.start{ source = source("v1", dir), options = { lua_memory_limit = 4 } }
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal("v1 nil result larger than lua_memory_limit (4 MiB)", text(c, "NOOP big"))
      assert.equal('v1 1 rows {name="bob",quota=20}', text(c, "NOOP user bob"))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("a statement running when SIGHUP arrives completes on its generation", function()
    local srv = u.start{ source = source("v1", dir) }
    local ok, err = pcall(function()
      local a = srv:connect()
      assert(a:send("NOOP slow\r\n"))
      u.reload(srv, source("v2", dir), 2)
      assert.equal("v1 1 rows {n=3000000}", select(2, a:reply(30)))
      assert.equal("v1 ok", text(a, "NOOP"))
      a:close()
      local b = srv:connect()
      assert.equal('v2 1 rows {name="bob",quota=20}', text(b, "NOOP user bob"))
      b:close()
    end)
    u.stop(srv)
    if not ok then error(err, 0) end
  end)
end)
