-- The process model (design.md "Processes"): --workers 2 runs two workers
-- under a master; connections reach both; a worker that dies is restarted;
-- a worker stuck in a hook is killed by the watchdog while the other keeps
-- answering; SIGHUP reloads every worker; SIGTERM stops them all.
local socket = require "socket"
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"

local SIGKILL = 9

-- NOOP answers with the version and the worker's pid; "NOOP spin" never returns.
local function worker_script(version)
  return ([[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  if arg == "spin" then
    while true do end
  end
  return "250 %s pid " .. ffi.C.getpid()
end
]]):format(version)
end

-- Connects and asks NOOP; returns version and pid, or nil and what failed.
-- `timeout` bounds every read (a stuck worker never greets).
local ask = u.ask_worker

-- Opens `n` connections at once, then reads their greetings with one
-- shared deadline of `secs`; asks NOOP on those greeted. Returns the pids
-- that answered and the number of connections that got no greeting.
local function ask_batch(srv, n, secs)
  local conns = {}
  for i = 1, n do
    conns[i] = testing.connect(srv.host, srv.port, { greeting = false, timeout = secs }) or false
  end
  local deadline = socket.gettime() + secs
  local pids, missed = {}, 0
  for _, c in ipairs(conns) do
    local code = c and c:reply(math.max(0.01, deadline - socket.gettime()))
    local pid
    if code == 220 then
      local _, text = c:cmd("NOOP")
      pid = tonumber(tostring(text):match("pid (%d+)$"))
    end
    if pid then pids[#pids + 1] = pid else missed = missed + 1 end
    if c then c:close() end
  end
  return pids, missed
end

-- Asks new connections until `done(seen)` holds (seen: pid -> version of the
-- last reply), at most `max` connections; every connection must succeed.
local ask_until = u.ask_until

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- Waits until the master has `n` children, none of them in `gone` (pids).
local wait_workers = u.wait_workers

describe("--workers 2", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("answers connections from two different worker processes", function()
    srv = u.start{ source = worker_script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    local seen = ask_until(srv, function(s) return #keys(s) == 2 end, 200, "two worker pids")
    assert.same(kids, keys(seen))
    assert.not_equal(srv.pid, kids[1])
    assert.matches("master %(pid " .. srv.pid .. "%) starting 2 workers", srv:stderr())
  end)

  it("restarts a worker that is killed, and service goes on", function()
    srv = u.start{ source = worker_script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    local victim, survivor = kids[1], kids[2]
    assert.is_true(u.kill(victim, SIGKILL))
    local slot = u.wait_log_match(srv, "worker (%d+) %(pid " .. victim .. "%) killed by signal 9[^\n]*restarting")
    assert.truthy(slot)
    -- the master reaped it: every connection now succeeds
    local replacement = wait_workers(srv, 2, { victim })
    assert.truthy(replacement[1] == survivor or replacement[2] == survivor)
    local new_pid = replacement[1] == survivor and replacement[2] or replacement[1]
    assert.matches("worker " .. slot .. " started %(pid " .. new_pid .. "%)", u.wait_log(srv,
      "worker " .. slot .. " started (pid " .. new_pid .. ")"))
    local seen = ask_until(srv, function(s) return s[new_pid] and s[survivor] end, 200,
      "replies from the new worker and the survivor")
    -- a set: which worker answers first is up to the kernel
    local got, want = keys(seen), { survivor, new_pid }
    table.sort(got)
    table.sort(want)
    assert.same(want, got)
  end)

  it("lets the watchdog kill a worker stuck in `while true do end` while the other keeps answering", function()
    -- 5 s: on a loaded machine the other worker must get the chance to
    -- answer a batch before the watchdog ends the spin
    srv = u.start{ source = worker_script("v1"), args = { "--workers", "2", "--watchdog", "5" } }
    wait_workers(srv, 2)
    local stuck = srv:connect()
    local code, text = stuck:cmd("NOOP")
    assert.equal(250, code)
    local stuck_pid = tonumber(text:match("pid (%d+)$"))
    assert(stuck:send("NOOP spin\r\n"))
    -- while the worker spins, the other one answers new connections
    local answered, unanswered = 0, 0
    local line = "watchdog: worker "
    u.wait_until(function()
      if u.count(srv:stderr(), line) > 0 then return true end
      -- a batch of connections at once: those on the stuck worker are never
      -- greeted, so they cost one shared timeout, not one each
      local pids, missed = ask_batch(srv, 8, 1)
      for _, pid in ipairs(pids) do assert.not_equal(stuck_pid, pid) end
      answered, unanswered = answered + #pids, unanswered + missed
      return false
    end, 30, "the watchdog's log line", u.log_tail(srv))
    assert.is_true(answered > 0, ("%d answered, %d not"):format(answered, unanswered))
    local slot, pid, secs, session = u.wait_log_match(srv, "watchdog: worker (%d+) %(pid (%d+)%) has not turned " ..
      "its event loop for ([%d.]+) s %(running: handle_NOOP %[(s%d+)%]%); killing it")
    assert.equal(stuck_pid, tonumber(pid))
    assert.is_true(tonumber(secs) >= 5)
    assert.truthy(session)
    u.wait_log_match(srv, "worker " .. slot .. " %(pid " .. pid .. "%) killed by signal 9[^\n]*restarting")
    assert.is_true(stuck:is_closed(5))
    stuck:close()
    -- the replacement serves too
    wait_workers(srv, 2, { stuck_pid })
    local seen = ask_until(srv, function(s) return #keys(s) == 2 end, 200, "two worker pids after the restart")
    assert.is_nil(seen[stuck_pid])
  end)

  it("lets the watchdog kill workers that get stuck right after they started", function()
    srv = u.start{ source = worker_script("v1"), args = { "--workers", "2", "--watchdog", "1" } }
    -- at once, before a worker's loop has turned for long: stall each worker
    local stuck, conns, n = {}, {}, 0
    while #keys(stuck) < 2 and n < 50 do
      n = n + 1
      local c = testing.connect(srv.host, srv.port, { timeout = 0.5 })
      if c then
        conns[#conns + 1] = c
        local code, text = c:cmd("NOOP")
        local pid = code == 250 and tonumber(text:match("pid (%d+)$"))
        if pid then
          stuck[pid] = true
          c:send("NOOP spin\r\n")
        end
      end
    end
    local pids = keys(stuck)
    assert.equal(2, #pids, "could not reach both workers")
    srv.worker_pids = pids
    for _, pid in ipairs(pids) do
      u.wait_log_match(srv, "watchdog: worker %d+ %(pid " .. pid .. "%) has not turned its event loop " ..
        "for [%d.]+ s %(running: handle_NOOP %[s%d+%]%); killing it", 15)
    end
    for _, c in ipairs(conns) do c:close() end
    -- replaced: two fresh workers answer
    wait_workers(srv, 2, pids)
    local seen = ask_until(srv, function(s) return #keys(s) == 2 end, 200, "two new workers")
    for _, pid in ipairs(pids) do assert.is_nil(seen[pid]) end
  end)

  it("reloads every worker on SIGHUP to the master", function()
    srv = u.start{ source = worker_script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    local before = ask_until(srv, function(s) return #keys(s) == 2 end, 200, "both workers on v1")
    for _, v in pairs(before) do assert.equal("v1", v) end
    -- an open session keeps its generation
    local open = srv:connect()
    local _, open_text = open:cmd("NOOP")
    u.reload(srv, worker_script("v2"), 2, 2)
    local after = ask_until(srv, function(s) return #keys(s) == 2 end, 200, "both workers after the reload")
    assert.same(kids, keys(after))
    for pid, v in pairs(after) do assert.equal("v2", v, "worker " .. pid) end
    local _, again = open:cmd("NOOP")
    assert.equal(open_text, again)
    assert.matches("^v1 pid", again)
    open:close()
  end)

  it("reloads, without killing it, a restarted worker that is still loading its script at the SIGHUP", function()
    local dir = u.tempdir()
    local marker = dir .. "/loads"
    -- the top level notes which process loads it, then takes a second
    local function slow_script(version)
      return ([[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local f = io.open(%q, "a")
f:write(ffi.C.getpid(), "\n")
f:close()
-- a second of wall-clock time (a blocking sleep, as a slow DNS lookup would be)
pcall(require("ffi").cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
require("ffi").C.poll(nil, 0, 1000)
]]):format(marker) .. worker_script(version)
    end
    local ok, err = pcall(function()
      srv = u.start{ source = slow_script("v1"), args = { "--workers", "2", "--load-timeout", "30" } }
      local kids = wait_workers(srv, 2)
      local known = { [srv.pid] = true, [kids[1]] = true, [kids[2]] = true }
      assert.is_true(u.kill(kids[1], SIGKILL))
      -- wait until the replacement runs the script's top level
      local new_pid = u.wait_until(function()
        for pid in u.read_file(marker):gmatch("%d+") do
          if not known[tonumber(pid)] then return tonumber(pid) end
        end
      end, 15, "the replacement worker to load the script", u.log_tail(srv))
      u.write_file(srv.script, slow_script("v2"))
      srv:signal("HUP")
      local seen = {}
      u.wait_until(function()
        if not u.alive(new_pid) then return true end
        local version, pid = ask(srv)
        assert(version, pid)
        seen[pid] = version
        return seen[new_pid] == "v2" and seen[kids[2]] == "v2"
      end, 20, "both workers to answer v2", u.log_tail(srv))
      assert.is_true(u.alive(new_pid), "the worker that was loading died at the SIGHUP\n" .. u.log_tail(srv)())
      assert.equal(0, u.count(srv:stderr(), "killed by signal 1"), u.log_tail(srv)())
      assert.equal("v2", seen[new_pid])
      assert.equal("v2", seen[kids[2]])
    end)
    u.rmdir(dir)
    if not ok then error(err, 0) end
  end)

  it("stops master and workers on SIGTERM", function()
    srv = u.start{ source = worker_script("v1"), args = { "--workers", "2" } }
    local kids = wait_workers(srv, 2)
    srv.worker_pids = kids   -- after_each kills any that survive
    local master = srv.pid
    local idle = srv:connect()
    assert.equal(0, srv:stop())
    u.wait_until(function()
      if u.alive(master) then return false end
      for _, k in ipairs(kids) do
        if u.alive(k) then return false end
      end
      return true
    end, 10, "master and workers to exit")
    assert.matches("master stopped", srv:stderr())
    -- the idle session was told
    local code, text = idle:reply(5)
    assert.equal(421, code, text)
    assert.equal("4.3.2 mx.test Error: server shutting down, try again later", text)
    idle:close()
  end)
end)

-- --ready-fd (issue 9): the ready line waits for every worker's current
-- process, not for N ready lines (a worker restarted during start-up would
-- be counted twice while another has not listened yet).
describe("--workers 2 --ready-fd with a worker restarted during start-up", function()
  local dir, proc
  after_each(function()
    if proc then
      for _, pid in ipairs(u.children(proc.pid)) do u.kill(pid, SIGKILL) end
      proc.kill()
    end
    u.rmdir(dir)
    dir, proc = nil, nil
  end)

  it("writes the ready line only once the other worker listens too", function()
    dir = u.tempdir()
    local gate = dir .. "/gate"
    -- Worker slot 1 holds its start-up until the spec opens the gate (at
    -- most 20 s); the master and worker 0 load at once.
    u.write_file(dir .. "/handler.lua", ([[
local f = io.open("/proc/self/cmdline")
local cmdline = f and f:read("*a") or ""
if f then f:close() end
if cmdline:find("--worker-slot\0" .. "1\0", 1, true) then
  local t0 = os.time()
  while os.time() - t0 < 20 do
    local g = io.open(%q)
    if g then g:close() break end
    os.execute("sleep 0.05")
  end
end
]]):format(gate) .. worker_script("v1"))
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    local bin = os.getenv("LUASMTPD_BIN")
    if not bin or bin == "" then bin = "build/luasmtpd" end
    local ready_path, err_path = dir .. "/ready", dir .. "/err"
    local function q(v) return "'" .. v:gsub("'", "'\\''") .. "'" end
    local p = assert(io.popen(("%s --handler %s -l 127.0.0.1:%d --workers 2 -n --load-timeout 30 " ..
      "--ready-fd 3 3>%s </dev/null >/dev/null 2>%s & echo $!"):format(q(bin), q(dir .. "/handler.lua"),
      port, q(ready_path), q(err_path))))
    local pid = tonumber(p:read("*l"))
    p:close()
    proc = { pid = pid, kill = function()
      if u.alive(pid) then u.kill(pid, 15) end
      pcall(u.wait_until, function() return not u.alive(pid) end, 10, "the master to exit")
    end }
    local srv = { host = "127.0.0.1", port = port, pid = pid, stderr = function() return u.read_file(err_path) end }
    -- A worker's pid from NOOP; failures (nobody listening yet, or a
    -- connection queued for a killed worker) are retried, bounded.
    local function answering_pid(other_than)
      return u.wait_until(function()
        local _, got = ask(srv, 2)
        return type(got) == "number" and got ~= other_than and got
      end, 20, "a worker other than " .. tostring(other_than), u.log_tail(srv))
    end
    -- Worker 0 listens (worker 1 is held): kill it once it answered.
    local first = answering_pid(nil)
    assert.is_true(u.kill(first, SIGKILL))
    -- Its replacement answers; worker 1 is still held, so no ready line yet.
    answering_pid(first)
    -- Give a wrong ready line the chance to show (it would follow the
    -- replacement's listen at once); its absence is what the fix must keep.
    pcall(u.wait_until, function() return u.read_file(ready_path) ~= "" end, 1, "an early ready line")
    local early = u.read_file(ready_path)
    u.write_file(gate, "")
    u.wait_until(function() return u.read_file(ready_path) ~= "" end, 20, "the ready line",
      u.log_tail(srv))
    assert.equal("", early)
    assert.matches("^ready 127%.0%.0%.1:" .. port .. "\n$", u.read_file(ready_path))
    assert.matches("w1 handler .- loaded %(policy generation 1%)", srv:stderr())
  end)
end)
