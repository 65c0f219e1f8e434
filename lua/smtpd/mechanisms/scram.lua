--- AUTH SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802, 7677) and their -PLUS forms
-- with channel binding (RFC 5929 `tls-unique`, `tls-server-end-point`),
-- shipped with luasmtpd and offered when `auth_mechanisms` lists them.
--
-- The mechanism reads the client-first message, then hands a `Scram` to
-- the script's authenticator; `auth_data:verify(stored)` runs the rest of
-- the exchange: server-first (our nonce from the OS, the salt and iteration
-- count of the stored secret), client-final (channel binding, nonce,
-- proof) and server-final (`v=` the server signature, sent as a 334 that
-- the client answers with an empty line, RFC 4954 4). `stored` is the
-- plaintext password or a SCRAM secret
-- `SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>`;
-- nil runs the same exchange against a fake secret and fails, so an
-- unknown user looks like a wrong password. Written on the public AUTH API.
-- @module smtpd.mechanisms.scram
local smtpd = require "smtpd"
local mech = require "smtpd.mechanisms"

local crypto = smtpd.crypto
local b64, unb64 = smtpd.b64encode, smtpd.b64decode
local M = {}

--- Iterations for a plaintext password or an unknown user (RFC 7677 4).
M.ITERATIONS = 4096

--- Our half of the nonce: 18 random bytes from the OS, base64 (printable,
-- no ","). Replaceable for the RFC test vectors.
function M.new_nonce()
  return b64(crypto.random(18))
end

local function malformed(server, name)
  server:push(("501 5.5.2 Malformed %s message"):format(name))
end

-- A printable nonce (RFC 5802 7: %x21-2B / %x2D-7E).
local function nonce_ok(s)
  return s ~= "" and not s:find("[^\33-\43\45-\126]")
end

-- Extensions: `,attr=value` pairs (RFC 5802 7), or nothing.
local function extensions_ok(ext)
  return ext:gsub(",%a=[^,]*", "") == ""
end

--- Parses a client-first message (RFC 5802 7).
-- @treturn table|nil `{ flag, cbname, authzid, gs2, bare, login, cnonce }`
function M.parse_client_first(msg)
  local flag, rest = msg:match("^([^,]*),(.*)$")
  if not flag then return nil end
  local cbname
  if flag ~= "n" and flag ~= "y" then
    cbname = flag:match("^p=([%w%.%-]+)$")
    if not cbname then return nil end
  end
  local az, bare = rest:match("^([^,]*),(.*)$")
  if not az then return nil end
  local authzid
  if az ~= "" then
    authzid = az:match("^a=(.+)$")
    authzid = authzid and mech.saslname(authzid)
    if not authzid then return nil end
  end
  if bare:match("^m=") then return nil end -- reserved-mext: must fail
  local user, cnonce, ext = bare:match("^n=([^,]*),r=([^,]*)(.*)$")
  if not user or not extensions_ok(ext) or not nonce_ok(cnonce) then return nil end
  local login = mech.saslname(user)
  if not login or login == "" then return nil end
  return { flag = flag, cbname = cbname, authzid = authzid, gs2 = msg:sub(1, #msg - #bare),
           bare = bare, login = login, cnonce = cnonce }
end

--- Parses a client-final message.
-- @treturn table|nil `{ without_proof, c, r, proof }`
function M.parse_client_final(msg)
  local without, proof = msg:match("^(.*),p=([^,]+)$")
  if not without then return nil end
  local c, r, ext = without:match("^c=([^,]*),r=([^,]*)(.*)$")
  if not c or not extensions_ok(ext) then return nil end
  local cb, p = unb64(c), unb64(proof)
  if not cb or not p then return nil end
  return { without_proof = without, cbind = cb, r = r, proof = p }
end

--- Parses a SCRAM secret for hash `hash` ("sha1" / "sha256").
-- @treturn table|nil `{ iterations, salt, stored_key, server_key }`
function M.parse_secret(stored, hash)
  local prefix = hash == "sha256" and "SCRAM-SHA-256" or "SCRAM-SHA-1"
  local name, n, s64, k1, k2 = stored:match("^([%w%-]+)%$(%d+):([^$]+)%$([^:]+):(.+)$")
  if name ~= prefix then return nil end
  local size = #crypto.hash(hash, "")
  local it, salt, sk, svk = tonumber(n), unb64(s64), unb64(k1), unb64(k2)
  if not it or it < 1 or not salt or not sk or not svk or #sk ~= size or #svk ~= size then
    return nil
  end
  return { iterations = it, salt = salt, stored_key = sk, server_key = svk }
end

--- The keys of a plaintext password (RFC 5802 3).
function M.derive(hash, password, salt, iterations)
  local salted = crypto.pbkdf2(hash, password, salt, iterations)
  local client_key = crypto.hmac(hash, salted, "Client Key")
  return { iterations = iterations, salt = salt, stored_key = crypto.hash(hash, client_key),
           server_key = crypto.hmac(hash, salted, "Server Key") }
end

-- A stable fake salt for a login: the same on every attempt, like a real
-- user's, but from a per-process key (RFC 5802 9's advice).
local function fake_salt(login)
  return crypto.hmac("sha256", mech.process_key, "salt\0" .. login):sub(1, 16)
