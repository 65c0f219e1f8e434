--- The Redis side of `auth_fail_limit_per_client` with `auth_fail_store =
-- "redis://host:port[/db]"` (mechanisms.md 3): one counter per address
-- group, shared by every host that points at the same Redis. The AUTH path
-- runs these functions as hooks (they wait on the cosockets; every other
-- client is served meanwhile, and `hook_timeout` bounds them).
-- Failures return `nil, err`; the server then lets the AUTH go on (fails
-- open) and logs a warning.
-- @module smtpd.auth_fail_store
local redis = require "smtpd.redis"

local M = {}

local KEY_PREFIX = "luasmtpd:auth_fail:"

--- Parses "redis://host:port[/db]" ("[::1]:6379" for IPv6).
-- @treturn table|nil `{ host, port, db }`, or nil and why
function M.parse(url)
  local rest = type(url) == "string" and url:match("^redis://(.+)$")
  if not rest then return nil, "expected redis://host:port[/db]" end
  local hostport, db = rest:match("^([^/]+)/(%d+)$")
  if not hostport then hostport, db = rest, "0" end
  local host, port = hostport:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = hostport:match("^([^:%[%]]+):(%d+)$") end
  if not host then return nil, "expected redis://host:port[/db]" end
  port = tonumber(port)
  if port < 1 or port > 65535 then return nil, "port must be 1-65535" end
  return { host = host, port = port, db = tonumber(db) }
end

local function connect(url)
  local target, err = M.parse(url)
  if not target then return nil, err end
  return redis.connect{ host = target.host, port = target.port, db = target.db, timeout = 2 }
end

local function done(client, ...)
  client:setkeepalive()
  return ...
end

--- True when key has `count` or more failures in its window.
function M.over(url, key, count)
  local client, err = connect(url)
  if not client then return nil, err end
  local n, e = client:call("GET", KEY_PREFIX .. key)
  if n == nil then
    pcall(client.close, client)
    return nil, e
  end
  return done(client, (tonumber(n) or 0) >= count)
end

--- Counts one failure; the first one of a window sets its expiry.
function M.failed(url, key, window)
  local client, err = connect(url)
  if not client then return nil, err end
  local r, e = client:pipeline{
    { "INCR", KEY_PREFIX .. key },
    { "EXPIRE", KEY_PREFIX .. key, math.ceil(window), "NX" },
  }
  if not r then
    pcall(client.close, client)
    return nil, e
  end
  for _, v in ipairs(r) do
    if type(v) == "table" and v[1] == false then
      pcall(client.close, client)
      return nil, v[2]
    end
  end
  return done(client, true)
end

return M
