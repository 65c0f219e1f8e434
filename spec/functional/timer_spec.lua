-- smtpd.now, smtpd.update_time and smtpd.timer.at/every against the real
-- server (async-api.md 2 and 3): a timer's callback runs on its own
-- coroutine outside any session, may wait like a hook (hook_timeout bounds
-- each run), is logged with its position when it fails, and belongs to its
-- generation: a reload or shutdown runs each pending timer once with
-- premature = true and never again. What the callbacks did is seen through
-- a log the NOOP hook reports and through lines they write to stderr; the
-- order of events is asserted, never elapsed time.
local socket = require "socket"
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"
local su = require "spec.functional.socket_util"

-- NOTE lines go to stderr too, so a spec can wait for them in the log.
local SOURCE = [[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = 2 }
local log = {}
local function note(s)
  log[#log + 1] = s
  io.stderr:write("NOTE " .. s .. "\n")
end
-- Made while the script loads: it runs once the generation is live.
smtpd.timer.at(0, function(premature, a, b)
  note(("top %s %s %s"):format(tostring(premature), a, b))
end, "x", "y")
local cancelled = smtpd.timer.at(0, function() note("a cancelled timer ran") end)
local top_cancel = tostring(cancelled:cancel()) .. " " .. tostring(cancelled:cancel())
local notes_at_load = #log
local top_now = smtpd.now()
local fired

function handle_NOOP(server, session, envelope, arg)
  arg = arg or ""
  if arg == "log" then return "250 [" .. table.concat(log, ",") .. "]" end
  if arg == "load" then return ("250 %d %s"):format(notes_at_load, top_cancel) end
  local delay, tag = arg:match("^at ([%d.]+) (%S+)$")
  if delay then
    smtpd.timer.at(tonumber(delay), function(premature, t) note("at " .. t .. " " .. tostring(premature)) end, tag)
    return "250 armed"
  end
  if arg == "cancel" then
    local t = smtpd.timer.at(60, function() note("a cancelled timer ran") end)
    return "250 " .. tostring(t:cancel()) .. " " .. tostring(t:cancel())
  end
  if arg == "fire" then
    fired = smtpd.timer.at(0, function() note("fired") end)
    return "250 armed"
  end
  if arg == "cancel fired" then return "250 " .. tostring(fired:cancel()) end
  if arg == "every" then
    local n, inside, handle = 0, false, nil
    handle = smtpd.timer.every(0.05, function(premature)
      if inside then note("re-entered") end
      inside = true
      n = n + 1
      smtpd.sleep(0.3)          -- several intervals: ticks come while it waits
      inside = false
      note("every " .. n .. " " .. tostring(premature))
      if n == 3 then note("cancel " .. tostring(handle:cancel()) .. " " .. tostring(handle:cancel())) end
    end)
    return "250 " .. tostring(handle)
  end
  if arg == "bad" then
    local out = {}
    for _, f in ipairs{
      function() smtpd.timer.at(-1, print) end,
      function() smtpd.timer.at("soon", print) end,
      function() smtpd.timer.at(0 / 0, print) end,
      function() smtpd.timer.at(1, "print") end,
      function() smtpd.timer.every(0, print) end,
      function() smtpd.timer.every(-1, print) end,
      function() smtpd.timer.every(1) end,
    } do
      local ok, e = pcall(f)
      out[#out + 1] = ok and "no error" or tostring(e):gsub("^.-:%d+: ", "")
    end
    return "250 " .. table.concat(out, " | ")
  end
  if arg == "max" then
    local made, first, t, err = 0, nil, nil, nil
    repeat
      t, err = smtpd.timer.at(60, print)
      if t then made = made + 1; first = first or t end
    until not t or made > 2000
    local again = smtpd.timer.at(60, print) == nil
    local freed = first:cancel()
    local after = smtpd.timer.at(60, print) ~= nil
    return ("250 %d %s %s %s %s"):format(made, tostring(err), tostring(again), tostring(freed), tostring(after))
  end
  if arg == "err" then
    smtpd.timer.at(0, function() error("boom in a timer") end)
    return "250 armed"
  end
  if arg == "yield" then
    smtpd.timer.at(0, function() coroutine.yield() note("yield resumed") end)
    return "250 armed"
  end
  if arg == "sleepy" then
    smtpd.timer.at(0, function()
      note("sleepy start")
      smtpd.sleep(1)
      note("sleepy done")
    end)
    return "250 armed"
  end
  if arg == "stuck" then
    smtpd.timer.at(0, function() smtpd.sleep(30) note("stuck woke") end)
    return "250 armed"
  end
  if arg == "now" then
    local a = smtpd.now()
    smtpd.update_time()
    local b = smtpd.now()
    return ("250 %.6f %.6f %.6f %d"):format(top_now, a, b, os.time())
  end
  return "250 OK"
end
]]

-- Runs fn(srv) and stops the server, which must exit cleanly (under ASan
-- a leak found at exit would make the status non-zero).
local function with_server(opts, fn)
  local srv = testing.start(opts)
  local ok, err = pcall(fn, srv)
  local status = srv:stop()
  if not ok then error(err, 0) end
  assert.equal(0, status, srv:stderr():sub(-3000))
  return srv
end

local function noop(c, arg)
  local code, text = c:cmd("NOOP " .. arg)
  assert.equal(250, code, tostring(text))
  return text
end

describe("smtpd.timer", function()
  h.run{
    { name = "argument errors raise readable messages (smtpd.timer.at never yields)",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP bad", "250 bad argument #1 to 'at' (expected a number of seconds >= 0)"
        .. " | bad argument #1 to 'at' (number expected, got string)"
        .. " | bad argument #1 to 'at' (expected a number of seconds >= 0)"
        .. " | bad argument #2 to 'at' (function expected, got string)"
        .. " | bad argument #1 to 'every' (expected a number of seconds > 0)"
        .. " | bad argument #1 to 'every' (expected a number of seconds > 0)"
        .. " | bad argument #2 to 'every' (function expected, got no value)" } } },

    { name = "handle:cancel() is true while the timer is pending, false after",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP cancel", "250 true false" } },
      stderr_lacks = { "a cancelled timer ran" } },

    { name = "timers made at the top level start once the generation is live, never while it loads",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP load", "250 0 true false" }, { "NOOP log", "250 [top false x y]" } },
      stderr_lacks = { "a cancelled timer ran" } },

    { name = "max_timers: nil, err once that many are pending; a cancel makes room",
      source = SOURCE, options = { max_timers = 3 },
      dialogue = { h.ehlo, { "NOOP max", "250 3 too many pending timers true true true" } } },

    { name = "max_timers defaults to 1024",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP max", "250 1024 too many pending timers true true true" } } },
  }

  it("a bad max_timers stops the load with the option's message", function()
    local status, out = testing.check{ source = SOURCE, args = { "-o", "max_timers=-1" } }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'max_timers' must be a non-negative integer", 1, true), out)
  end)

  it("at fires and its effect is visible to a later hook; a fired timer cancels as false", function()
    with_server({ source = SOURCE }, function(srv)
      local c = srv:connect()
      assert.equal("armed", noop(c, "at 0.05 a1"))
      u.wait_log(srv, "NOTE at a1 false")
      assert.equal("[top false x y,at a1 false]", noop(c, "log"))
      assert.equal("armed", noop(c, "fire"))
      u.wait_log(srv, "NOTE fired")
      assert.equal("false", noop(c, "cancel fired"))
      c:close()
    end)
  end)

  it("every repeats, is not re-entered while its run waits, and a cancel from its own run stops it", function()
    with_server({ source = SOURCE }, function(srv)
      local c = srv:connect()
      local text = noop(c, "every")
      assert.truthy(text:find("^smtpd%.timer t%d+ %(.*handler%.lua:%d+%)$"), text)
      u.wait_log(srv, "NOTE cancel true false")
      -- A marker after the cancel: a fourth run would have come first.
      assert.equal("armed", noop(c, "at 1 marker"))
      local log = u.wait_log(srv, "NOTE at marker false")
      assert.equal(0, u.count(log, "NOTE re-entered"))
      assert.equal(0, u.count(log, "NOTE every 4"))
      local i1, i2, i3 = log:find("NOTE every 1 false", 1, true), log:find("NOTE every 2 false", 1, true),
        log:find("NOTE every 3 false", 1, true)
      assert.truthy(i1 and i2 and i3 and i1 < i2 and i2 < i3, log)
      c:close()
    end)
  end)

  it("a callback that sleeps lets other clients be served, and outlives the client that made it", function()
    with_server({ source = SOURCE }, function(srv)
      local a = srv:connect()
      assert.equal("armed", noop(a, "sleepy"))
      u.wait_log(srv, "NOTE sleepy start")
      a:close() -- the timer belongs to no session
      local b = srv:connect()
      local text = noop(b, "log")
      assert.truthy(text:find("sleepy start", 1, true), text)
      assert.falsy(text:find("sleepy done", 1, true), "the sleeping timer finished before b was served")
      u.wait_log(srv, "NOTE sleepy done")
      assert.truthy(noop(b, "log"):find("sleepy done", 1, true))
      b:close()
    end)
  end)

  it("an error in a callback is logged with its position and traceback; the server goes on", function()
    local srv = with_server({ source = SOURCE }, function(srv)
      local c = srv:connect()
      assert.equal("armed", noop(c, "err"))
      u.wait_log(srv, "boom in a timer")
      assert.equal("OK", noop(c, "x"))
      c:close()
      local d = srv:connect()
      assert.equal("OK", noop(d, "x"))
      d:close()
    end)
    local log = srv:stderr()
    assert.truthy(log:find("ERROR timer t%d+ %([^)\n]*handler%.lua:%d+%) failed: [^\n]*handler%.lua:%d+: "
      .. "boom in a timer\\nstack traceback:"), log)
  end)

  it("a callback that yields with nothing to wait for fails, logged; the server goes on", function()
    local srv = with_server({ source = SOURCE }, function(srv)
      local c = srv:connect()
      assert.equal("armed", noop(c, "yield"))
      u.wait_log(srv, "yielded without waiting for anything")
      assert.equal("OK", noop(c, "x"))
      c:close()
    end)
    local log = srv:stderr()
    assert.truthy(log:find("ERROR timer (t%d+) %([^)\n]*handler%.lua:%d+%) failed: timer %1 %([^)\n]*%) yielded "
      .. "without waiting for anything"), log)
    assert.falsy(log:find("yield resumed", 1, true), log)
  end)

  it("hook_timeout ends a callback's run mid-wait and is logged; the server goes on", function()
    local srv = with_server({ source = SOURCE }, function(srv)
      local c = srv:connect()
      assert.equal("armed", noop(c, "stuck"))
      u.wait_log(srv, "after hook_timeout (2 s)")
      assert.equal("OK", noop(c, "x"))
      c:close()
    end)
    local log = srv:stderr()
    assert.truthy(log:find("ERROR timer (t%d+) %([^)\n]*handler%.lua:%d+%) failed: timer %1 %([^)\n]*%) still "
      .. "waiting for smtpd.sleep after hook_timeout %(2 s%)"), log)
    assert.falsy(log:find("stuck woke", 1, true), log)
  end)

  it("smtpd.now is the loop's time in seconds since the epoch; update_time refreshes it", function()
    with_server({ source = SOURCE }, function(srv)
      local c = srv:connect()
      local top, a, b, os_time = noop(c, "now"):match("^(%S+) (%S+) (%S+) (%S+)$")
      top, a, b, os_time = tonumber(top), tonumber(a), tonumber(b), tonumber(os_time)
      assert.truthy(top and a and b and os_time)
      assert.is_true(top <= a and a <= b, ("%f %f %f"):format(top, a, b))
      assert.is_true(math.abs(b - os_time) < 60, ("%f vs %d"):format(b, os_time))
      assert.is_true(b ~= math.floor(b) or a ~= math.floor(a), "not a float")
      c:close()
    end)
  end)
end)

