-- Helpers for the reload and worker specs (reload_spec.lua, workers_spec.lua):
-- a handler script kept in a file the spec rewrites, bounded waits on the
-- server's log, and what /proc says about the server's processes.
--
-- Every wait here has a deadline and polls a condition (a log line, a file,
-- a process); none sleeps as a way to synchronise.
local socket = require "socket"
local ffi = require "ffi"
local testing = require "smtpd.testing"

-- pcall: smtpd.testing or another spec may have declared them already.
pcall(ffi.cdef, "int kill(int pid, int sig);")

local M = {}

--- Seconds a `wait_*` helper waits by default.
M.wait_timeout = 10

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shell_quote = shell_quote

--- Writes `data` to `path` (replacing it).
function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

--- Output of a shell command (stdout and stderr), bounded by `timeout(1)`.
function M.sh(cmd, secs)
  local p = assert(io.popen("timeout " .. tostring(secs or 30) .. " sh -c " .. shell_quote(cmd) ..
    " </dev/null 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

--- A new temporary directory (the caller removes it with `rmdir`).
function M.tempdir()
  local tmp = os.getenv("TMPDIR")
  if not tmp or tmp == "" then tmp = "/tmp" end
  local dir = M.sh("mktemp -d " .. shell_quote(tmp .. "/luasmtpd-reload.XXXXXX")):match("^(%S+)\n$")
  assert(dir, "mktemp -d failed")
  return dir
end

function M.rmdir(dir)
  if dir and dir:match("^/.+/luasmtpd%-reload%.") then os.execute("rm -rf " .. shell_quote(dir)) end
end

--- Polls `cond` (every 20 ms) until it returns a true value or `secs` pass.
-- Returns what `cond` returned; on timeout raises an error naming `what`
-- (`detail`, a function, adds text to the error, e.g. the server's log).
function M.wait_until(cond, secs, what, detail)
  local deadline = socket.gettime() + (secs or M.wait_timeout)
  while true do
    local v = cond()
    if v then return v end
    if socket.gettime() >= deadline then
      error(("timed out after %s s waiting for %s%s"):format(tostring(secs or M.wait_timeout), what,
        detail and ("\n" .. detail()) or ""), 2)
    end
    socket.sleep(0.02)
  end
end

--- Number of (plain, non-overlapping) occurrences of `s` in `text`.
function M.count(text, s)
  local n, i = 0, 1
  while true do
    local a, b = text:find(s, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

local function log_tail(srv)
  return function() return "--- server stderr (last 4000 octets) ---\n" .. srv:stderr():sub(-4000) end
end
M.log_tail = log_tail

--- Waits until the server's stderr holds at least `n` (default 1)
-- occurrences of the plain string `s`; returns the stderr.
function M.wait_log(srv, s, n, secs)
  n = n or 1
  return M.wait_until(function()
    local text = srv:stderr()
    return M.count(text, s) >= n and text
  end, secs, ("%d occurrence(s) of %q in the server's log"):format(n, s), log_tail(srv))
end

--- Waits until the server's stderr matches the Lua pattern `p`; returns
-- the captures (or the whole match).
function M.wait_log_match(srv, p, secs)
  local caps
  M.wait_until(function()
    caps = { srv:stderr():match(p) }
    return #caps > 0
  end, secs, ("a log line matching %q"):format(p), log_tail(srv))
  return unpack(caps)
end

--- Starts a server whose handler is a file the spec may rewrite.
-- `opts` as for `testing.start`, plus `source` (the first script). Returns
-- the server and the script's path; `stop` (below) removes both.
function M.start(opts)
  local dir = M.tempdir()
  local path = dir .. "/handler.lua"
  M.write_file(path, opts.source)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.source, o.handler = nil, path
  local ok, srv = pcall(testing.start, o)
  if not ok then
    M.rmdir(dir)
    error(srv, 2)
  end
  srv.script_dir, srv.script = dir, path
  return srv, path
end

--- Stops a server from `start` and removes its script directory. With
-- `--workers`, a worker still alive after the master stopped (e.g. one stuck
-- in a hook when `stop` had to SIGKILL the master) is killed, so no spec
-- leaves a spinning process behind (`srv.worker_pids`, if set, are checked
-- too: for a spec that stopped the master itself). Returns the master's exit status.
function M.stop(srv)
  if not srv then return end
  local kids = srv:running() and M.children(srv.pid) or {}
  for _, pid in ipairs(srv.worker_pids or {}) do kids[#kids + 1] = pid end
  local status = srv:stop()
  for _, pid in ipairs(kids) do
    if M.alive(pid) then M.kill(pid, 9) end
  end
  M.rmdir(srv.script_dir)
  return status
end

--- Rewrites the script, sends SIGHUP, and waits until `copies` (default 1)
-- processes logged `loaded (policy generation <gen>)`.
function M.reload(srv, source, gen, copies)
  M.write_file(srv.script, source)
  srv:signal("HUP")
  return M.wait_log(srv, ("loaded (policy generation %d)"):format(gen), copies or 1)
end

--- Replaces the script the way editors do: write a temporary file in the
-- same directory, then rename it over the script.
function M.rename_into_place(srv, source)
  local tmp = srv.script_dir .. "/.handler.lua.tmp"
  M.write_file(tmp, source)
  assert(os.rename(tmp, srv.script))
end

--- Runs `luasmtpd --check` on a script file with extra arguments (bounded);
-- returns the exit status and the output.
function M.check(path, args)
  local bin = os.getenv("LUASMTPD_BIN")
  if not bin or bin == "" then bin = "build/luasmtpd" end
  local argv = { shell_quote(bin), "-t", "--handler", shell_quote(path) }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = shell_quote(a) end
  local out = M.sh(table.concat(argv, " ") .. "; echo \"exit=$?\"", 30)
  local body, status = out:match("^(.*)exit=(%d+)\n$")
  return tonumber(status), body or out
end

--- The reason of the last `reload refused` log line: everything after
-- "keeping generation N: " up to the next timestamped log line (a
-- traceback continues on the following lines).
function M.refusal_reason(log)
  local start
  local i = 1
  while true do
    local _, e = log:find("reload refused, keeping generation %d+: ", i)
    if not e then break end
    start, i = e + 1, e + 1
  end
  if not start then return nil end
  local rest = log:sub(start)
  local stop = rest:find("\n%d%d%d%d%-%d%d%-%d%dT")
  return (stop and rest:sub(1, stop - 1) or rest:gsub("\n$", ""))
end

-- ---------------------------------------------------------------------------
-- Processes

--- True while process `pid` exists and is not a zombie.
function M.alive(pid)
  if ffi.C.kill(pid, 0) ~= 0 then return false end
  local f = io.open("/proc/" .. string.format("%d", pid) .. "/stat")
  if not f then return false end
  local stat = f:read("*l") or ""
  f:close()
  return stat:match("^%d+ %(.*%) (%S+)") ~= "Z"
end

--- Sends signal `sig` (a number) to `pid`.
function M.kill(pid, sig)
  return ffi.C.kill(pid, sig) == 0
end

--- Pids of the children of `pid`, sorted (from /proc/*/stat).
function M.children(pid)
  local out = M.sh("cat /proc/[0-9]*/stat 2>/dev/null", 10)
  local kids = {}
  for line in out:gmatch("[^\n]+") do
    -- pid (comm) state ppid ...; comm may hold spaces or parentheses
    local p, ppid = line:match("^(%d+) %(.*%) %S+ (%d+) ")
    if p and tonumber(ppid) == pid then kids[#kids + 1] = tonumber(p) end
  end
  table.sort(kids)
  return kids
end

--- Number of open file descriptors of `pid`.
function M.fd_count(pid)
  local out = M.sh("ls /proc/" .. string.format("%d", pid) .. "/fd | wc -l", 10)
  return tonumber(out:match("%d+"))
end

--- VmRSS of `pid` in kB.
function M.rss_kb(pid)
  local f = io.open("/proc/" .. string.format("%d", pid) .. "/status")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

--- Starts luasmtpd in the background without waiting for it (for what
-- happens before it is ready). `args` are its arguments; stderr goes to
-- DIR/launch.err. Returns an object with `pid` and `stderr()`; `kill()`
-- ends it. (Its parent shell exits at once: the server is reparented.)
function M.launch(dir, args)
  local bin = os.getenv("LUASMTPD_BIN")
  if not bin or bin == "" then bin = "build/luasmtpd" end
  -- -n as testing.start passes it: run as root, the server would drop to
  -- nobody and could not reread the script in this root-only directory.
  local argv = { shell_quote(bin), "-n" }
  for _, a in ipairs(args) do argv[#argv + 1] = shell_quote(a) end
  local err_path = dir .. "/launch.err"
  local p = assert(io.popen(table.concat(argv, " ") .. " </dev/null >/dev/null 2>" ..
    shell_quote(err_path) .. " & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  assert(pid, "could not launch luasmtpd")
  return {
    pid = pid,
    stderr = function() return M.read_file(err_path) end,
    -- SIGTERM, up to 5 s to stop, then SIGKILL
    kill = function()
      if not M.alive(pid) then return end
      M.kill(pid, 15)
      if not pcall(M.wait_until, function() return not M.alive(pid) end, 5, "exit") then M.kill(pid, 9) end
    end,
  }
end

--- Contents of a file, or "" if it does not exist.
function M.read_file(path)
  local f = io.open(path)
  if not f then return "" end
  local text = f:read("*a")
  f:close()
  return text
end

-- ---------------------------------------------------------------------------
-- A client loop in a separate process, so sessions run while the spec
-- reloads the server.

--- One authenticated session: connect, EHLO, AUTH PLAIN, QUIT. Returns
-- true, or false and what went wrong.
function M.auth_session(host, port, user, pass)
  local c, err = testing.connect(host, port, { timeout = 5 })
  if not c then return false, "connect: " .. tostring(err) end
  local function fail(what)
    local t = c:transcript_text()
    c:close()
    return false, what .. "\n" .. t
  end
  if c.greeting_code ~= 220 then return fail("greeting") end
  if c:cmd("EHLO loop.test") ~= 250 then return fail("EHLO") end
  if c:auth_plain(user, pass) ~= 235 then return fail("AUTH PLAIN") end
  if c:cmd("QUIT") ~= 221 then return fail("QUIT") end
  c:close()
  return true
end

--- Body of the client process: runs sessions until `stop_file` exists or
-- `max` sessions or `secs` seconds, then prints
-- `sessions=N failures=M` and the first failure's transcript.
function M.client_loop(host, port, stop_file, max, secs)
  local deadline = socket.gettime() + secs
  local n, failures, first = 0, 0, nil
  while n < max and socket.gettime() < deadline do
    local f = io.open(stop_file)
    if f then f:close(); break end
    local ok, err = M.auth_session(host, port, "alice", "s3cret")
    n = n + 1
    if not ok then
      failures = failures + 1
      first = first or err
    end
  end
  io.write(("sessions=%d failures=%d\n"):format(n, failures))
  if first then io.write(first, "\n") end
  io.flush()
end

--- Starts `client_loop` in a child LuaJIT process. Returns an object with
-- `finish()`: creates the stop file, waits for the child (it stops within
-- one session, at most a few socket timeouts) and returns sessions,
-- failures and the child's output.
function M.spawn_client_loop(srv, dir, max, secs)
  local stop_file = dir .. "/stop-clients"
  os.remove(stop_file)
  local code = ("package.path = %q .. package.path; " ..
    "require('spec.functional.reload_util').client_loop(%q, %d, %q, %d, %d)"):format(
    "lua/?.lua;./?.lua;", srv.host, srv.port, stop_file, max, secs)
  -- timeout(1) bounds the child even if the loop itself went wrong.
  local p = assert(io.popen("timeout " .. tostring(secs + 30) .. " luajit -e " .. shell_quote(code) ..
    " 2>&1"))
  local out
  return {
    -- idempotent: a second call returns the first call's results
    finish = function()
      if not out then
        M.write_file(stop_file, "stop\n")
        out = p:read("*a")
        p:close()
      end
      local n, f = out:match("sessions=(%d+) failures=(%d+)")
      return tonumber(n), tonumber(f), out
    end,
  }
end

--- NOOP on a new connection to a server whose handler answers
-- "250 <version> pid <pid>": returns version and pid, or nil and what
-- failed. `timeout` (default 5 s) bounds every read.
function M.ask_worker(srv, timeout)
  local c, err = testing.connect(srv.host, srv.port, { timeout = timeout or 5 })
  if not c then return nil, err end
  local code, text = c:cmd("NOOP")
  c:close()
  local version, pid = tostring(text):match("^(%S+) pid (%d+)$")
  if code ~= 250 or not pid then return nil, ("NOOP: %s %s"):format(tostring(code), tostring(text)) end
  return version, tonumber(pid)
end

--- Waits (bounded) until the master has `n` children, none of them in
-- `gone` (pids); returns their pids, sorted.
function M.wait_workers(srv, n, gone)
  gone = gone or {}
  return M.wait_until(function()
    local kids = M.children(srv.pid)
    for _, k in ipairs(kids) do
      for _, g in ipairs(gone) do
        if k == g then return false end
      end
    end
    return #kids == n and kids
  end, 15, ("%d workers other than {%s}"):format(n, table.concat(gone, ", ")), log_tail(srv))
end

--- Asks new connections (ask_worker, reads bounded by `timeout`) until
-- `done(seen)` holds (seen: pid -> version of the last reply), at most `max`
-- connections; every connection must succeed. Returns seen.
function M.ask_until(srv, done, max, what, timeout)
  local seen, n = {}, 0
  while not done(seen) do
    n = n + 1
    if n > max then
      local pids = {}
      for pid, v in pairs(seen) do pids[#pids + 1] = pid .. "=" .. v end
      error(("%s: not reached after %d connections (seen: %s)\n%s"):format(what, max,
        table.concat(pids, " "), log_tail(srv)()), 2)
    end
    local version, pid = M.ask_worker(srv, timeout)
    -- Right after a restart no worker may be listening yet: a refused
    -- connection is retried (bounded by the deadline), anything else fails.
    local deadline = socket.gettime() + 10
    while not version and tostring(pid):match("refused") and socket.gettime() < deadline do
      socket.sleep(0.05)
      version, pid = M.ask_worker(srv, timeout)
    end
    if not version then error("a connection failed: " .. tostring(pid) .. "\n" .. log_tail(srv)(), 2) end
    seen[pid] = version
  end
  return seen
end

return M
