-- aiosmtpd's examples/authenticated_relayer, ported (delivery.md 6): a
-- submission server that accepts mail only from users of an SQLite store
-- (argon2id hashes), AUTH only after STARTTLS, and relays each message to
-- the recipients' mail servers (MX lookup with smtpd.dns) or to one
-- smarthost, without losing it: the client gets 250 only after the
-- upstream accepted the message (delivery.md 2).
--
--   luasmtpd --handler server.lua --tlscert cert.pem --tlskey key.pem \
--     -l 0.0.0.0:587 -- /etc/luasmtpd/users.db [SMARTHOST[:PORT]]
--
-- Without SMARTHOST each recipient's domain is looked up (MX records,
-- lowest preference first, the next MX when one is down; the domain's own
-- address when it has no MX, RFC 5321 5.1). A message goes to one domain
-- per transaction: a recipient in another domain gets 452 and the client
-- sends it in a second transaction (RFC 5321 4.5.3.1.10), so a message is
-- never half delivered. Every RCPT is verified with the upstream before
-- the client gets its reply (smtpd.handlers.relay).
local smtpd = require "smtpd"
local relay = require "smtpd.handlers.relay"

local db_path, smarthost, mx_port = ...
assert(db_path, "usage: luasmtpd --handler server.lua -- USER_DB [SMARTHOST[:PORT]]")
if smarthost == "" then smarthost = nil end
mx_port = tonumber(mx_port) or 25 -- the MX port: 25 (another only for tests)

local handler = {
  options = {
    auth_required = true,     -- MAIL, RCPT and DATA need AUTH first
    auth_require_tls = true,  -- AUTH is offered only after STARTTLS
  },
}

local UNAVAILABLE = "451 4.4.1 Error: upstream unavailable, try again later"
local OTHER_DOMAIN = "452 4.5.3 Error: one domain per message, send the others in another transaction"

local db
function handler.authenticator(server, session, envelope, mechanism, auth_data)
  if mechanism ~= "PLAIN" and mechanism ~= "LOGIN" then
    return smtpd.AuthResult{ success = false, handled = false }
  end
  db = db or assert(smtpd.sqlite.open(db_path, { readonly = true }))
  local rows, err = db:query("SELECT hashpass FROM userauth WHERE username = ?", auth_data.login)
  if not rows then
    smtpd.log("error", "user store " .. db_path .. ": " .. err)
    return smtpd.AuthResult{ success = false, handled = false, message = "454 4.7.0 Temporary authentication failure" }
  end
  local ok = rows[1] and smtpd.crypt.verify(auth_data.password, rows[1].hashpass)
  return smtpd.AuthResult{ success = ok == true, handled = false }
end

-- One relay handler per upstream host (its connections are pooled).
local relays = {}
local function relay_to(host, port)
  local key = host .. ":" .. port
  relays[key] = relays[key] or relay{ host = host, port = port }
  return relays[key]
end

-- The upstreams of a domain, in the order to try them.
local function upstreams(domain)
  if smarthost then
    local host, port = smarthost:match("^%[?([^%[%]]-)%]?:(%d+)$")
    return { { host or smarthost, tonumber(port) or 25 } }
  end
  local mx, err = smtpd.dns.query(domain, "MX")
  if not mx then
    if err == "no data" or err == "name not found" then
      if err == "name not found" then return nil, "550 5.1.2 Error: no such domain" end
      return { { domain, mx_port } } -- no MX: the domain's own address
    end
    return nil, "451 4.4.3 Error: cannot look up " .. domain .. " (" .. err .. ")"
  end
  table.sort(mx, function(a, b) return a.preference < b.preference end)
  local list = {}
  for _, r in ipairs(mx) do
    if r.exchange == "" or r.exchange == "." then return nil, "556 5.1.10 Error: the domain accepts no mail" end
    list[#list + 1] = { r.exchange, mx_port }
  end
  return list
end

function handler.handle_RCPT(server, session, envelope, address, rcpt_options)
  local domain = (address:match("@([^@]+)$") or ""):lower()
  if envelope.relay_domain and domain ~= envelope.relay_domain then return OTHER_DOMAIN end
  local list, why = upstreams(domain)
  if not list then return why end
  local status = UNAVAILABLE
  for _, up in ipairs(list) do
    local r = relay_to(up[1], up[2])
    status = r.handle_RCPT(server, session, envelope, address, rcpt_options)
    if status ~= UNAVAILABLE then
      envelope.relay_domain, envelope.relay_upstream = domain, r
      break
    end
  end
  return status
end

function handler.handle_DATA(server, session, envelope)
  local r = envelope.relay_upstream
  if not r then return UNAVAILABLE end
  return r.handle_DATA(server, session, envelope)
end

return handler
