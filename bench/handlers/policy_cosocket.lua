-- policy_cosocket.lua — luasmtpd's handler for bench/run scenario (h):
-- scenario (a)'s policy (policy.lua, loaded from this file's directory, so
-- the two cannot drift apart) plus, in handle_RCPT, one round trip to a
-- policy service over a pooled cosocket (async-api.md section 4), the way
-- Postfix's check_policy_service asks a policy daemon:
--
--   request=smtpd_access_policy      (name=value lines, LF-terminated)
--   ...
--   <empty line>                  ->  action=DUNNO | action=REJECT text
--                                     <empty line>
--
-- The service is bench/policyd at BENCH_POLICYD ("127.0.0.1:PORT", set by
-- bench/run). DUNNO and OK go on to policy.lua's own RCPT check; REJECT
-- becomes a 554, DEFER a 450; an unreachable or mute service a 451 (fail
-- closed, but temporarily, as Postfix does).
--
-- It needs smtpd.socket.tcp: a luasmtpd without cosockets fails to load it
-- (and bench/run's --check of it), and bench/run skips scenario (h).
-- luacheck: no unused args
local smtpd = require "smtpd"

if type(smtpd.socket) ~= "table" or type(smtpd.socket.tcp) ~= "function" then
  error("smtpd.socket.tcp is missing: this luasmtpd has no cosockets (async-api.md 4)", 0)
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local handler = dofile(here .. "policy.lua")

local policyd = os.getenv("BENCH_POLICYD") or "127.0.0.1:10040"
local POLICYD_HOST, POLICYD_PORT = policyd:match("^([%d%.]+):(%d+)$")
if not POLICYD_HOST then
  error("BENCH_POLICYD must be 127.0.0.1:PORT, got " .. policyd, 0)
end
POLICYD_PORT = tonumber(POLICYD_PORT)

-- The pool's name carries the address: connections to another service
-- (a changed BENCH_POLICYD on reload) are never handed out from it.
local POOL = ("policyd/%s:%d"):format(POLICYD_HOST, POLICYD_PORT)
local CONNECT_OPTIONS = { pool = POOL } -- made once, not per RCPT
local POOL_IDLE_SECONDS, POOL_SIZE = 60, 64 -- one per concurrent session of the bench
-- A local service answers in well under a millisecond; these only bound a
-- stuck one.
local CONNECT_TIMEOUT, SEND_TIMEOUT, READ_TIMEOUT = 1, 1, 2
-- Postfix's policy replies are one action line; a few more lines are
-- allowed (attributes the service may add), not an endless stream.
local REPLY_LINES_MAX = 16

-- One request, one reply: returns the action ("DUNNO", "REJECT 5.7.1 ...")
-- or nil, err. The connection goes back to the pool only after a complete
-- reply; on any error it is closed (a late reply must not reach the next
-- user of the pool).
local function policy_query(session, envelope, address)
  local sock = smtpd.socket.tcp()
  sock:settimeouts(CONNECT_TIMEOUT, SEND_TIMEOUT, READ_TIMEOUT)
  local ok, err = sock:connect(POLICYD_HOST, POLICYD_PORT, CONNECT_OPTIONS)
  if not ok then
    return nil, "connect: " .. err
  end
  local peer = session.peer
  local sent
  sent, err = sock:send {
    "request=smtpd_access_policy\n",
    "protocol_state=RCPT\n",
    "protocol_name=ESMTP\n",
    "client_address=", peer and peer.host or "", "\n",
    "helo_name=", session.host_name or "", "\n",
    "sasl_username=", session.auth_data and session.auth_data.login or "", "\n",
    "sender=", envelope.mail_from or "", "\n",
    "recipient=", address, "\n",
    "\n",
  }
  if not sent then
    sock:close()
    return nil, "send: " .. err
  end
  local action
  for _ = 1, REPLY_LINES_MAX do
    local line
    line, err = sock:receive("*l")
    if not line then
      sock:close()
      return nil, "receive: " .. err
    end
    if line == "" then
      if not action then
        sock:close()
        return nil, "reply without action"
      end
      sock:setkeepalive(POOL_IDLE_SECONDS, POOL_SIZE)
      return action
    end
    action = line:match("^action=(.*)$") or action
  end
  sock:close()
  return nil, "reply too long"
end

-- Postfix access(5) actions, the ones a policy service answers.
local function action_reply(action)
  local verb, text = action:match("^(%S+)%s*(.*)$")
  verb = (verb or ""):upper()
  if verb == "DUNNO" or verb == "OK" then
    return nil
  elseif verb == "REJECT" then
    return "554 " .. (text ~= "" and text or "5.7.1 Recipient rejected by policy")
  elseif verb == "DEFER" or verb == "DEFER_IF_PERMIT" then
    return "450 " .. (text ~= "" and text or "4.7.1 Try again later")
  end
  return "451 4.3.5 Policy service answered " .. verb
end

local local_rcpt = handler.handle_RCPT

function handler.handle_RCPT(server, session, envelope, address, rcpt_options)
  local action, err = policy_query(session, envelope, address)
  if not action then
    return "451 4.3.0 Policy service unavailable (" .. err .. ")"
  end
  local reply = action_reply(action)
  if reply then
    return reply
  end
  return local_rcpt(server, session, envelope, address, rcpt_options)
end

return handler
