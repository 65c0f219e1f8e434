-- Reference handler "no_mechanisms": both built-in mechanisms excluded.
-- Python twin: HANDLERS["no_mechanisms"] in spec/reference/ref_server.py.

options = { auth_exclude_mechanism = { "PLAIN", "LOGIN" } }

function handle_DATA(server, session, envelope)
  return "250 OK"
end
