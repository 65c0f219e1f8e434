-- A submission policy: AUTH against a user table, only authenticated
-- senders, only local recipients for others, and messages written to a
-- maildir-like spool directory. Start from this and replace the parts.
--
--   luasmtpd --handler scripts/examples/users.lua -o auth_require_tls=false   # testing only
local smtpd = require "smtpd"

local handler = {
  options = {
    auth_required = true,      -- MAIL/RCPT/DATA need AUTH first
    data_size_limit = 10 * 1024 * 1024,
  },
}

-- In production, look users up in a file or a service and compare hashes.
local users = { alice = "s3cret", bob = "hunter2" }
local local_domain = "example.com"
local spool = os.getenv("SPOOL_DIR")  -- nil: print a summary instead

function handler.authenticator(server, session, envelope, mechanism, auth_data)
  local want = users[auth_data.login]
  if want and want == auth_data.password then
    return smtpd.AuthResult { success = true, auth_data = auth_data }
  end
  return smtpd.AuthResult { success = false, handled = false }
end

function handler.handle_RCPT(server, session, envelope, address, rcpt_options)
  local domain = address:match("@([^@]+)$")
  if not session.authenticated and (domain or ""):lower() ~= local_domain then
    return "550 5.7.1 Relaying denied"
  end
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end

local counter = 0
function handler.handle_DATA(server, session, envelope)
  counter = counter + 1
  local id = ("%d.%d"):format(os.time(), counter)
  if spool then
    local f, err = io.open(spool .. "/" .. id .. ".eml", "wb")
    if not f then
      io.stderr:write("spool: ", err, "\n")
      return "451 4.3.0 Cannot store the message, try again later"
    end
    f:write(envelope.content)
    f:close()
  else
    io.stdout:write(("%s: %d bytes from %s (%s) for %s\n"):format(id, #envelope.content,
      envelope.mail_from, session.auth_data and session.auth_data.login or "-",
      table.concat(envelope.rcpt_tos, ", ")))
    io.stdout:flush()
  end
  return "250 2.0.0 Queued as " .. id
end

return handler
