-- policy.lua — the benchmark's luasmtpd policy (bench/run scenarios a-e):
-- AUTH against a user table, recipients only in the local domains, and a
-- look at each message's header before accepting it. policy.py is the same
-- policy for aiosmtpd; keep the two in step (same replies, same checks).
--
-- It must stay a realistic policy, not an empty script: every hook here is
-- one a submission server would define, and each does comparable work in
-- both languages.
-- luacheck: no unused args
local smtpd = require "smtpd"

-- bench/run passes -o auth_require_tls=false for the plain-TCP scenarios.
local handler = {}

-- In production this would be a file or a service; the shape is the same.
local users = {
  alice = "s3cret",
  bob = "hunter2",
  carol = "correct horse battery staple",
  dave = "pa55w0rd",
  erin = "letmein-2026",
  frank = "Tr0ub4dor&3",
}

local local_domains = {
  ["example.com"] = true,
  ["example.org"] = true,
  ["mx.test"] = true,
}

function handler.authenticator(server, session, envelope, mechanism, auth_data)
  if mechanism ~= "PLAIN" and mechanism ~= "LOGIN" then
    return smtpd.AuthResult { success = false, handled = false }
  end
  local want = users[auth_data.login]
  if want ~= nil and want == auth_data.password then
    return smtpd.AuthResult { success = true, auth_data = auth_data }
  end
  return smtpd.AuthResult { success = false, handled = false }
end

function handler.handle_RCPT(server, session, envelope, address, rcpt_options)
  local domain = address:match("@([^@]+)$")
  if not domain or not local_domains[domain:lower()] then
    return "550 5.7.1 Relaying denied"
  end
  local rcpts = envelope.rcpt_tos
  if #rcpts >= 100 then
    return "452 4.5.3 Too many recipients"
  end
  rcpts[#rcpts + 1] = address
  return "250 2.1.5 OK"
end

function handler.handle_DATA(server, session, envelope)
  local content = envelope.content
  -- The header ends at the first empty line; count its lines and look for
  -- the headers RFC 5322 3.6 requires.
  local header_end = content:find("\r\n\r\n", 1, true)
  if not header_end then
    return "554 5.6.0 Message has no header"
  end
  local lines, has_from, has_date = 0, false, false
  local pos = 1
  while pos <= header_end do
    local eol = content:find("\r\n", pos, true)
    local first = content:byte(pos)
    if first ~= 32 and first ~= 9 then  -- not a continuation line
      lines = lines + 1
      local name = content:match("^([%w%-]+):", pos)
      if name then
        name = name:lower()
        if name == "from" then has_from = true elseif name == "date" then has_date = true end
      end
    end
    pos = eol + 2
  end
  if not (has_from and has_date) then
    return "554 5.6.0 Message lacks From or Date"
  end
  return ("250 2.0.0 Accepted (%d header fields)"):format(lines)
end

return handler
