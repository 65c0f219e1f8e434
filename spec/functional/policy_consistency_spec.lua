-- Every worker runs the same policy, and a reload never freezes serving.
--
-- The master keeps the bytes of the script it last validated (a memfd every
-- worker inherits): a restarted worker loads those, not whatever the file
-- holds by then, and a reload is validated once, in the master, before any
-- worker swaps. A new generation is built on a thread of its own, so a slow
-- top level does not stop other clients from being served.
local u = require "spec.functional.reload_util"

local SIGKILL = 9

-- NOOP answers "<version> pid <pid>". `slow` seconds of busy top level.
local function script(version, slow)
  return ([[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local slow = %s
if slow > 0 then
  local t = os.time()
  while os.time() - t < slow do end
end
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  return "250 %s pid " .. ffi.C.getpid()
end
]]):format(tostring(slow or 0), version)
end

local BROKEN = "function handle_NOOP(\n  this is not Lua\n"

local function ask(srv) return u.ask_worker(srv, 10) end

-- Asks until both of `pids` answered (bounded); returns pid -> version.
local function ask_both(srv, pids, max)
  return u.ask_until(srv, function(seen) return seen[pids[1]] and seen[pids[2]] end, max,
    "both workers answering", 10)
end

local wait_workers = u.wait_workers

-- Kills worker `victim` and returns the pids of the two workers after its
-- replacement started.
local function replace_worker(srv, victim)
  assert.is_true(u.kill(victim, SIGKILL))
  return wait_workers(srv, 2, { victim })
end

describe("--workers 2 run one policy", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("a worker restarted after the file was broken (no reload) runs the last validated script", function()
    srv = u.start{ source = script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    u.write_file(srv.script, BROKEN)
    local now = replace_worker(srv, kids[1])
    local seen = ask_both(srv, now, 200)
    for _, pid in ipairs(now) do assert.equal("v1", seen[pid]) end
    -- and it does not crash-loop: no worker failed to load
    assert.equal(0, u.count(srv:stderr(), "cannot load handler"))
    assert.equal(0, u.count(srv:stderr(), "exited with status"))
  end)

  it("a worker restarted after the file was edited (no reload) runs what the others run", function()
    srv = u.start{ source = script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    u.write_file(srv.script, script("v2"))
    local now = replace_worker(srv, kids[2])
    local seen = ask_both(srv, now, 200)
    for _, pid in ipairs(now) do assert.equal("v1", seen[pid]) end
    -- A reload then takes every worker to v2.
    srv:signal("HUP")
    u.wait_log(srv, "loaded (policy generation 2)", 2)
    seen = ask_both(srv, now, 200)
    for _, pid in ipairs(now) do assert.equal("v2", seen[pid]) end
  end)

  it("a broken script is refused once, in the master, and no worker changes", function()
    srv = u.start{ source = script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    u.write_file(srv.script, BROKEN)
    srv:signal("HUP")
    local log = u.wait_log(srv, "reload refused, workers keep their generation")
    assert.truthy(log:find("handler.lua:%d+:"), "the refusal names file:line\n" .. log)
    local seen = ask_both(srv, kids, 200)
    for _, pid in ipairs(kids) do assert.equal("v1", seen[pid]) end
    log = srv:stderr()
    assert.equal(1, u.count(log, "reload refused"))
    assert.equal(0, u.count(log, "reloading " .. srv.script))
  end)

  it("serves while the master validates a script whose top level takes 3 s", function()
    srv = u.start{ source = script("v1"), args = { "--workers", "2" } }
    wait_workers(srv, 2)
    u.write_file(srv.script, script("v2", 3))
    srv:signal("HUP")
    u.wait_log(srv, "SIGHUP received: validating")
    local version = ask(srv)
    assert.equal("v1", version)
    -- answered while the reload was still loading
    assert.equal(0, u.count(srv:stderr(), "loaded (policy generation 2)"))
    u.wait_log(srv, "loaded (policy generation 2)", 2, 30)
    assert.equal("v2", (ask(srv)))
  end)
end)

describe("one process", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("answers another client's NOOP while a reload's top level takes 3 s", function()
    srv = u.start{ source = script("v1") }
    local c = srv:connect({ timeout = 10 })
    u.write_file(srv.script, script("v2", 3))
    srv:signal("HUP")
    u.wait_log(srv, "SIGHUP received: reloading")
    local code, text = c:cmd("NOOP")
    assert.equal(250, code)
    assert.truthy(text:find("^v1 pid "), text)
    local fresh = ask(srv)
    assert.equal("v1", fresh)
    assert.equal(0, u.count(srv:stderr(), "loaded (policy generation 2)"),
      "the NOOP was answered only after the reload had loaded")
    u.wait_log(srv, "loaded (policy generation 2)", 1, 30)
    assert.equal("v2", (ask(srv)))
    -- the session that began on v1 finishes on v1
    code, text = c:cmd("NOOP")
    assert.equal(250, code)
    assert.truthy(text:find("^v1 pid "), text)
    c:close()
  end)

  it("queues a SIGHUP that arrives during a reload and applies the last script", function()
    srv = u.start{ source = script("v1") }
    u.write_file(srv.script, script("v2", 2))
    srv:signal("HUP")
    u.wait_log(srv, "SIGHUP received: reloading")
    u.write_file(srv.script, script("v3"))
    srv:signal("HUP")
    u.wait_log(srv, "a reload is still loading; another follows it")
    u.wait_log(srv, "loaded (policy generation 3)", 1, 30)
    assert.equal("v3", (ask(srv)))
  end)
end)
