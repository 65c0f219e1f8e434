--- smtpd.handlers.relay: relays each message to one upstream without
-- losing it (delivery.md 2), aiosmtpd's `Proxy` done right.
--
-- The design: every RCPT is verified with the upstream before the client
-- gets its reply (MAIL and RCPT on a pooled connection, then RSET), so a
-- recipient the upstream refuses is refused to the client at RCPT, with
-- the upstream's code and text. At DATA the whole transaction goes to the
-- upstream with `require_all`: if the upstream now refuses a recipient it
-- accepted at RCPT, nothing is sent and the client gets 451 and retries
-- the message later (no recipient gets it twice, none loses it). The reply
-- to DATA is the upstream's verdict: 250 only after the upstream accepted
-- the message, its 5xx as it is, its 4xx as it is; a connection failure
-- or a timeout is `451 4.4.1`. luasmtpd has no queue: the sending client's
-- queue is the queue.
--
-- The connection a hook opens belongs to that hook run (async-api.md 1), so
-- one upstream transaction cannot span the client's MAIL, RCPT and DATA
-- hooks; verification per RCPT over the pool is how the client's RCPT
-- replies are the upstream's.
-- @usage return require("smtpd.handlers.relay"){ host = "10.0.0.5", port = 25 }
local smtpd = require "smtpd"
local client = require "smtpd.client"

--- The reply when the upstream cannot be reached or times out.
local UNAVAILABLE = "451 4.4.1 Error: upstream unavailable, try again later"
--- The reply when the upstream now refuses a recipient it accepted at RCPT.
local CHANGED = "451 4.4.1 Error: upstream refused a recipient it had accepted, try again later"

local CONNECT_KEYS = { "host", "port", "path", "lmtp", "helo", "starttls", "tls", "implicit_tls", "auth",
  "timeouts", "pool" }

local function status(code, message)
  local text = message and message:gsub("\n.*", "") or ""
  if text == "" then return tostring(code) end
  return code .. " " .. text
end

-- The reply for a failed send: the upstream's own code where it gave one.
local function failure(err, partial)
  local code = partial and partial.code
  if err == "message too large for the server" then
    return "552 5.3.4 Error: message too large for the upstream"
  elseif err == "server lacks SMTPUTF8" then
    return "553 5.6.7 Error: the upstream does not support SMTPUTF8"
  elseif err == "server lacks 8BITMIME" then
    return "554 5.6.3 Error: the upstream does not accept 8-bit content"
  elseif err == "recipient refused" then
    return CHANGED
  elseif code and code >= 400 and code < 600 then
    return status(code, partial.message)
  end
  return UNAVAILABLE
end

--- Makes a relay handler.
-- @param opts the connection options of `smtpd.client.send` (`host`,
--   `port`, or `path`; `lmtp`, `helo`, `starttls`, `tls`, `implicit_tls`,
--   `auth`, `timeouts`), and `verify_rcpt` (default true: verify each RCPT
--   with the upstream; false: accept every RCPT and relay at DATA, where a
--   refused recipient makes the message 451 as a whole)
-- @return a handler table with handle_RCPT and handle_DATA
local function new(opts)
  if type(opts) ~= "table" then error("smtpd.handlers.relay: expected a table of options", 2) end
  if not opts.host and not opts.path then error("smtpd.handlers.relay: host or path is required", 2) end
  local conn = {}
  for _, k in ipairs(CONNECT_KEYS) do conn[k] = opts[k] end
  local verify = opts.verify_rcpt ~= false
  local handler = { upstream = conn }

  local function with(extra, server)
    local o = {}
    for k, v in pairs(conn) do o[k] = v end
    for k, v in pairs(extra) do o[k] = v end
    if not o.helo and server then o.helo = server.hostname end
    return o
  end

  function handler.handle_RCPT(server, _, envelope, address, rcpt_options)
    if verify then
      local c, code, msg
      -- A pooled connection the upstream dropped while idle fails at MAIL:
      -- then another one (the dead one is closed).
      for attempt = 1, 3 do
        local err, partial
        c, err, partial = client.connect(with({}, server))
        if not c then
          smtpd.log("warn", ("relay: upstream at %s: %s (stage %s)"):format(conn.path or conn.host,
            tostring(err), partial.stage))
          return failure(err, partial)
        end
        local reused = c:getreusedtimes() > 0
        code, msg = c:mail(envelope.mail_from or "", envelope.mail_options)
        if code or not reused or attempt == 3 then break end
      end
      if not code then return UNAVAILABLE end
      if code < 200 or code >= 300 then
        c:setkeepalive()
        return status(code, msg)
      end
      code, msg = c:rcpt(address, rcpt_options)
      if not code then return UNAVAILABLE end
      c:setkeepalive()
      if code < 200 or code >= 300 then return status(code, msg) end
    end
    envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
    return "250 OK"
  end

  function handler.handle_DATA(server, session, envelope)
    local res, err, partial = client.send(with({
      from = envelope.mail_from or "", to = envelope.rcpt_tos, data = envelope.original_content,
      mail_options = envelope.mail_options, require_all = not conn.lmtp, keepalive = true,
    }, server))
    if not res then
      smtpd.log("warn", ("relay: upstream at %s: %s (stage %s)"):format(conn.path or conn.host,
        tostring(err), partial.stage))
      if conn.lmtp and partial.lmtp then return handler.lmtp_verdict(session, envelope, partial) end
      return failure(err, partial)
    end
    if conn.lmtp then return handler.lmtp_verdict(session, envelope, res) end
    return status(res.code, res.message)
  end

  -- LMTP: one reply per recipient. An LMTP session (session.lmtp, --lmtp)
  -- passes them on as
  -- handle_DATA's per-recipient table; an SMTP server has one reply for the
  -- message: 250 if any recipient got it (a 451 would deliver it twice to
  -- those on retry), else the first recipient's failure; the recipients
  -- that failed are logged.
  function handler.lmtp_verdict(session, envelope, res)
    local per, ok, first_fail = {}, 0, nil
    for _, rcpt in ipairs(envelope.rcpt_tos) do
      local r = res.lmtp[rcpt] or (res.rejected and res.rejected[rcpt])
      local s = r and status(r[1], r[2]) or UNAVAILABLE
      per[rcpt] = s
      if r and r[1] >= 200 and r[1] < 300 then ok = ok + 1 elseif not first_fail then first_fail = s end
    end
    if session.lmtp then return per end
    if ok == #envelope.rcpt_tos then return "250 OK" end
    if ok == 0 then return first_fail end
    for rcpt, s in pairs(per) do
      if s:sub(1, 1) ~= "2" then
        smtpd.log("warn", ("lmtp: %s not delivered (%s); the message was accepted for the others"):format(
          rcpt, s))
      end
    end
    return "250 OK"
  end

  return handler
end

return new
