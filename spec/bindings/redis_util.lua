-- Helpers for the smtpd.redis specs: a real redis-server on a free loopback
-- port (stopped by PID), the hostile fake server (redis_fake.py), and a
-- LuaSocket adapter with the cosocket interface of async-api.md 4 so the
-- client's protocol code runs under plain LuaJIT.
local socket = require "socket"
local unix = require "socket.unix"
local ffi = require "ffi"
local hu = require "spec.functional.hostile_util"

pcall(ffi.cdef, "int kill(int pid, int sig);")

local M = {}

local function alive(pid)
  return ffi.C.kill(pid, 0) == 0
end
M.alive = alive

local function stop_pid(pid)
  if not alive(pid) then return end
  ffi.C.kill(pid, 15)
  if not pcall(hu.wait_until, function() return not alive(pid) end, 5, "pid " .. pid .. " to stop") then
    ffi.C.kill(pid, 9)
    hu.wait_until(function() return not alive(pid) end, 5, "pid " .. pid .. " to die")
  end
end

-- Starts cmd in the background with its output in log; returns its PID.
local function spawn(cmd, log)
  local p = assert(io.popen("exec " .. cmd .. " </dev/null >" .. hu.shell_quote(log) .. " 2>&1 & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  assert(pid, "could not start: " .. cmd)
  return pid
end

local function find_redis()
  local path = hu.sh("command -v redis-server || ls /usr/bin/redis-server 2>/dev/null"):match("[^\n]+")
  return path
end
M.find_redis = find_redis

local Redis = {}
Redis.__index = Redis

--- Starts redis-server on 127.0.0.1 and a free port (opts.port to reuse
-- one), with no persistence; opts.password -> --requirepass, opts.unix ->
-- also a unix socket (r.path). Waits until it answers PING.
--- opts: port, dir, password, unix, tls = { cert =, key = [, port =] }.
function M.start_redis(opts)
  opts = opts or {}
  local bin = assert(find_redis(), "redis-server not found (tools/deps.sh installs it)")
  local dir = opts.dir or hu.tempdir()
  local port = opts.port or hu.free_port()
  local args = { hu.shell_quote(bin), "--port", port, "--bind", "127.0.0.1", "--save", "''",
    "--appendonly", "no", "--daemonize", "no", "--dir", hu.shell_quote(dir) }
  local r = setmetatable({ port = port, dir = dir, log = dir .. "/redis-" .. port .. ".log" }, Redis)
  if opts.password then
    args[#args + 1] = "--requirepass " .. hu.shell_quote(opts.password)
  end
  if opts.tls then
    -- TLS beside the plain port (which the readiness check uses)
    r.tls_port = opts.tls.port or hu.free_port()
    args[#args + 1] = ("--tls-port %d --tls-cert-file %s --tls-key-file %s --tls-auth-clients no")
      :format(r.tls_port, hu.shell_quote(opts.tls.cert), hu.shell_quote(opts.tls.key))
  end
  if opts.unix then
    r.path = dir .. "/redis.sock"
    args[#args + 1] = "--unixsocket " .. hu.shell_quote(r.path) .. " --unixsocketperm 700"
  end
  r.pid = spawn(table.concat(args, " "), r.log)
  hu.wait_until(function()
    if not alive(r.pid) then error("redis-server exited:\n" .. (hu.read_file(r.log) or ""), 0) end
    local s = socket.tcp()
    s:settimeout(1)
    local ok = s:connect("127.0.0.1", port)
    local line
    if ok then
      s:send("*1\r\n$4\r\nPING\r\n")
      line = s:receive("*l")
    end
    s:close()
    return line == "+PONG" or (line and line:find("^%-NOAUTH"))
  end, 10, "redis-server to answer", function() return hu.read_file(r.log) or "" end)
  return r
end

function Redis:stop()
  if self.pid then stop_pid(self.pid) end
end

--- Kills it at once (SIGKILL), as a crash would.
function Redis:kill()
  ffi.C.kill(self.pid, 9)
  hu.wait_until(function() return not alive(self.pid) end, 5, "redis-server to die")
end

--- Starts redis_fake.py; returns { port, pid, stop }.
function M.start_fake()
  local dir = hu.tempdir()
  local portfile = dir .. "/port"
  local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  local f = { dir = dir, log = dir .. "/fake.log" }
  f.pid = spawn("python3 " .. hu.shell_quote(here .. "redis_fake.py") .. " " .. hu.shell_quote(portfile), f.log)
  f.port = hu.wait_until(function()
    if not alive(f.pid) then error("redis_fake.py exited:\n" .. (hu.read_file(f.log) or ""), 0) end
    return tonumber(hu.read_file(portfile) or "")
  end, 10, "redis_fake.py to listen")
  function f.stop() stop_pid(f.pid) end
  return f
end

-- The cosocket interface (async-api.md 4) over LuaSocket: what
-- smtpd.redis uses of it, with a real keepalive pool (a table of idle
-- connections by pool name) so reuse can be observed. sends counts the
-- send calls, to see a pipeline go out in one.
local Adapter = {}
Adapter.__index = Adapter

--- A socket factory for `smtpd.redis.connect{ socket = ... }`; the pool
-- table is shared by every socket it makes. Returns factory, stats.
function M.adapter()
  local stats = { pool = {}, sockets = {}, sends = 0 }
  local function factory()
    local a = setmetatable({ stats = stats, timeout = 30, reused = 0 }, Adapter)
    stats.sockets[#stats.sockets + 1] = a
    return a
  end
  return factory, stats
end

function Adapter:settimeout(s)
  self.timeout = s
  if self.s then self.s:settimeout(s) end
end

function Adapter:connect(host, port, opts)
  if type(port) == "table" then opts, port = port, nil end
  self.key = (opts and opts.pool) or (port and (host .. ":" .. port) or host)
  local idle = self.stats.pool[self.key]
  if idle and #idle > 0 then
    local e = table.remove(idle)
    self.s, self.reused = e.s, e.reused + 1
    self.s:settimeout(self.timeout)
    return true
  end
  local s, ok, err
  if host:sub(1, 5) == "unix:" then
    s = unix.stream()
    s:settimeout(self.timeout)
    ok, err = s:connect(host:sub(6))
  else
    s = socket.tcp()
    s:settimeout(self.timeout)
    ok, err = s:connect(host, port)
  end
  if not ok then
    s:close()
    return nil, err
  end
  self.s, self.reused = s, 0
  return true
end

function Adapter.sslhandshake()
  return nil, "tls is not in the LuaSocket adapter"
end

function Adapter:send(data)
  if not self.s then return nil, "closed" end
  self.stats.sends = self.stats.sends + 1
  if type(data) == "table" then data = table.concat(data) end
  local n, err = self.s:send(data)
  if not n then
    self:close()
    return nil, err
  end
  return n
end

function Adapter:receive(pattern)
  if not self.s then return nil, "closed" end
  local data, err, partial = self.s:receive(pattern)
  if not data and err ~= "timeout" then self:close() end
  return data, err, partial
end

function Adapter:getreusedtimes()
  return self.reused
end

function Adapter:setkeepalive()
  if not self.s then return nil, "closed" end
  local idle = self.stats.pool[self.key] or {}
  self.stats.pool[self.key] = idle
  idle[#idle + 1] = { s = self.s, reused = self.reused }
  self.s = nil
  return true
end

function Adapter:close()
  if not self.s then return nil, "closed" end
  self.s:close()
  self.s = nil
  return true
end

--- One command to the Redis on 127.0.0.1:port over a connection of its
-- own, written and read here without smtpd.redis (so the functional specs
-- need no smtpd.so, which a sanitizer build cannot load into luajit):
-- a status, bulk or integer reply; nil for a nil bulk; raises otherwise.
function M.cmd(port, ...)
  local args = { ... }
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  local s = socket.tcp()
  s:settimeout(10)
  assert(s:connect("127.0.0.1", port))
  assert(s:send(table.concat(out)))
  local line = assert(s:receive("*l"))
  local kind, rest = line:sub(1, 1), line:sub(2)
  local v
  if kind == "+" then v = rest
  elseif kind == ":" then v = tonumber(rest)
  elseif kind == "$" then
    local n = tonumber(rest)
    v = n >= 0 and assert(s:receive(n + 2)):sub(1, n) or nil
  else
    s:close()
    error("redis: " .. line, 2)
  end
  s:close()
  return v
end

--- Closes every pooled connection of a factory.
function M.drain(stats)
  for _, idle in pairs(stats.pool) do
    for _, e in ipairs(idle) do e.s:close() end
  end
  stats.pool = {}
end

M.stop_pid = stop_pid
return M
