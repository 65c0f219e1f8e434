--- AUTH CRAM-MD5 (RFC 2195), shipped with luasmtpd and offered when
-- `auth_mechanisms` lists it. The server sends a fresh challenge
-- `<random.time@hostname>`, the client answers `login SP hex(HMAC-MD5(password,
-- challenge))`, and the script's authenticator gets a `CramMD5` whose
-- `verify(stored_plaintext)` recomputes the digest. Written on the public
-- AUTH API only, so it is also an example of a mechanism.
-- @module smtpd.mechanisms.cram_md5
local smtpd = require "smtpd"
local mech = require "smtpd.mechanisms"

local crypto = smtpd.crypto
local M = {}

local MALFORMED = "501 5.5.2 Malformed CRAM-MD5 message"

--- Makes the challenge (RFC 2195 2: a msg-id, unique per attempt). The
-- random part comes from the OS, so a recorded response never fits again.
-- @param server the server object
-- @treturn string the challenge
function M.new_challenge(server)
  return ("<%s.%d@%s>"):format(mech.hex(crypto.random(12)), math.floor(smtpd.now and smtpd.now() or os.time()),
    server.hostname)
end

--- The mechanism hook.
-- @param server the server object
-- @tparam table args `{ "CRAM-MD5" }` (an initial response is malformed)
-- @return an AuthResult
M["CRAM-MD5"] = function(server, args)
  if args[2] ~= nil then
    server:push(MALFORMED)
    return mech.handled_failure()
  end
  local challenge = M.new_challenge(server)
  local response = server:challenge_auth(challenge)
  if response == nil then return mech.handled_failure() end
  local login, digest = response:match("^(.+) (%x+)$")
  if not login or #digest ~= 32 then
    server:push(MALFORMED)
    return mech.handled_failure()
  end
  digest = digest:lower()
  local auth_data = smtpd.auth_data("CramMD5", { login = login, challenge = challenge },
    function(_, stored)
      if stored ~= nil and type(stored) ~= "string" then
        error("verify: stored must be the plaintext password or nil, got " .. type(stored), 2)
      end
      -- nil: the same HMAC with a key nobody knows, then false.
      local expected = mech.hex(crypto.hmac("md5", stored or mech.process_key, challenge))
      local ok = crypto.equal(expected, digest)
      return stored ~= nil and ok
    end)
  return mech.authenticate(server, "CRAM-MD5", auth_data)
end

return M
