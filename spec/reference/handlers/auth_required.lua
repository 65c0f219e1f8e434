-- Reference handler "auth_required": "auth" plus options.auth_required.
-- Python twin: HANDLERS["auth_required"] in spec/reference/ref_server.py.
local smtpd = require "smtpd"

options = { auth_required = true }

function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "alice" and auth_data.password == "s3cret" then
    return smtpd.AuthResult{ success = true, auth_data = auth_data }
  end
  if auth_data.login == "crash" then
    error("authenticator crashed")
  end
  return smtpd.AuthResult{ success = false, handled = false }
end

function handle_DATA(server, session, envelope)
  return "250 OK"
end