-- The old generation's timers, seen through lines their callbacks write.
local function gen_source(gen, extra)
  return ([[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = 5 }
local function line(s) io.stderr:write(s .. "\n") end
local function cb(premature, tag) line(("RUN %s premature=%s"):format(tag, tostring(premature))) end
smtpd.timer.at(60, cb, "g%d-at")
smtpd.timer.every(60, cb, "g%d-every")
smtpd.timer.at(0, cb, "g%d-now")
function handle_NOOP(server, session, envelope, arg)
  if arg == "hold" then
    smtpd.timer.at(60, cb, "g%d-noop")
    return "250 held"
  end
  if arg == "make" then
    local t, err = smtpd.timer.at(0, cb, "g%d-make")
    return "250 " .. tostring(t ~= nil) .. " " .. tostring(err)
  end
  if arg == "sleepy" then
    smtpd.timer.at(0, function(premature)
      line("SLEEPY start g%d premature=" .. tostring(premature))
      smtpd.sleep(2)
      line("SLEEPY done g%d")
    end)
    return "250 armed"
  end
  if arg == "busy" then
    local t
    t = smtpd.timer.every(0.05, function(premature)
      line("BUSY start g%d premature=" .. tostring(premature))
      if not premature then smtpd.sleep(2) end
      line("BUSY done g%d premature=" .. tostring(premature))
    end)
    return "250 armed"
  end
  return "250 g%d"
end
]]):gsub("%%d", tostring(gen)) .. (extra or "")
end

