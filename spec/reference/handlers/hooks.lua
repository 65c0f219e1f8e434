-- Reference handler "hooks": every command hook, each answering with a reply
-- that shows its input. Python twin: Hooks in spec/reference/ref_server.py.

-- Printable ASCII but '%' as is, every other byte as %XX.
local function escape(data)
  return (data:gsub("[^!-$&-~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

local function join(list, sep)
  local out = {}
  for i = 1, #list do
    out[i] = list[i]
  end
  return table.concat(out, sep)
end

function handle_HELO(server, session, envelope, hostname)
  session.host_name = hostname
  return "250 hello " .. hostname
end

function handle_EHLO(server, session, envelope, hostname, responses)
  session.host_name = hostname
  local out = {}
  for i = 1, #responses - 1 do
    out[#out + 1] = responses[i]
  end
  out[#out + 1] = "250-X-HOOKED"
  out[#out + 1] = responses[#responses]
  return out
end

function handle_MAIL(server, session, envelope, address, mail_options)
  if address:sub(1, 8) == "blocked@" then
    return "550 5.7.1 Sender blocked"
  end
  envelope.mail_from = address
  return "250 2.1.0 sender <" .. address .. "> options [" .. join(mail_options, " ") .. "]"
end

function handle_RCPT(server, session, envelope, address, rcpt_options)
  if address:sub(-#"@nowhere.test") == "@nowhere.test" then
    return "550 5.1.1 No such user <" .. address .. ">"
  end
  local rcpt_tos = envelope.rcpt_tos
  rcpt_tos[#rcpt_tos + 1] = address
  return "250 2.1.5 recipient <" .. address .. "> number " .. #envelope.rcpt_tos
end

function handle_DATA(server, session, envelope)
  local content = envelope.content
  return "250 2.0.0 from <" .. envelope.mail_from .. "> to <" .. join(envelope.rcpt_tos, ",")
    .. "> len=" .. #content .. " " .. escape(content:sub(1, 300))
end

function handle_RSET(server, session, envelope)
  return "250 2.0.0 reset"
end

function handle_NOOP(server, session, envelope, arg)
  return "250 2.0.0 noop " .. (arg == nil and "none" or "[" .. arg .. "]")
end

function handle_VRFY(server, session, envelope, address)
  return "250 2.1.5 <" .. address .. ">"
end

function handle_QUIT(server, session, envelope)
  return "221 2.0.0 Goodbye"
end
