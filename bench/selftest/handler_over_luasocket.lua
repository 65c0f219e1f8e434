-- handler_over_luasocket.lua — runs bench/handlers/policy_cosocket.lua's
-- handle_RCPT under plain LuaJIT against a real bench/policyd, with
-- LuaSocket standing in for smtpd.socket.tcp (async-api.md section 4: the
-- subset the handler uses, blocking, with a pool keyed by the pool name).
-- It checks the handler's side of the policy protocol (request, reply
-- parsing, actions, pooling, a service that is down) before luasmtpd's
-- cosockets exist; once they do, bench/run's scenario (h) runs the handler
-- in the server itself. Part of bench/selftest, which starts policyd.
--
--   luajit bench/selftest/handler_over_luasocket.lua PORT DOWN_PORT
--
-- PORT: a running policyd that rejects spammer@example.net; DOWN_PORT: a
-- port nothing listens on. Prints "ok N" and exits 0, or raises.
local socket = require "socket"

local port, down_port = tonumber(arg[1]), tonumber(arg[2])
assert(port and down_port, "usage: handler_over_luasocket.lua PORT DOWN_PORT")

local pools, connects = {}, 0
local S = {}
S.__index = S

function S:settimeouts(c, s, r) self.timeouts = { c, s, r } end
function S:settimeout(t) self.timeouts = { t, t, t } end

function S:connect(host, p, opts)
  self.key = opts and opts.pool or (host .. ":" .. p)
  local pool = pools[self.key]
  if pool and #pool > 0 then
    self.c = table.remove(pool)
    return true
  end
  local c = socket.tcp()
  c:settimeout(self.timeouts and self.timeouts[1] or 10)
  local ok, err = c:connect(host, p)
  if not ok then
    c:close()
    return nil, err
  end
  connects = connects + 1
  self.c = c
  return true
end

function S:send(data)
  if type(data) == "table" then data = table.concat(data) end
  self.c:settimeout(self.timeouts and self.timeouts[2] or 10)
  local n, err = self.c:send(data)
  if not n then self:close() end
  return n, err
end

function S:receive(pattern)
  self.c:settimeout(self.timeouts and self.timeouts[3] or 30)
  local data, err, partial = self.c:receive(pattern)
  if not data and err ~= "timeout" then self:close() end
  return data, err, partial
end

function S:setkeepalive()
  local pool = pools[self.key] or {}
  pools[self.key] = pool
  pool[#pool + 1] = self.c
  self.c = nil
  return true
end

function S:close()
  if self.c then self.c:close() end
  self.c = nil
  return true
end

package.loaded.smtpd = { socket = { tcp = function() return setmetatable({}, S) end } }

local function load_handler(policyd_port)
  -- the handler reads BENCH_POLICYD at load time
  local getenv = os.getenv
  os.getenv = function(name) -- luacheck: ignore 122
    if name == "BENCH_POLICYD" then return "127.0.0.1:" .. policyd_port end
    return getenv(name)
  end
  local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  local handler = dofile(here .. "../handlers/policy_cosocket.lua")
  os.getenv = getenv -- luacheck: ignore 122
  return handler
end

local checks = 0
local function expect(got, want)
  checks = checks + 1
  if got ~= want then error(("expected %q, got %q"):format(want, tostring(got)), 2) end
end

local function session() return { peer = { host = "127.0.0.1", port = 40000 }, host_name = "client.test" } end

local h = load_handler(port)
local env = { mail_from = "sender@example.net", rcpt_tos = {} }
expect(h.handle_RCPT(nil, session(), env, "rcpt@example.com", {}), "250 2.1.5 OK")
expect(#env.rcpt_tos, 1)
-- DUNNO from the service, then policy.lua's own check refuses relaying
expect(h.handle_RCPT(nil, session(), env, "rcpt@elsewhere.net", {}), "550 5.7.1 Relaying denied")
expect(#env.rcpt_tos, 1)
local spam = { mail_from = "spammer@example.net", rcpt_tos = {} }
expect(h.handle_RCPT(nil, session(), spam, "rcpt@example.com", {}),
  "554 5.7.1 <spammer@example.net>: sender rejected by policy")
expect(#spam.rcpt_tos, 0)
for _ = 1, 20 do
  expect(h.handle_RCPT(nil, session(), { mail_from = "x@example.net", rcpt_tos = {} }, "a@example.org", {}),
    "250 2.1.5 OK")
end
-- one connection for all 23 round trips: the handler returns it to the pool
expect(connects, 1)

local down = load_handler(down_port)
local reply = down.handle_RCPT(nil, session(), { mail_from = "s@example.net", rcpt_tos = {} }, "r@example.com", {})
checks = checks + 1
assert(reply:match("^451 4%.3%.0 Policy service unavailable %(connect: "), reply)

print("ok " .. checks)