describe("smtpd.timer across a reload", function()
  local srv
  after_each(function()
    local status = u.stop(srv)
    local log = srv and srv:stderr() or ""
    srv = nil
    assert.equal(0, status, log:sub(-3000))
  end)

  it("runs each pending timer of the old generation once with premature = true; the new one's run normally",
    function()
    srv = u.start{ source = gen_source(1) }
    u.wait_log(srv, "RUN g1-now premature=false")
    local c = srv:connect()
    assert.equal("held", noop(c, "hold"))
    c:close()
    local log = u.reload(srv, gen_source(2), 2)
    for _, tag in ipairs{ "g1-at", "g1-every", "g1-noop" } do
      assert.equal(1, u.count(log, "RUN " .. tag .. " premature=true"), log)
      assert.equal(0, u.count(log, "RUN " .. tag .. " premature=false"), log)
    end
    u.wait_log(srv, "RUN g2-now premature=false")
    local d = srv:connect()
    assert.equal("g2", noop(d, "x"))
    d:close()
    u.reload(srv, gen_source(3), 3)
    u.wait_log(srv, "RUN g3-now premature=false")
    log = srv:stderr()
    -- generation 1's ran once and never again; generation 2's now once
    for _, tag in ipairs{ "g1-at", "g1-every", "g1-noop", "g2-at", "g2-every" } do
      assert.equal(1, u.count(log, "RUN " .. tag .. " premature=true"), log)
    end
    assert.equal(0, u.count(log, "RUN g3-at premature=true"), log)
    assert.equal(1, u.count(log, "RUN g2-now premature=false"))
    assert.equal(5, u.count(log, "premature=true"), log)
    assert.truthy(log:find("timer t%d+ %([^)\n]*handler%.lua:%d+%): generation retired, running it once with "
      .. "premature = true"), log)
  end)

  it("a session still on a retired generation gets nil, \"generation retired\" from smtpd.timer.at", function()
    srv = u.start{ source = gen_source(1) }
    local c = srv:connect()
    assert.equal("true nil", noop(c, "make"))
    u.wait_log(srv, "RUN g1-make premature=false")
    u.reload(srv, gen_source(2), 2)
    assert.equal("false generation retired", noop(c, "make"))
    assert.equal("true nil", noop(srv:connect(), "make"))
    u.wait_log(srv, "RUN g2-make premature=false")
    c:close()
  end)

  it("a callback waiting when SIGHUP arrives finishes on its generation", function()
    srv = u.start{ source = gen_source(1) }
    local c = srv:connect()
    assert.equal("armed", noop(c, "sleepy"))
    u.wait_log(srv, "SLEEPY start g1 premature=false")
    u.reload(srv, gen_source(2), 2)
    local log = u.wait_log(srv, "SLEEPY done g1")
    assert.is_true(log:find("loaded (policy generation 2)", 1, true) < log:find("SLEEPY done g1", 1, true))
    assert.equal("g2", noop(srv:connect(), "x"))
    c:close()
  end)

  it("an every timer whose run waits at the reload gets its premature run after that run ends", function()
    srv = u.start{ source = gen_source(1) }
    local c = srv:connect()
    assert.equal("armed", noop(c, "busy"))
    u.wait_log(srv, "BUSY start g1 premature=false")
    u.reload(srv, gen_source(2), 2)
    local log = u.wait_log(srv, "BUSY done g1 premature=true")
    local running_done = log:find("BUSY done g1 premature=false", 1, true)
    local premature_start = log:find("BUSY start g1 premature=true", 1, true)
    assert.truthy(running_done and premature_start and running_done < premature_start, log)
    assert.equal(1, u.count(log, "BUSY start g1 premature=true"))
    assert.equal(1, u.count(log, "BUSY start g1 premature=false"), log)
    c:close()
  end)

  it("a premature run may not wait longer than --drain-timeout", function()
    local extra = [[
smtpd.timer.at(60, function(premature)
  if premature then
    line("LONG start")
    smtpd.sleep(30)
    line("LONG woke")
  end
end)
]]
    srv = u.start{ source = gen_source(1, extra), args = { "--drain-timeout", "1" } }
    u.reload(srv, gen_source(2), 2)
    u.wait_log(srv, "LONG start")
    local log = u.wait_log(srv, "still waiting for smtpd.sleep after --drain-timeout (1 s)")
    assert.falsy(log:find("LONG woke", 1, true))
    assert.equal("g2", noop(srv:connect(), "x"))
  end)
end)

