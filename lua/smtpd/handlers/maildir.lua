--- smtpd.handlers.maildir: delivers each message into a Maildir (aiosmtpd's
-- `Mailbox`): written to tmp/ under a unique name, fsync'd, renamed into
-- new/ and the directory fsync'd before the client gets 250. The writes
-- run on the thread pool (`smtpd.fs.deliver_maildir`) while the hook
-- waits. The message is stored byte for byte as received
-- (`envelope.original_content`, CRLF line ends), after a `Return-Path`
-- line when `return_path` is true.
-- @usage return require("smtpd.handlers.maildir"){ path = "/var/mail/inbox" }
local smtpd = require "smtpd"

return function(opts)
  if type(opts) ~= "table" or type(opts.path) ~= "string" then
    error("smtpd.handlers.maildir: expected { path = DIR }", 2)
  end
  local dir = opts.path
  local handler = { path = dir }
  function handler.handle_DATA(_, _, envelope)
    local data = envelope.original_content
    if opts.return_path then data = "Return-Path: <" .. (envelope.mail_from or "") .. ">\r\n" .. data end
    local name, err = smtpd.fs.deliver_maildir(dir, data)
    if not name then
      smtpd.log("error", "maildir " .. dir .. ": " .. err)
      return "451 4.3.0 Error: cannot deliver to the mailbox, try again later"
    end
    return "250 OK"
  end
  return handler
end
