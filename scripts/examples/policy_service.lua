-- Waiting on the network, worked example: every RCPT asks a local policy
-- service (Postfix policy delegation: name=value lines, an empty line; the
-- answer is action=... and an empty line) over a pooled cosocket, and a
-- client listed in a DNSBL is refused at MAIL. Nothing here blocks the
-- server: each call suspends only its own session.
--
--   luasmtpd --handler scripts/examples/policy_service.lua -- 127.0.0.1:10040 zen.spamhaus.org
--
-- The two handler arguments (`-- ARG...`) are the policy service's address
-- and the DNSBL zone; both have defaults.
local smtpd = require "smtpd"

local service, zone = ...
local host, port = (service or "127.0.0.1:10040"):match("^(.*):(%d+)$")
port = tonumber(port)
zone = zone or "zen.spamhaus.org"

local function ask_policy(session, envelope, address)
  local sock = smtpd.socket.tcp()
  sock:settimeouts(2, 2, 5) -- connect, send, each receive (seconds)
  local ok, err = sock:connect(host, port, { pool = "policy" })
  if not ok then return nil, err end
  ok, err = sock:send{
    "request=smtpd_access_policy\n", "protocol_state=RCPT\n",
    "client_address=", session.peer[1], "\n",
    "sender=", envelope.mail_from or "", "\n",
    "recipient=", address, "\n", "\n",
  }
  if not ok then return nil, err end
  local action
  while true do
    local line, rerr = sock:receive("*l")
    if not line then return nil, rerr end
    if line == "" then break end
    action = line:match("^action=(.*)$") or action
  end
  sock:setkeepalive() -- the next RCPT, of any session, reuses the connection
  return action or "DUNNO"
end

function handle_MAIL(server, session, envelope, address, mail_options)
  local listed, err = smtpd.dns.dnsbl(session.peer[1], zone)
  if listed then
    return "554 5.7.1 Service unavailable; client [" .. session.peer[1] .. "] blocked using " .. zone
  end
  -- a DNSBL that does not answer must not stop the mail: log and go on
  if err then print("dnsbl " .. zone .. ": " .. err) end
  envelope.mail_from = address
  envelope.mail_options = mail_options
  return "250 OK"
end

function handle_RCPT(server, session, envelope, address, rcpt_options)
  local action, err = ask_policy(session, envelope, address)
  if not action then return "451 4.3.0 policy service: " .. err end
  local word, text = action:match("^(%S+)%s*(.*)$")
  word = (word or ""):upper()
  -- Postfix's rules: the text may bring its own enhanced status code
  local function reply(code, enhanced, default)
    if text == "" then text = default end
    if not text:match("^%d%.%d+%.%d+ ") then text = enhanced .. " " .. text end
    return code .. " " .. text
  end
  if word == "REJECT" then return reply("554", "5.7.1", "Recipient rejected") end
  if word == "DEFER" or word == "DEFER_IF_PERMIT" then return reply("450", "4.7.1", "Try again later") end
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end
