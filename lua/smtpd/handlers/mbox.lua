--- smtpd.handlers.mbox: appends each message to an mbox file: a `From `
-- line (the envelope sender, `MAILER-DAEMON` for the null sender, and the
-- time in UTC), the message with LF line ends and mboxrd quoting (a line
-- that is `From ` after any number of `>` gets one more `>`), and an empty
-- line. Appended under an exclusive fcntl lock (open-file-description
-- locks: they exclude the pool's other threads and other processes) and
-- fsync'd before the client gets 250; a failed write is cut back. The file
-- work runs on the thread pool (`smtpd.fs.append`).
-- @usage return require("smtpd.handlers.mbox"){ path = "/var/mail/alice" }
local smtpd = require "smtpd"

local M = {}

--- The mbox form of one message (without the lock or the file).
-- @param from the envelope sender ("" for the null sender)
-- @param data the message bytes
-- @param time seconds since the epoch
-- @return the bytes to append
function M.format(from, data, time)
  local body = data:gsub("\r\n", "\n")
  body = ("\n" .. body):gsub("\n(>*From )", "\n>%1"):sub(2)
  if body ~= "" and body:sub(-1) ~= "\n" then body = body .. "\n" end
  local sender = (from and from ~= "" and from ~= "<>") and from:gsub("%s", "_") or "MAILER-DAEMON"
  return "From " .. sender .. " " .. os.date("!%a %b %e %H:%M:%S %Y", time) .. "\n" .. body .. "\n"
end

return setmetatable(M, {
  __call = function(_, opts)
    if type(opts) ~= "table" or type(opts.path) ~= "string" then
      error("smtpd.handlers.mbox: expected { path = PATH }", 2)
    end
    local path = opts.path
    local handler = { path = path }
    function handler.handle_DATA(_, _, envelope)
      local ok, err = smtpd.fs.append(path, M.format(envelope.mail_from, envelope.original_content,
        smtpd.now and smtpd.now() or os.time()))
      if not ok then
        smtpd.log("error", "mbox " .. path .. ": " .. err)
        return "451 4.3.0 Error: cannot deliver to the mailbox, try again later"
      end
      return "250 OK"
    end
    return handler
  end,
})