describe("smtpd.timer at shutdown and in check mode", function()
  it("SIGTERM runs the pending timers once with premature = true", function()
    local srv = testing.start{ source = gen_source(1) }
    local ok, err = pcall(function()
      u.wait_log(srv, "RUN g1-now premature=false")
      local c = srv:connect()
      assert.equal("held", noop(c, "hold"))
      c:close()
    end)
    local status = srv:stop()
    if not ok then error(err, 0) end
    assert.equal(0, status)
    local log = srv:stderr()
    for _, tag in ipairs{ "g1-at", "g1-every", "g1-noop" } do
      assert.equal(1, u.count(log, "RUN " .. tag .. " premature=true"), log)
    end
    assert.is_true(log:find("SIGTERM received", 1, true) < log:find("RUN g1-at premature=true", 1, true))
  end)

  it("the stop waits for a premature run that waits, and --drain-timeout bounds it", function()
    local extra = [[
smtpd.timer.at(60, function(premature)
  line("LATE start premature=" .. tostring(premature))
  smtpd.sleep(0.3)
  line("LATE done")
end)
smtpd.timer.at(60, function()
  line("LONG start")
  smtpd.sleep(30)
  line("LONG woke")
end)
]]
    local srv = testing.start{ source = gen_source(1, extra), args = { "--drain-timeout", "1" } }
    local ok, err = pcall(u.wait_log, srv, "RUN g1-now premature=false")
    local status = srv:stop()
    if not ok then error(err, 0) end
    local log = srv:stderr()
    assert.equal(0, status, log)
    local late, stopped = log:find("LATE done", 1, true), log:find("INFO stopped", 1, true)
    assert.truthy(late and stopped and late < stopped, log)
    assert.truthy(log:find("still waiting for smtpd.sleep after --drain-timeout (1 s)", 1, true), log)
    assert.falsy(log:find("LONG woke", 1, true), log)
    assert.truthy(log:find("still waiting", 1, true) < stopped, log)
  end)

  it("-t never runs a timer", function()
    local status, out = testing.check{ flag = "-t", source = [[
local smtpd = require "smtpd"
smtpd.timer.at(0, function(p) io.stderr:write("RAN IN CHECK " .. tostring(p) .. "\n") end)
smtpd.timer.every(0.01, function(p) io.stderr:write("RAN IN CHECK " .. tostring(p) .. "\n") end)
io.stderr:write("TOP LEVEL RAN\n")
]] }
    assert.equal(0, status, out)
    assert.truthy(out:find("TOP LEVEL RAN", 1, true), out)
    assert.falsy(out:find("RAN IN CHECK", 1, true), out)
  end)
end)

