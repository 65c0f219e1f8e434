-- Reference handler "auth": the built-in PLAIN and LOGIN with an
-- authenticator accepting alice/s3cret. Python twin: check_alice in
-- spec/reference/ref_server.py.
local smtpd = require "smtpd"

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
