-- Reference handler "plain": no hooks but DATA, which accepts everything.
-- Python twin: Plain in spec/reference/ref_server.py.

function handle_DATA(server, session, envelope)
  return "250 OK"
end
