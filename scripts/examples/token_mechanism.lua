-- A custom SASL mechanism next to the built-ins: "X-TOKEN", where the
-- client answers a challenge with a one-time token. It shows
-- server:challenge_auth() suspending the hook until the client's next line.
local smtpd = require "smtpd"

options = { auth_require_tls = false }  -- testing only; use TLS in production

local tokens = { ["tok-123"] = "alice" }  -- in practice: a store with expiry

auth_X_TOKEN = smtpd.auth_mechanism("X-TOKEN", function(server, args)
  local token = args[2] and smtpd.b64decode(args[2])
  if token == nil then
    token = server:challenge_auth("token please")  -- "334 dG9rZW4gcGxlYXNl"
    if token == nil then return nil end            -- aborted: 501 already sent
  end
  local user = tokens[token]
  if not user then
    return smtpd.AuthResult { success = false, handled = false }
  end
  tokens[token] = nil                              -- one use only
  return smtpd.AuthResult { success = true, auth_data = { login = user } }
end)

-- Every message: one line on stdout, flushed before the 250 (redirected,
-- stdout is block-buffered; a killed process would lose what is buffered).
function handle_DATA(server, session, envelope)
  io.stdout:write(("%d bytes from %s (%s) for %s\n"):format(#envelope.content, envelope.mail_from,
    session.auth_data and session.auth_data.login or "-", table.concat(envelope.rcpt_tos, ", ")))
  io.stdout:flush()
  return "250 OK"
end