-- Under ASan freed memory sits in its quarantine, so an RSS bound would
-- measure that (its leak check at exit stands in). gcc links the runtime
-- as libasan.so, clang into the binary.
local function under_asan(pid)
  return u.read_file("/proc/" .. pid .. "/maps"):find("asan", 1, true) ~= nil or
    u.sh("grep -q AddressSanitizer /proc/" .. pid .. "/exe && echo sanitized"):find("sanitized", 1, true) ~= nil
end

-- Reads a growing log file from where the last call stopped.
local function log_reader(path)
  local offset, total = 0, {}
  return function(patterns)
    local f = io.open(path, "rb")
    for _, p in ipairs(patterns) do total[p] = total[p] or 0 end
    if not f then return total end
    f:seek("set", offset)
    local chunk = f:read("*a") or ""
    f:close()
    -- only whole lines, so a pattern is never split
    local last = chunk:match(".*()\n")
    if last then
      chunk = chunk:sub(1, last)
      offset = offset + #chunk
      for _, p in ipairs(patterns) do total[p] = (total[p] or 0) + u.count(chunk, p) end
    end
    return total
  end
end

describe("1,000 reloads with timers pending and a pooled cosocket", function()
  local RELOADS, WARMUP = 1000, 50
  local RSS_BOUND_KIB = 16 * 1024
  local FD_SLACK = 2

  it("leave descriptors and RSS flat, run each generation's pending timers once and close its pool", function()
    local peer = su.peer()
    local source = ([[
local smtpd = require "smtpd"
options = { auth_require_tls = false }
local function cb(premature, tag) if premature then tag.n = tag.n + 1 end end
for i = 1, 4 do smtpd.timer.at(60, cb, { n = 0 }, ("x"):rep(1000)) end
smtpd.timer.every(30, cb, { n = 0 })
-- each generation keeps one connection in its pool until it retires
smtpd.timer.at(0, function(premature)
  if premature then return end
  local s = smtpd.socket.tcp()
  local ok, err = s:connect("127.0.0.1", %d)
  if ok then ok, err = s:send("ECHO hi\n") end
  if ok then ok, err = s:receive() end
  if ok then ok, err = s:setkeepalive() end
  io.stderr:write("pooled: " .. tostring(ok) .. " " .. tostring(err) .. "\n")
end)
function handle_NOOP() return "250 OK" end
]]):format(peer.port)
    local srv = u.start{ source = source }
    local ok, err = pcall(function()
      local read = log_reader(srv.err_path)
      local LOADED, RETIRED = "loaded (policy generation ", "generation retired, running it once"
      local POOLED = "pooled: true nil"
      local gen = 1
      local function reload_to(n)
        while gen < n do
          gen = gen + 1
          srv:signal("HUP")
          local deadline = socket.gettime() + 20
          -- loaded, and its timer has put a connection in its pool
          while (read{ LOADED, RETIRED, POOLED })[POOLED] < gen do
            if socket.gettime() > deadline then error("generation " .. gen .. " not loaded\n" .. u.log_tail(srv)()) end
            socket.sleep(0.002)
          end
        end
      end
      reload_to(1 + WARMUP)
      local fd_before, rss_before = u.fd_count(srv.pid), u.rss_kb(srv.pid)
      reload_to(1 + WARMUP + RELOADS)
      local counts = read{ LOADED, RETIRED, POOLED }
      -- every generation but the live one retired its 5 pending timers
      assert.equal(5 * (WARMUP + RELOADS), counts[RETIRED])
      local c = srv:connect()
      assert.equal("OK", noop(c, "x"))
      c:close()
      local fd_after = u.wait_until(function()
        local n = u.fd_count(srv.pid)
        return n and math.abs(n - fd_before) <= FD_SLACK and n
      end, 10, "the descriptor count to settle")
      local rss_after = u.rss_kb(srv.pid)
      local sanitized = under_asan(srv.pid)
      io.stdout:write(("\n%d reloads: descriptors %d before, %d after; VmRSS %d KiB before, %d KiB after%s\n")
        :format(RELOADS, fd_before, fd_after, rss_before, rss_after,
          sanitized and " (ASan build: RSS not bounded)" or ""))
      if not sanitized then
        assert.is_true(rss_after - rss_before < RSS_BOUND_KIB,
          ("VmRSS grew from %d to %d KiB"):format(rss_before, rss_after))
      end
    end)
    u.stop(srv)
    su.stop(peer)
    if not ok then error(err, 0) end
  end)
end)

