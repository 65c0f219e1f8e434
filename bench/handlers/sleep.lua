-- sleep.lua — luasmtpd's handler for bench/run scenario (i): "NOOP sleep"
-- waits 100 ms in its hook with smtpd.sleep (the loop serves everyone else
-- meanwhile), a plain NOOP answers at once. sleep_async.py and
-- sleep_blocking.py are the aiosmtpd counterparts; same replies.
-- luacheck: no unused args
local smtpd = require "smtpd"

local handler = {}

local SLEEP_SECONDS = 0.1

function handler.handle_NOOP(server, session, envelope, arg)
  if arg == "sleep" then
    smtpd.sleep(SLEEP_SECONDS)
  end
  return "250 OK"
end

return handler
