-- Reference handler "broken": hooks that fail (an error, and a return value
-- of the wrong type). Python twin: Broken in spec/reference/ref_server.py.
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

function handle_MAIL(server, session, envelope, address, mail_options)
  if address:sub(1, 7) == "number@" then
    return 42
  end
  envelope.mail_from = address
  return "250 OK"
end

function handle_RCPT(server, session, envelope, address, rcpt_options)
  error("boom")
end

function handle_DATA(server, session, envelope)
  return "250 OK"
end
