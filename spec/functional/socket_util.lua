-- What the cosocket specs share: the peer (socket_peer.py) started on a
-- free loopback port (and a UNIX socket, and TLS when given a certificate),
-- its event log, and stopping it by PID.
local socket = require "socket"
local hu = require "spec.functional.hostile_util"

local M = {}

local PEER = "spec/functional/socket_peer.py"

--- Starts a peer. opts: `tls = {cert =, key =}`, `unix = true`.
-- Returns { port =, unix = path|nil, log = path, pid =, dir = }.
function M.peer(opts)
  opts = opts or {}
  local dir = hu.tempdir()
  local p = { dir = dir, log = dir .. "/peer.log", port_file = dir .. "/port" }
  local args = { "/usr/bin/python3", PEER, "--port-file", p.port_file, "--log", p.log }
  if opts.unix then
    p.unix = dir .. "/peer.sock"
    args[#args + 1] = "--unix"
    args[#args + 1] = p.unix
  end
  if opts.tls then
    args[#args + 1] = "--cert"
    args[#args + 1] = opts.tls.cert
    args[#args + 1] = "--key"
    args[#args + 1] = opts.tls.key
  end
  local cmd = table.concat(args, " ") .. " >" .. dir .. "/peer.out 2>&1 & echo $!"
  local f = assert(io.popen(cmd))
  p.pid = tonumber(f:read("*l"))
  f:close()
  hu.wait_until(function()
    local port = hu.read_file(p.port_file)
    p.port = tonumber(port)
    return p.port ~= nil
  end, 10, "the peer's port", function() return hu.read_file(dir .. "/peer.out") or "" end)
  return p
end

function M.stop(p)
  if not p then return end
  os.execute("kill " .. p.pid .. " 2>/dev/null")
  hu.rmdir(p.dir)
end

function M.log(p)
  return hu.read_file(p.log) or ""
end

--- Waits until the peer's log has `s` (`n` times, default 1).
function M.wait_log(p, s, n, secs)
  n = n or 1
  hu.wait_until(function() return hu.count(M.log(p), s) >= n end, secs or 10,
    "peer log: " .. s, function() return M.log(p) end)
end

--- A NOOP whose hook returns what `code` (a Lua chunk run in the hook with
-- `port`, `unix`, `arg` in scope) returns: see SOURCE in the specs.
function M.noop(client, arg, timeout)
  assert(client:send("NOOP " .. arg .. "\r\n"))
  return client:reply(timeout or 10)
end

--- Wakes every connection waiting in PARK (from the spec, not a hook);
-- returns how many there were.
function M.release(p)
  local c = assert(socket.connect("127.0.0.1", p.port))
  c:settimeout(10)
  assert(c:send("RELEASE\n"))
  local line = assert(c:receive("*l"))
  c:close()
  return tonumber(line:match("^released (%d+)$"))
end

M.sleep = socket.sleep

return M
