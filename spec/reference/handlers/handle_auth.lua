-- Reference handler "handle_auth": a handle_AUTH hook in front of the
-- built-in mechanisms. Python twin: HandleAuth in spec/reference/ref_server.py.
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

function handle_AUTH(server, session, envelope, args)
  if args[1] == "LOGIN" and #args == 1 then
    return "535 5.7.8 LOGIN disabled by policy"
  end
  if args[1] == "LOGIN" then
    return nil -- no final reply sent
  end
  if args[1] == "PLAIN" and #args == 1 then
    server:push("535 5.7.8 Initial response required")
    return nil
  end
  return smtpd.MISSING
end

function handle_DATA(server, session, envelope)
  return "250 OK"
end