describe("10,000 timer runs that wait", function()
  local BATCH, BATCHES = 1000, 10
  local RSS_BOUND_KIB = 16 * 1024
  local FD_SLACK = 2

  it("leave descriptors and RSS flat", function()
    local source = [[
local smtpd = require "smtpd"
options = { auth_require_tls = false }
local done = 0
local function run(premature, payload)
  smtpd.sleep(0)
  done = done + #payload
end
function handle_NOOP(server, session, envelope, arg)
  local n = tonumber(arg and arg:match("^batch (%d+)$"))
  if n then
    for _ = 1, n do assert(smtpd.timer.at(0, run, ("x"):rep(1))) end
    return "250 armed"
  end
  return "250 " .. done
end
]]
    with_server({ source = source }, function(srv)
      local c = srv:connect()
      local target = 0
      local function batch()
        assert.equal("armed", noop(c, "batch " .. BATCH))
        target = target + BATCH
        u.wait_until(function() return tonumber(noop(c, "count")) == target end, 30,
          target .. " timer runs", u.log_tail(srv))
      end
      batch() -- warm-up
      local fd_before, rss_before = u.fd_count(srv.pid), u.rss_kb(srv.pid)
      for _ = 1, BATCHES do batch() end
      local fd_after, rss_after = u.fd_count(srv.pid), u.rss_kb(srv.pid)
      local sanitized = under_asan(srv.pid)
      io.stdout:write(("\n%d timer runs: descriptors %d before, %d after; VmRSS %d KiB before, %d KiB after%s\n")
        :format(BATCH * BATCHES, fd_before, fd_after, rss_before, rss_after,
          sanitized and " (ASan build: RSS not bounded)" or ""))
      assert.is_true(math.abs(fd_after - fd_before) <= FD_SLACK, ("descriptors %d -> %d"):format(fd_before, fd_after))
      if not sanitized then
        assert.is_true(rss_after - rss_before < RSS_BOUND_KIB,
          ("VmRSS grew from %d to %d KiB"):format(rss_before, rss_after))
      end
      assert.equal(0, u.count(srv:stderr(), "ERROR"), u.log_tail(srv)())
      c:close()
    end)
  end)
end)

