-- Reference handler "mechanisms": handler-defined AUTH mechanisms next to
-- the built-in PLAIN and LOGIN (returned-table form).
-- Python twin: Mechanisms in spec/reference/ref_server.py.
local smtpd = require "smtpd"

local handler = {}

function handler.authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "alice" and auth_data.password == "s3cret" then
    return smtpd.AuthResult{ success = true, auth_data = auth_data }
  end
  if auth_data.login == "crash" then
    error("authenticator crashed")
  end
  return smtpd.AuthResult{ success = false, handled = false }
end

function handler.handle_DATA(server, session, envelope)
  return "250 OK"
end

function handler.auth_NULL(server, args)
  return smtpd.AuthResult{ success = true }
end

function handler.auth_DENY(server, args)
  return smtpd.AuthResult{ success = false, handled = false,
                           message = "535 5.7.8 Denied by policy" }
end

-- Fails without having sent a reply.
function handler.auth_SILENT(server, args)
  return smtpd.AuthResult{ success = false }
end

-- Old-style result: true is a success.
function handler.auth_OLD(server, args)
  return true
end

function handler.auth_ECHO(server, args)
  local response = server:challenge_auth("Say the words")
  if response == nil then
    return smtpd.AuthResult{ success = false }
  end
  if response == "open sesame" then
    return smtpd.AuthResult{ success = true, auth_data = response,
                             message = "235 2.7.0 The door opens" }
  end
  return smtpd.AuthResult{ success = false, handled = false,
                           message = "535 5.7.8 Wrong words" }
end

handler.auth_X__TOKEN = function(server, args)
  if #args == 2 and args[2] == "dG9rZW4=" then
    return smtpd.AuthResult{ success = true, auth_data = "token",
                             message = "235 2.7.0 Token accepted" }
  end
  return smtpd.AuthResult{ success = false, handled = false }
end

return handler
