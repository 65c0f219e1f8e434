--- smtpd.handlers: the shipped handlers (delivery.md 3), each a module
-- `smtpd.handlers.NAME` that returns a function: called with its options
-- it returns a fresh handler table a script may return as it is or extend
-- (add an `authenticator`, wrap `handle_RCPT`).
-- @usage return require("smtpd.handlers.relay"){ host = "10.0.0.5", port = 25 }
local M = {}

--- The names `-c` knows, and how their command-line arguments become the
-- handler's options.
M.names = { "debugging", "sink", "relay", "maildir", "mbox", "lmtp" }

local USAGE = {
  debugging = "-c debugging",
  sink = "-c sink",
  relay = "-c relay HOST [PORT]",
  maildir = "-c maildir DIR",
  mbox = "-c mbox PATH",
  lmtp = "-c lmtp unix:/PATH | HOST:PORT",
}

local function usage(name, why)
  error(("luasmtpd %s: %s"):format(USAGE[name] or "-c NAME", why), 0)
end

-- Turns `-c NAME ARGS...` into a handler table.
local function from_args(name, ...)
  local args = { ... }
  if not USAGE[name] then
    error(("luasmtpd -c: unknown handler '%s' (expected %s)"):format(tostring(name),
      table.concat(M.names, ", ")), 0)
  end
  local make = require("smtpd.handlers." .. name)
  if name == "debugging" or name == "sink" then
    if #args > 0 then usage(name, "takes no arguments") end
    return make()
  elseif name == "relay" then
    if #args < 1 or #args > 2 then usage(name, "expected HOST [PORT]") end
    local port = args[2] and tonumber(args[2])
    if args[2] and not (port and port >= 1 and port <= 65535 and port % 1 == 0) then
      usage(name, "PORT must be a number 1-65535")
    end
    return make{ host = args[1], port = port or 25 }
  elseif name == "maildir" or name == "mbox" then
    if #args ~= 1 then usage(name, name == "maildir" and "expected DIR" or "expected PATH") end
    return make{ path = args[1] }
  else -- lmtp
    if #args ~= 1 then usage(name, "expected unix:/PATH or HOST:PORT") end
    local path = args[1]:match("^unix:(/.+)$")
    if path then return make{ path = path } end
    local host, port = args[1]:match("^%[?([^%[%]]+)%]?:(%d+)$")
    port = tonumber(port)
    if not host or not (port >= 1 and port <= 65535) then usage(name, "expected unix:/PATH or HOST:PORT") end
    return make{ host = host, port = port }
  end
end
M.from_args = from_args

return setmetatable(M, {
  __index = function(t, k)
    if type(k) ~= "string" or not USAGE[k] then return nil end
    local mod = require("smtpd.handlers." .. k)
    rawset(t, k, mod)
    return mod
  end,
})
