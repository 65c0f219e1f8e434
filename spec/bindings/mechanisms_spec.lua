-- The shipped SASL mechanisms (lua/smtpd/mechanisms/*.lua) against the RFC
-- test vectors, on the real smtpd module (build/lua/smtpd.so: smtpd.crypto
-- on mbedTLS, the auth_data classes) with a scripted `server` in place of a
-- connection: RFC 2195 2 (CRAM-MD5), RFC 5802 5 (SCRAM-SHA-1), RFC 7677 3
-- (SCRAM-SHA-256), RFC 7628 4 (OAUTHBEARER). Then every message parser on
-- malformed input: a readable 501 or a refusal, never a Lua error.
local build_lua = os.getenv("LUASMTPD_CPATH") or "build/lua/?.so"
package.cpath = build_lua .. ";" .. package.cpath
local smtpd = require "smtpd"
local mech = require "smtpd.mechanisms"
local cram = require "smtpd.mechanisms.cram_md5"
local scram = require "smtpd.mechanisms.scram"
local oauth = require "smtpd.mechanisms.oauth"

-- A server whose client says `replies` in order; records what we sent.
local function fake_server(replies, authenticator, extra)
  local s = { sent = {}, pushed = {}, hostname = "mx.test", mechanisms = {},
              authenticator = authenticator, session = {}, envelope = {} }
  function s:challenge_auth(challenge)
    self.sent[#self.sent + 1] = challenge
    local r = table.remove(replies, 1)
    if r == "*" then
      self.pushed[#self.pushed + 1] = "501 5.7.0 Auth aborted"
      return nil
    end
    return r
  end
  function s:push(line) self.pushed[#self.pushed + 1] = line end
  s.channel_binding = function() return nil end
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local function result_of(r)
  if r == nil then return "nil" end
  return ("success=%s handled=%s"):format(tostring(r.success), tostring(r.handled))
end

local function verify_with(stored)
  return function(_, _, _, _, auth_data)
    local ok = auth_data:verify(stored)
    return smtpd.AuthResult { success = ok, handled = false, auth_data = auth_data }
  end
end

-- A SCRAM secret in our stored format, from the RFC's salt and password.
local function secret(hash, password, salt64, iterations)
  local k = scram.derive(hash, password, smtpd.b64decode(salt64), iterations)
  return ("SCRAM-SHA-%s$%d:%s$%s:%s"):format(hash == "sha256" and "256" or "1", iterations, salt64,
    smtpd.b64encode(k.stored_key), smtpd.b64encode(k.server_key))
end

describe("smtpd.crypto", function()
  it("HMAC-MD5 of RFC 2195's example and PBKDF2-SHA-1 of RFC 6070", function()
    assert.equal("b913a602c7eda7a495b4e6e7334d3890", mech.hex(smtpd.crypto.hmac("md5",
      "tanstaaftanstaaf", "<1896.697170952@postoffice.reston.mci.net>")))
    assert.equal("4b007901b765489abead49d926f721d065a429c1",
      mech.hex(smtpd.crypto.pbkdf2("sha1", "password", "salt", 4096)))
  end)
  it("raises readable errors on bad arguments", function()
    assert.has_error(function() smtpd.crypto.hash("sha3", "x") end)
    local ok, err = pcall(smtpd.crypto.pbkdf2, "sha1", "p", "s", 10 ^ 7)
    assert.is_false(ok)
    assert.matches("iterations must be 1 to 100000", err)
    assert.is_false(smtpd.crypto.equal("a", "ab"))
    assert.is_true(smtpd.crypto.equal("ab", "ab"))
    assert.equal(16, #smtpd.crypto.random(16))
  end)
end)

describe("CRAM-MD5 (RFC 2195 2)", function()
  local saved = cram.new_challenge
  before_each(function()
    cram.new_challenge = function() return "<1896.697170952@postoffice.reston.mci.net>" end
  end)
  after_each(function() cram.new_challenge = saved end)

  it("accepts the RFC's response for tanstaaftanstaaf", function()
    local seen
    local s = fake_server({ "tim b913a602c7eda7a495b4e6e7334d3890" }, function(_, _, _, _, ad)
      seen = ad
      return smtpd.AuthResult { success = ad:verify("tanstaaftanstaaf"), auth_data = ad }
    end)
    local r = cram["CRAM-MD5"](s, { "CRAM-MD5" })
    assert.equal("<1896.697170952@postoffice.reston.mci.net>", s.sent[1])
    assert.is_true(r.success)
    assert.equal("tim", seen.login)
    assert.equal('CramMD5(login="tim", ...)', tostring(seen))
  end)

  it("refuses a wrong password, an unknown user (nil) and a malformed response", function()
    local r = cram["CRAM-MD5"](fake_server({ "tim b913a602c7eda7a495b4e6e7334d3890" },
      verify_with("wrong")), { "CRAM-MD5" })
    assert.is_false(r.success)
    r = cram["CRAM-MD5"](fake_server({ "tim b913a602c7eda7a495b4e6e7334d3890" }, verify_with(nil)),
      { "CRAM-MD5" })
    assert.is_false(r.success)
    for _, bad in ipairs { "tim", "tim xyz", "b913a602c7eda7a495b4e6e7334d3890", "tim b913a6",
                           "", "tim  " .. ("0"):rep(33) } do
      local s = fake_server({ bad }, verify_with("tanstaaftanstaaf"))
      r = cram["CRAM-MD5"](s, { "CRAM-MD5" })
      assert.equal("success=false handled=true", result_of(r), bad)
      assert.same({ "501 5.5.2 Malformed CRAM-MD5 message" }, s.pushed)
    end
  end)
end)

local function scram_case(name, hash, v)
  describe(name, function()
    local saved = scram.new_nonce
    before_each(function() scram.new_nonce = function() return v.snonce end end)
    after_each(function() scram.new_nonce = saved end)

    it("reproduces the RFC exchange: server-first and the server signature", function()
      local stored = secret(hash, "pencil", v.salt, 4096)
      local s = fake_server({ v.client_final, "" }, verify_with(stored))
      local r = scram[name](s, { name, smtpd.b64encode(v.client_first) })
      assert.same({ v.server_first, v.server_final }, s.sent)
      assert.equal("success=true handled=false", result_of(r))
    end)

    it("refuses a wrong password, a bad proof, a replayed nonce and an unknown user", function()
      local wrong = secret(hash, "pen", v.salt, 4096)
      local s = fake_server({ v.client_final }, verify_with(wrong))
      assert.is_false(scram[name](s, { name, smtpd.b64encode(v.client_first) }).success)
      assert.equal(1, #s.sent) -- no server signature
      local stored = secret(hash, "pencil", v.salt, 4096)
      local bad_proof = v.client_final:gsub("p=.", "p=A")
      s = fake_server({ bad_proof }, verify_with(stored))
      assert.is_false(scram[name](s, { name, smtpd.b64encode(v.client_first) }).success)
      -- a fresh server nonce: the recorded client-final no longer fits
      scram.new_nonce = function() return "fresh" .. v.snonce end
      s = fake_server({ v.client_final }, verify_with(stored))
      assert.is_false(scram[name](s, { name, smtpd.b64encode(v.client_first) }).success)
      s = fake_server({ v.client_final }, verify_with(nil))
      assert.is_false(scram[name](s, { name, smtpd.b64encode(v.client_first) }).success)
      assert.matches("^r=.*,s=.*,i=4096$", s.sent[1])
    end)

    it("a cancelled exchange (*) after server-first: handled failure, 501 sent", function()
      local stored = secret(hash, "pencil", v.salt, 4096)
      local s = fake_server({ "*" }, verify_with(stored))
      local r = scram[name](s, { name, smtpd.b64encode(v.client_first) })
      assert.equal("success=false handled=true", result_of(r))
      assert.same({ "501 5.7.0 Auth aborted" }, s.pushed)
    end)

    it("malformed messages get 501 5.5.2 Malformed " .. name .. " message", function()
      local stored = secret(hash, "pencil", v.salt, 4096)
      for _, bad in ipairs { "", "n", "n,", "n,,", "x,,n=user,r=abc", "n,,m=ext,n=user,r=a",
                             "n,,n=us=er,r=abc", "n,,n=user", "n,,n=,r=abc", "n,b=x,n=user,r=abc",
                             "p=,,n=user,r=abc", "n,,n=user,r=a,b", "n,,n=user,r=" } do
        local s = fake_server({}, verify_with(stored))
        local r = scram[name](s, { name, smtpd.b64encode(bad) })
        assert.equal("success=false handled=true", result_of(r), bad)
        assert.same({ ("501 5.5.2 Malformed %s message"):format(name) }, s.pushed, bad)
      end
      for _, bad in ipairs { "c=biws", "c=biws,r=x", "c=!!,r=x,p=AAAA", "r=x,c=biws,p=AAAA",
                             "c=biws,r=x,p=!!" } do
        local s = fake_server({ bad }, verify_with(stored))
        local r = scram[name](s, { name, smtpd.b64encode(v.client_first) })
        assert.equal("success=false handled=true", result_of(r), bad)
        assert.same({ ("501 5.5.2 Malformed %s message"):format(name) }, s.pushed, bad)
      end
    end)

    it("saslnames: =2C and =3D unescape; y with -PLUS offered is a downgrade", function()
      local cf = scram.parse_client_first("n,a=a=3Db=2Cc,n=u=2C=3Dv,r=abc")
      assert.equal("a=b,c", cf.authzid)
      assert.equal("u,=v", cf.login)
      local s = fake_server({}, verify_with("pencil"), { mechanisms = { name .. "-PLUS", name } })
      local r = scram[name](s, { name, smtpd.b64encode("y,,n=user,r=abc") })
      assert.equal("success=false handled=false", result_of(r))
      assert.equal(0, #s.sent)
      -- y without -PLUS offered: fine (the client could bind, we cannot)
      s = fake_server({}, function() return smtpd.AuthResult { success = false } end)
      scram[name](s, { name, smtpd.b64encode("y,,n=user,r=abc") })
      -- p= on the non-PLUS mechanism, and -PLUS with no binding: refused
      s = fake_server({}, verify_with("pencil"))
      assert.is_false(scram[name](s, { name, smtpd.b64encode("p=tls-unique,,n=user,r=abc") }).success)
      assert.is_false(scram[name .. "-PLUS"](s, { name .. "-PLUS",
        smtpd.b64encode("p=tls-unique,,n=user,r=abc") }).success)
    end)

    it("Scram's tostring shows only the login", function()
      local seen
      local s = fake_server({}, function(_, _, _, _, ad)
        seen = ad
        return false
      end)
      scram[name](s, { name, smtpd.b64encode(v.client_first) })
      assert.equal('Scram(login="user", ...)', tostring(seen))
      assert.equal(name, seen.mechanism)
    end)
  end)
end

scram_case("SCRAM-SHA-1", "sha1", { -- RFC 5802 5
  client_first = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
  snonce = "3rfcNHYJY1ZVvWVs7j", salt = "QSXCR+Q6sek8bf92",
  server_first = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
  client_final = "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
  server_final = "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
})

scram_case("SCRAM-SHA-256", "sha256", { -- RFC 7677 3
  client_first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
  snonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", salt = "W22ZaJ0SNY7soEsUEjb6gQ==",
  server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
  client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    .. "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
  server_final = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
})

describe("OAUTHBEARER (RFC 7628 4)", function()
  local RFC_TOKEN = "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
  local initial = "n,a=user@example.com,\1host=server.example.com\1port=143\1auth=Bearer "
    .. RFC_TOKEN .. "\1\1"

  it("4.1: a valid bearer token succeeds in one message", function()
    local seen
    local s = fake_server({}, function(_, _, _, _, ad)
      seen = ad
      return smtpd.AuthResult { success = ad:verify(RFC_TOKEN), auth_data = ad }
    end)
    local r = oauth.OAUTHBEARER(s, { "OAUTHBEARER", smtpd.b64encode(initial) })
    assert.is_true(r.success)
    assert.equal(0, #s.sent)
    assert.equal("user@example.com", seen.login)
    assert.equal("server.example.com", seen.host)
    assert.equal(143, seen.port)
    assert.equal('OAuthToken(login="user@example.com", ...)', tostring(seen))
  end)

  it("4.3/4.4: a refused token gets the RFC's error challenge; the client's %x01 ends it", function()
    local s = fake_server({ "\1" }, verify_with(function()
      return false, { status = "invalid_token", scope = "example_scope",
        ["openid-configuration"] = "https://example.com/.well-known/openid-configuration" }
    end))
    local r = oauth.OAUTHBEARER(s, { "OAUTHBEARER", smtpd.b64encode(initial) })
    assert.equal("success=false handled=false", result_of(r))
    -- RFC 7628 4.3's base64 challenge, byte for byte
    assert.equal("eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZp"
      .. "Z3VyYXRpb24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0=",
      smtpd.b64encode(s.sent[1]))
  end)

  it("XOAUTH2: Google's error JSON, a cancelled exchange and malformed messages", function()
    local s = fake_server({ "" }, verify_with("right"))
    local r = oauth.XOAUTH2(s, { "XOAUTH2", smtpd.b64encode("user=a@b\1auth=Bearer wrong\1\1") })
    assert.is_false(r.success)
    assert.equal('{"status":"401","schemes":"bearer"}', s.sent[1])
    s = fake_server({ "*" }, verify_with("right"))
    r = oauth.XOAUTH2(s, { "XOAUTH2", smtpd.b64encode("user=a@b\1auth=Bearer wrong\1\1") })
    assert.equal("success=false handled=true", result_of(r))
    s = fake_server({}, verify_with("right"))
    assert.is_true(oauth.XOAUTH2(s, { "XOAUTH2", smtpd.b64encode("user=a@b\1auth=Bearer right\1\1") }).success)
    for _, bad in ipairs { "", "user=a@b", "user=a@b\1auth=Bearer x\1", "user=\1auth=Bearer x\1\1",
                           "user=a\1auth=Basic x\1\1", "user=a\1auth=Bearer\1\1" } do
      s = fake_server({}, verify_with("right"))
      r = oauth.XOAUTH2(s, { "XOAUTH2", smtpd.b64encode(bad) })
      assert.equal("success=false handled=true", result_of(r), bad)
      assert.same({ "501 5.5.2 Malformed XOAUTH2 message" }, s.pushed)
    end
    for _, bad in ipairs { "", "n,,", "n,,\1\1", "p=tls-unique,,\1auth=Bearer x\1\1",
                           "n,a=u,\1auth=Bearer x\1", "n,,\1auth=Bearer x\1auth=Bearer y\1\1",
                           "n,,\1port=abc\1auth=Bearer x\1\1", "n,x=1,\1auth=Bearer x\1\1" } do
      s = fake_server({}, verify_with("right"))
      r = oauth.OAUTHBEARER(s, { "OAUTHBEARER", smtpd.b64encode(bad) })
      assert.equal("success=false handled=true", result_of(r), bad)
      assert.same({ "501 5.5.2 Malformed OAUTHBEARER message" }, s.pushed)
    end
  end)
end)

describe("auth_data classes", function()
  it("smtpd.auth_data refuses an unknown class and hides everything but the login", function()
    assert.has_error(function() smtpd.auth_data("Nope", {}, function() end) end,
      "auth_data: unknown class 'Nope' (expected CramMD5, Scram, OAuthToken or External)")
    local t = smtpd.auth_data("OAuthToken", { login = "a", token = "s3cret-token" }, function() return true end)
    assert.is_nil(tostring(t):find("s3cret", 1, true))
    assert.equal("s3cret-token", t.token)
    assert.is_true(t:verify())
    assert.is_nil(t.nonexistent)
    local e = smtpd.auth_data("External", { authzid = nil, peercert = "PEM" }, function() return false end)
    assert.equal("External(authzid=nil, ...)", tostring(e))
  end)
end)

describe("LoginPassword:verify", function()
  it("compares a plaintext password; raises on a stored value of the wrong type", function()
    local lp = smtpd.LoginPassword("alice", "s3cret")
    assert.is_true(lp:verify("s3cret"))
    assert.is_false(lp:verify("s3cret "))
    assert.is_false(lp:verify(""))
    local ok, err = pcall(lp.verify, lp, 42)
    assert.is_false(ok)
    assert.matches("verify: stored must be a string or nil, got number", err)
    assert.is_true(mech.is_hash("$y$j9T$abc$def"))
    assert.is_true(mech.is_hash("SCRAM-SHA-256$4096:c2FsdA==$a:b"))
    assert.is_false(mech.is_hash("plain$text"))
  end)
end)