describe("smtpd.timer with --workers 2", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("each worker runs its own generation's timers; the master, which only validates, runs none", function()
    local function source(v)
      return ([[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
local smtpd = require "smtpd"
options = { auth_require_tls = false }
local function line(what, premature)
  io.stderr:write(("WTIMER %s pid=%d premature=%s\n"):format(what, ffi.C.getpid(), tostring(premature)))
end
smtpd.timer.at(0, function(p) line("V-now", p) end)
smtpd.timer.at(60, function(p) line("V-later", p) end)
function handle_NOOP() return "250 V" end
]]):gsub("V", v)
    end
    srv = u.start{ source = source("v1"), args = { "--workers", "2" } }
    local kids = u.wait_workers(srv, 2)
    local is_kid = {}
    for _, k in ipairs(kids) do is_kid[k] = true end
    u.wait_log(srv, "WTIMER v1-now", 2)
    u.reload(srv, source("v2"), 2, 2)
    local log = u.wait_log(srv, "WTIMER v2-now", 2)
    local seen = {}
    for what, pid, premature in log:gmatch("WTIMER (%S+) pid=(%d+) premature=(%a+)") do
      pid = tonumber(pid)
      assert.is_true(is_kid[pid] == true, ("%s ran in pid %d, not a worker\n%s"):format(what, pid, log))
      local key = what .. " " .. premature
      seen[key] = (seen[key] or 0) + 1
    end
    assert.same({ ["v1-now false"] = 2, ["v1-later true"] = 2, ["v2-now false"] = 2 }, seen)
  end)
end)
