--- smtpd.handlers.sink: accepts every message and discards it (aiosmtpd's
-- `Sink`).
-- @usage return require("smtpd.handlers.sink")()
return function()
  local handler = {}
  function handler.handle_DATA()
    return "250 OK"
  end
  return handler
end
