--- smtpd.handlers.lmtp: relays over LMTP (RFC 2033), e.g. to Dovecot's
-- LMTP socket. As `smtpd.handlers.relay` with `lmtp = true`: each RCPT is
-- verified with the LMTP server first; after DATA the LMTP server's
-- per-recipient replies are handle_DATA's per-recipient table when this
-- server speaks LMTP itself (`session.lmtp`, `--lmtp`), else one verdict: 250 when any
-- recipient got the message (those that did not are logged), else the
-- first recipient's failure.
-- @usage return require("smtpd.handlers.lmtp"){ path = "/run/dovecot/lmtp" }
local relay = require "smtpd.handlers.relay"

return function(opts)
  if type(opts) ~= "table" then error("smtpd.handlers.lmtp: expected a table of options", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.lmtp = true
  if o.starttls == nil and o.path then o.starttls = false end
  return relay(o)
end
