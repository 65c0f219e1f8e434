-- smtpd.redis inside the real server: the client is embedded in the binary
-- (no Lua path needed) and reached as a field of the smtpd module, and
-- smtpd.null is the value replies use for a nil bulk. The protocol itself
-- is spec/bindings/redis_spec.lua's.
local h = require "spec.functional.common"

local SOURCE = [[
local smtpd = require "smtpd"
local redis = require "smtpd.redis"
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  if arg == "module" then
    return "250 " .. tostring(smtpd.redis == redis) .. " " .. type(redis.connect) .. " " .. tostring(smtpd.null)
  end
  if arg == "badopt" then redis.connect{ passwd = "x" } end
  return "250 OK"
end
]]

describe("smtpd.redis in the server", function()
  h.run{
    { name = "the embedded module is smtpd.redis, and smtpd.null shows as null",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP module", "250 true function null" } } },

    { name = "a bad option raises a readable error: a hook error",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP badopt", "451 4.3.0 Error: local error in processing" } },
      stderr_has = { "handler.lua:8: smtpd.redis.connect: unknown option passwd" } },
  }
end)
