-- Privilege drop: started as root, luasmtpd binds, then runs as nobody (or
-- --user USER[:GROUP]); -n keeps root. Checked in /proc/PID/status of the
-- single process and of each worker under --workers 2. Needs root: the
-- suite runs as root (CI, the team's machines); as anyone else it is pending.
local socket = require "socket"
local testing = require "smtpd.testing"

local is_root = io.popen("id -u"):read("*l") == "0"

local function status_of(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local function ids(field)
    local t = {}
    for n in (text:match("\n" .. field .. ":([^\n]*)") or ""):gmatch("%d+") do t[#t + 1] = tonumber(n) end
    return t
  end
  return { uid = ids("Uid"), gid = ids("Gid"), groups = ids("Groups") }
end

local function id_of(flag, user)
  return tonumber(io.popen("id " .. flag .. " " .. user):read("*l"))
end

-- The worker pids under a master: its children, once all are up (bounded).
local function children(pid, want)
  local deadline = socket.gettime() + 10
  repeat
    local f = io.open(("/proc/%d/task/%d/children"):format(pid, pid))
    local t = {}
    if f then
      for n in f:read("*a"):gmatch("%d+") do t[#t + 1] = tonumber(n) end
      f:close()
    end
    if #t >= want then return t end
    socket.sleep(0.05)
  until socket.gettime() > deadline
  return {}
end

-- All four Uid: fields (real, effective, saved, filesystem) and all four
-- Gid: fields are the target; no supplementary group is root's.
local function assert_dropped(pid, uid, gid)
  local st = assert(status_of(pid), "no /proc entry for " .. pid)
  assert.same({ uid, uid, uid, uid }, st.uid)
  assert.same({ gid, gid, gid, gid }, st.gid)
  for _, g in ipairs(st.groups) do assert.are_not.equal(0, g) end
end

local function greets(srv)
  local c = assert(srv:connect())
  local code = c:cmd("NOOP")
  c:close()
  return code
end

local describe_root = is_root and describe or pending

describe_root("privilege drop (started as root)", function()
  it("runs as nobody:nogroup by default once listening", function()
    local srv = testing.start{ setuid = true }
    finally(function() srv:stop() end)
    assert.equal(250, greets(srv))
    assert_dropped(srv.pid, id_of("-u", "nobody"), id_of("-g", "nobody"))
    assert.matches("running as user nobody", srv:stderr(), 1, true)
  end)

  it("runs as --user USER with USER's primary group", function()
    local srv = testing.start{ user = "daemon" }
    finally(function() srv:stop() end)
    assert.equal(250, greets(srv))
    assert_dropped(srv.pid, id_of("-u", "daemon"), id_of("-g", "daemon"))
  end)

  it("runs as --user USER:GROUP with that group", function()
    local srv = testing.start{ user = "mail:news" }
    finally(function() srv:stop() end)
    assert.equal(250, greets(srv))
    assert_dropped(srv.pid, id_of("-u", "mail"), id_of("-g", "news"))
  end)

  it("drops in every worker under --workers 2; the master keeps root to restart them", function()
    local srv = testing.start{ setuid = true, args = { "--workers", "2" } }
    finally(function() srv:stop() end)
    local kids = children(srv.pid, 2)
    assert.equal(2, #kids)
    for _, pid in ipairs(kids) do assert_dropped(pid, id_of("-u", "nobody"), id_of("-g", "nobody")) end
    assert.same({ 0, 0, 0, 0 }, status_of(srv.pid).uid)
    assert.equal(250, greets(srv))
  end)

  it("drops to --user in every worker", function()
    local srv = testing.start{ user = "daemon", args = { "--workers", "2" } }
    finally(function() srv:stop() end)
    local kids = children(srv.pid, 2)
    assert.equal(2, #kids)
    for _, pid in ipairs(kids) do assert_dropped(pid, id_of("-u", "daemon"), id_of("-g", "daemon")) end
  end)

  it("stays root with -n (the testing helper's default)", function()
    local srv = testing.start{}
    finally(function() srv:stop() end)
    assert.equal(250, greets(srv))
    assert.same({ 0, 0, 0, 0 }, status_of(srv.pid).uid)
  end)

  it("refuses an unknown --user and --user with -n", function()
    local ok, err = pcall(testing.start, { user = "no-such-user-here" })
    assert.is_false(ok)
    assert.matches("no such user 'no-such-user-here'", tostring(err), 1, true)
    ok, err = pcall(testing.start, { user = "daemon", args = { "-n" } })
    assert.is_false(ok)
    assert.matches("contradict", tostring(err), 1, true)
  end)

  it("refuses a reload of a script the dropped user cannot read, keeping the old policy", function()
    -- The helper's directory is root's (0700): the first load runs as root,
    -- the reload as nobody.
    local srv = testing.start{ setuid = true,
      source = "function handle_NOOP() return '250 first' end" }
    finally(function() srv:stop() end)
    local c = assert(srv:connect())
    local code, text = c:cmd("NOOP")
    assert.same({ 250, "first" }, { code, text })
    c:close()
    srv:signal("HUP")
    local deadline = socket.gettime() + 10
    while not srv:stderr():find("reload refused", 1, true) and socket.gettime() < deadline do
      socket.sleep(0.05)
    end
    assert.matches("reload refused, keeping generation 1: .*Permission denied", srv:stderr())
    assert.matches("as user nobody", srv:stderr(), 1, true)
    c = assert(srv:connect())
    code, text = c:cmd("NOOP")
    assert.same({ 250, "first" }, { code, text })
    c:close()
  end)
end)