end

-- Whether the last stored value was a SCRAM secret: an unknown user then
-- skips the key derivation too, as a known one does.
local last_was_secret = false

-- The rest of the exchange. state.replied: a final reply is already out.
local function exchange(server, st, stored)
  if st.ran then error("verify: this SCRAM exchange already ran", 3) end
  st.ran = true
  local keys
  if stored == nil and last_was_secret then
    local size = #crypto.hash(st.hash, "")
    keys = { iterations = M.ITERATIONS, salt = fake_salt(st.login),
             stored_key = crypto.random(size), server_key = crypto.random(size) }
  elseif stored == nil then
    keys = M.derive(st.hash, mech.process_key, fake_salt(st.login), M.ITERATIONS)
  elseif type(stored) ~= "string" then
    error("verify: stored must be a string or nil, got " .. type(stored), 3)
  elseif stored:match("^SCRAM%-") then
    keys = M.parse_secret(stored, st.hash)
    last_was_secret = true
    if not keys then
      error(("verify: stored is not a %s secret"):format(st.name:gsub("%-PLUS$", "")), 3)
    end
  else
    keys = M.derive(st.hash, stored, fake_salt(st.login), M.ITERATIONS)
    last_was_secret = false
  end
  local nonce = st.cnonce .. M.new_nonce()
  local server_first = ("r=%s,s=%s,i=%d"):format(nonce, b64(keys.salt), keys.iterations)
  local msg = server:challenge_auth(server_first)
  if msg == nil then
    st.replied = true
    return false
  end
  local cf = M.parse_client_final(msg)
  if not cf then
    malformed(server, st.name)
    st.replied = true
    return false
  end
  -- The channel binding (RFC 5802 6): the gs2 header, then the binding data.
  local ok = crypto.equal(cf.cbind, st.gs2 .. (st.cbdata or ""))
  ok = crypto.equal(cf.r, nonce) and ok -- a replayed client-final has another nonce
  local auth_message = st.bare .. "," .. server_first .. "," .. cf.without_proof
  local signature = crypto.hmac(st.hash, keys.stored_key, auth_message)
  if #cf.proof ~= #signature then return false end
  local client_key = crypto.xor(cf.proof, signature)
  ok = crypto.equal(crypto.hash(st.hash, client_key), keys.stored_key) and ok
  if not ok or stored == nil then return false end
  local server_final = "v=" .. b64(crypto.hmac(st.hash, keys.server_key, auth_message))
  local reply = server:challenge_auth(server_final)
  if reply == nil then
    st.replied = true
    return false
  end
  return reply == ""
end

local function scram(name, hash, plus)
  return function(server, args)
    local msg = mech.first_message(server, args)
    if msg == nil then return mech.handled_failure() end
    local cf = M.parse_client_first(msg)
    if not cf then
      malformed(server, name)
      return mech.handled_failure()
    end
    local cbdata
    if plus then
      -- -PLUS without p=, or a binding we do not have: refused.
      cbdata = cf.cbname and server:channel_binding(cf.cbname)
      if not cbdata then return mech.invalid() end
    elseif cf.cbname then
      return mech.invalid() -- p= belongs to the -PLUS mechanism
    elseif cf.flag == "y" and mech.offered(server, name .. "-PLUS") then
      return mech.invalid() -- "y": it thinks we cannot bind, but we offered -PLUS (downgrade)
    end
    if cf.authzid and cf.authzid ~= cf.login and not server.auth_allow_authzid then
      return mech.invalid()
    end
    local st = { name = name, hash = hash, login = cf.login, cnonce = cf.cnonce, gs2 = cf.gs2,
                 bare = cf.bare, cbdata = cbdata }
    local auth_data = smtpd.auth_data("Scram",
      { login = cf.login, authzid = cf.authzid, mechanism = name },
      function(_, stored) return exchange(server, st, stored) end)
    local result = mech.authenticate(server, name, auth_data)
    if st.replied then return mech.handled_failure() end
    return result
  end
end

M["SCRAM-SHA-1"] = scram("SCRAM-SHA-1", "sha1", false)
M["SCRAM-SHA-1-PLUS"] = scram("SCRAM-SHA-1-PLUS", "sha1", true)
M["SCRAM-SHA-256"] = scram("SCRAM-SHA-256", "sha256", false)
M["SCRAM-SHA-256-PLUS"] = scram("SCRAM-SHA-256-PLUS", "sha256", true)

return M
