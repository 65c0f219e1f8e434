-- The shipped SASL mechanisms (mechanisms.md) against real clients: gsasl
-- (CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256, their -PLUS forms over STARTTLS
-- with tls-unique, PLAIN, LOGIN, EXTERNAL), curl (OAUTHBEARER, XOAUTH2),
-- swaks and Python's smtplib (CRAM-MD5); then hand-driven exchanges for
-- what clients never send: a cancelled (*) exchange, malformed messages, a
-- replayed nonce, a channel-binding downgrade. Stored secrets come from
-- `luasmtpd --hash-password scram-sha-256`, `gsasl --mkpasswd` and
-- `mkpasswd`. The SCRAM wait (server-first sent, client-final awaited) is
-- checked like every wait: another client is served, a disconnect, a
-- hook_timeout and a reload during it, and descriptors and RSS after
-- 10,000 waits. The order of events is asserted, never elapsed time.
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"
local hu = require "spec.functional.hostile_util"

local mime = require "mime"

local BIN = os.getenv("LUASMTPD_BIN") or "build/luasmtpd"
local q = u.shell_quote

local function sh_line(cmd)
  local out = u.sh(cmd, 60)
  local line = out:match("^(%S+)\n$")
  assert(line, ("%s printed %q"):format(cmd, out))
  return line
end

-- Stored secrets, made by the tools operators use.
local BOB = sh_line(("printf 'bob-pw\\n' | %s --hash-password scram-sha-256"):format(q(BIN)))
local DAVE -- gsasl's {SCRAM-SHA-1}iter,salt,stored,server, in our format
do
  local g = sh_line("gsasl --mkpasswd -m SCRAM-SHA-1 -p dave-pw --iteration-count 8192")
  local it, salt, sk, svk = g:match("^{SCRAM%-SHA%-1}(%d+),([^,]+),([^,]+),([^,]+)$")
  assert(it == "8192", g)
  DAVE = ("SCRAM-SHA-1$%s:%s$%s:%s"):format(it, salt, sk, svk)
end
local CAROL = sh_line("mkpasswd -m yescrypt carol-pw")

local ALL = { "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5",
  "OAUTHBEARER", "XOAUTH2", "EXTERNAL", "PLAIN", "LOGIN" }

local function source(opts)
  opts = opts or {}
  return ([[
local smtpd = require "smtpd"
local GENERATION = %q
options = { auth_require_tls = false, require_starttls = false, auth_failure_limit = 0, error_limit = 0,
  hook_timeout = 2, auth_mechanisms = { %s } }
local users = { alice = "alice-pw", bob = %q, dave = %q, carol = %q }
if GENERATION ~= "1" then users = {} end
local CLIENT_PEM = %q
local TOKENS = { ["tok-alice"] = "alice" }
function authenticator(server, session, envelope, mechanism, auth_data)
  local ok
  if mechanism == "XOAUTH2" or mechanism == "OAUTHBEARER" then
    ok = auth_data:verify(function(token) return TOKENS[token] == auth_data.login end)
  elseif mechanism == "EXTERNAL" then
    ok = auth_data:verify(function(pem, authzid)
      return pem:gsub("%%s", "") == CLIENT_PEM and (authzid == nil or authzid == "client.test")
    end)
  else
    ok = auth_data:verify(users[auth_data.login])
  end
  io.stderr:write(("authenticator gen=%%s %%s %%s -> %%s\n"):format(GENERATION, mechanism,
    tostring(auth_data), tostring(ok)))
  return smtpd.AuthResult{ success = ok == true, handled = false, auth_data = auth_data }
end
function handle_NOOP(server, session, envelope, arg)
  if arg == "who" then return "250 " .. tostring(session.login_data) end
  return "250 OK"
end
]]):format(opts.generation or "1", '"' .. table.concat(opts.mechanisms or ALL, '", "') .. '"',
    BOB, DAVE, CAROL, opts.client_pem or "")
end

local function gsasl(srv, args)
  return u.sh(("gsasl --smtp %s %s %d"):format(args, srv.host, srv.port), 30)
end

local function b64(s) return testing.b64(s) end
local function unb64(s) return (mime.unb64(s)) end

-- The client side of SCRAM (RFC 5802 3) and CRAM-MD5, in Python's hashlib
-- (an implementation independent of ours; the C module cannot be loaded
-- into luajit under the sanitizer suite).
local CLIENT_PY = [[
import base64, hashlib, hmac, sys
b64 = lambda b: base64.b64encode(b).decode()
if sys.argv[1] == "cram":
    print(hmac.new(sys.argv[2].encode(), sys.argv[3].encode(), "md5").hexdigest())
else:
    h, pw, bare, sf, gs2 = sys.argv[2:7]
    cb = b""
    if len(sys.argv) > 7:  # tls-server-end-point: SHA-256 of the server's certificate (RFC 5929 4.1)
        import ssl
        cb = hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[7]).read())).digest()
    attrs = dict(kv.split("=", 1) for kv in sf.split(","))
    salted = hashlib.pbkdf2_hmac(h, pw.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    ck = hmac.new(salted, b"Client Key", h).digest()
    without = "c=" + b64(gs2.encode() + cb) + ",r=" + attrs["r"]
    am = (bare + "," + sf + "," + without).encode()
    sig = hmac.new(hashlib.new(h, ck).digest(), am, h).digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    print(without + ",p=" + b64(proof))
    print("v=" + b64(hmac.new(hmac.new(salted, b"Server Key", h).digest(), am, h).digest()))
]]
local client_py

-- SCRAM-SHA-256-PLUS with tls-unique from Python's ssl (OpenSSL), once with
-- a full handshake and once resuming its session: tls-unique is the
-- client's Finished in the first, ours in the second (RFC 5929 3.1).
local PLUS_PY = [==[
import base64, hashlib, hmac, socket, ssl, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
b64 = lambda b: base64.b64encode(b).decode()

def reply(f):
    lines = []
    while True:
        l = f.readline().decode().rstrip("\r\n")
        lines.append(l)
        if len(l) < 4 or l[3] == " ":
            return lines

def run(session):
    raw = socket.create_connection((host, port))
    f = raw.makefile("rb")
    reply(f)
    raw.sendall(b"EHLO client.test\r\n"); reply(f)
    raw.sendall(b"STARTTLS\r\n"); reply(f)
    s = ctx.wrap_socket(raw, session=session)
    f = s.makefile("rb")
    s.sendall(b"EHLO client.test\r\n"); reply(f)
    cb = s.get_channel_binding("tls-unique")
    gs2 = "p=tls-unique,,"
    bare = "n=%s,r=pynonce" % user
    s.sendall(("AUTH SCRAM-SHA-256-PLUS %s\r\n" % b64((gs2 + bare).encode())).encode())
    sf = base64.b64decode(reply(f)[0][4:]).decode()
    a = dict(kv.split("=", 1) for kv in sf.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", pw.encode(), base64.b64decode(a["s"]), int(a["i"]))
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    without = "c=" + b64(gs2.encode() + cb) + ",r=" + a["r"]
    am = (bare + "," + sf + "," + without).encode()
    sig = hmac.new(hashlib.sha256(ck).digest(), am, "sha256").digest()
    proof = bytes(x ^ y for x, y in zip(ck, sig))
    s.sendall((b64((without + ",p=" + b64(proof)).encode()) + "\r\n").encode())
    r = reply(f)[0]
    if r.startswith("334 "):
        want = "v=" + b64(hmac.new(hmac.new(salted, b"Server Key", "sha256").digest(), am, "sha256").digest())
        assert base64.b64decode(r[4:]).decode() == want, "bad server signature"
        s.sendall(b"\r\n")
        r = reply(f)[0]
    print("reused=%s %s" % (s.session_reused, r))
    sess = s.session
    s.sendall(b"QUIT\r\n"); reply(f)
    s.close()
    return sess

sess = run(None)
run(sess)
]==]

local function scram_final(hash, password, client_first_bare, server_first, gs2, cert_pem_path)
  local out = u.sh(("python3 %s scram %s %s %s %s %s %s"):format(q(client_py), hash, q(password),
    q(client_first_bare), q(server_first), q(gs2 or "n,,"), cert_pem_path and q(cert_pem_path) or ""), 30)
  local final, sig = out:match("^(%S+)\n(%S+)\n$")
  assert(final, out)
  return final, sig
end

local function cram_digest(password, challenge_text)
  return sh_line(("python3 %s cram %s %s"):format(q(client_py), q(password), q(challenge_text)))
end

-- "334 <b64>" -> the decoded challenge.
local function challenge(c)
  local code, text = c:reply()
  assert.equal(334, code, text)
  return unb64(text)
end

local srv, dir, ca, client
setup(function()
  dir = u.tempdir()
  ca = testing.make_cert{ cn = "Test CA", is_ca = true, dir = dir, name = "ca", alg = "ec" }
  client = testing.make_cert{ cn = "client.test", ca = ca, dir = dir, name = "client", client = true,
    alg = "ec" }
  client_py = dir .. "/client.py"
  u.write_file(client_py, CLIENT_PY)
  local pem = u.read_file(client.cert):gsub("%s", "")
  srv = u.start{ source = source{ client_pem = pem }, tls = "starttls", client_ca = ca.cert }
end)
teardown(function()
  u.stop(srv)
  u.rmdir(dir)
end)

describe("gsasl", function()
  local function ok(out) return out:find("\n235 2.7.0 Authentication successful", 1, true) ~= nil end
  local function refused(out) return out:find("\n535 5.7.8 Authentication credentials invalid", 1, true) ~= nil end

  for _, m in ipairs { "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN", "LOGIN" } do
    it(m .. " without TLS: the right password succeeds, a wrong one and an unknown user get 535", function()
      local out = gsasl(srv, "--no-starttls -m " .. m .. " -a alice -p alice-pw")
      assert.is_true(ok(out), out)
      out = gsasl(srv, "--no-starttls -m " .. m .. " -a alice -p wrong-pw")
      assert.is_true(refused(out), out)
      out = gsasl(srv, "--no-starttls -m " .. m .. " -a nobody -p alice-pw")
      assert.is_true(refused(out), out)
    end)
  end

  it("SCRAM-SHA-256 with a secret from luasmtpd --hash-password; PLAIN checks the same secret", function()
    assert.matches("^SCRAM%-SHA%-256%$4096:", BOB)
    assert.is_true(ok(gsasl(srv, "--no-starttls -m SCRAM-SHA-256 -a bob -p bob-pw")))
    assert.is_true(refused(gsasl(srv, "--no-starttls -m SCRAM-SHA-256 -a bob -p alice-pw")))
    assert.is_true(ok(gsasl(srv, "--no-starttls -m PLAIN -a bob -p bob-pw")))
    assert.is_true(refused(gsasl(srv, "--no-starttls -m PLAIN -a bob -p bob-pw2")))
  end)

  it("SCRAM-SHA-1 with gsasl --mkpasswd's secret: the iteration count (8192) comes from it", function()
    local out = gsasl(srv, "--no-starttls -m SCRAM-SHA-1 -a dave -p dave-pw")
    assert.is_true(ok(out), out)
    -- server-first, as the client saw it, names the stored count
    local found = false
    for line in out:gmatch("334 (%S+)") do
      local d = unb64(line)
      if d and d:match(",i=8192$") then found = true end
    end
    assert.is_true(found, out)
    assert.is_true(refused(gsasl(srv, "--no-starttls -m SCRAM-SHA-1 -a dave -p dave-pw!")))
  end)

  it("PLAIN and LOGIN against a yescrypt hash (checked on the thread pool)", function()
    assert.is_true(ok(gsasl(srv, "--no-starttls -m PLAIN -a carol -p carol-pw")))
    assert.is_true(ok(gsasl(srv, "--no-starttls -m LOGIN -a carol -p carol-pw")))
    assert.is_true(refused(gsasl(srv, "--no-starttls -m LOGIN -a carol -p carol-px")))
  end)

  for _, m in ipairs { "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS" } do
    it(m .. " over STARTTLS: channel binding tls-unique checked; wrong password refused", function()
      local out = gsasl(srv, "--starttls --x509-ca-file= -m " .. m .. " -a alice -p alice-pw")
      assert.is_true(ok(out), out)
      assert.matches("AUTH SCRAM%-SHA%-256%-PLUS SCRAM%-SHA%-1%-PLUS SCRAM%-SHA%-256", out)
      local cf
      for line in out:gmatch("\n(%S+)\n334 ") do cf = cf or unb64(line) end
      assert.is_truthy(cf and cf:match("^p=tls%-unique,,n=alice,r="), out)
      assert.is_true(refused(gsasl(srv, "--starttls --x509-ca-file= -m " .. m .. " -a alice -p x")))
    end)
  end

  it("gsasl picks SCRAM-SHA-256-PLUS over TLS by itself; with --no-cb it uses SCRAM-SHA-256 (flag n)", function()
    local out = gsasl(srv, "--starttls --x509-ca-file= -a alice -p alice-pw")
    assert.matches("\nAUTH SCRAM%-SHA%-256%-PLUS", out)
    assert.is_true(ok(out), out)
    out = gsasl(srv, "--starttls --no-cb --x509-ca-file= -m SCRAM-SHA-256 -a alice -p alice-pw")
    assert.is_true(ok(out), out)
  end)

  it("EXTERNAL with a verified client certificate (--tls-client-ca); offered only then", function()
    local out = gsasl(srv, ("--starttls --x509-ca-file= --x509-cert-file=%s --x509-key-file=%s -m EXTERNAL "
      .. "-z client.test"):format(q(client.cert), q(client.key)))
    assert.matches("AUTH [^\n]*EXTERNAL", out)
    assert.is_true(ok(out), out)
    out = gsasl(srv, ("--starttls --x509-ca-file= --x509-cert-file=%s --x509-key-file=%s -m EXTERNAL "
      .. "-z someone.else"):format(q(client.cert), q(client.key)))
    assert.is_true(refused(out), out)
    out = gsasl(srv, "--starttls --x509-ca-file= -a alice -p alice-pw")
    assert.is_nil(out:match("AUTH [^\n]*EXTERNAL"), out)
  end)
end)

describe("curl, swaks and Python's smtplib", function()
  local msg
  setup(function()
    msg = dir .. "/msg.txt"
    u.write_file(msg, "Subject: hi\r\n\r\nhello\r\n")
  end)

  local function curl(port, mech, token)
    return u.sh(("curl -sS -v --url smtp://127.0.0.1:%d --mail-from a@example.org --mail-rcpt b@example.org "
      .. "--login-options AUTH=%s --user alice: --oauth2-bearer %s -T %s"):format(port, mech, token, q(msg)), 30)
  end

  it("curl OAUTHBEARER: a good token is accepted, a bad one gets RFC 7628's error challenge and 535", function()
    local out = curl(srv.port, "OAUTHBEARER", "tok-alice")
    assert.matches("\n< 235 2%.7%.0 Authentication successful", out)
    out = curl(srv.port, "OAUTHBEARER", "tok-bad")
    assert.matches("\n< 334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=", out) -- {"status":"invalid_token"}
    assert.matches("\n> AQ==", out)
    assert.matches("\n< 535 5%.7%.8 Authentication credentials invalid", out)
  end)

  it("curl XOAUTH2 (the only one offered): accepted, and a bad token gets Google's JSON", function()
    local x = testing.start{ source = source(), options = { auth_mechanisms = "XOAUTH2" } }
    local ok, err = pcall(function()
      local out = curl(x.port, "XOAUTH2", "tok-alice")
      assert.matches("250%-AUTH XOAUTH2\r?\n", out)
      assert.matches("\n< 235 2%.7%.0 Authentication successful", out)
      out = curl(x.port, "XOAUTH2", "tok-bad")
      assert.matches("\n< 334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=", out)
    end)
    x:stop()
    if not ok then error(err, 0) end
  end)

  it("swaks CRAM-MD5: right and wrong password", function()
    local cmd = "swaks --server 127.0.0.1:%d -a CRAM-MD5 -au alice -ap %s --to b@example.org "
      .. "--from a@example.org --quit-after AUTH"
    local out = u.sh(cmd:format(srv.port, "alice-pw"), 30)
    assert.matches("<%-  235 2%.7%.0 Authentication successful", out)
    out = u.sh(cmd:format(srv.port, "nope"), 30)
    assert.matches("<%*%* 535 5%.7%.8 Authentication credentials invalid", out)
  end)

  it("Python smtplib (it prefers CRAM-MD5): right and wrong password", function()
    local py = [[
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1])); s.ehlo()
try:
    print("OK", s.login(sys.argv[2], sys.argv[3]))
except smtplib.SMTPAuthenticationError as e:
    print("FAIL", e.smtp_code)
]]
    local path = dir .. "/login.py"
    u.write_file(path, py)
    local out = u.sh(("python3 %s %d alice alice-pw"):format(q(path), srv.port), 30)
    assert.matches("^OK %(235", out)
    out = u.sh(("python3 %s %d alice bad-pw"):format(q(path), srv.port), 30)
    assert.matches("^FAIL 535", out)
    assert.matches("authenticator gen=1 CRAM%-MD5 CramMD5%(login=\"alice\", %.%.%.%)", srv:stderr())
  end)
end)

describe("hand-driven exchanges", function()
  local function conn()
    local c = srv:connect()
    assert.equal(250, (c:cmd("EHLO client.test")))
    return c
  end

  it("EHLO lists auth_mechanisms in its order; -PLUS and EXTERNAL only where they can work", function()
    local c = srv:connect()
    local code, text = c:cmd("EHLO client.test")
    assert.equal(250, code)
    assert.matches("\nAUTH SCRAM%-SHA%-256 SCRAM%-SHA%-1 CRAM%-MD5 OAUTHBEARER XOAUTH2 PLAIN LOGIN\n", text)
    assert.equal(504, (c:cmd("AUTH SCRAM-SHA-256-PLUS " .. b64("p=tls-unique,,n=alice,r=abc"))))
    assert.equal(504, (c:cmd("AUTH EXTERNAL =")))
    assert.equal(220, (c:starttls()))
    code, text = c:cmd("EHLO client.test")
    assert.equal(250, code)
    assert.matches("\nAUTH SCRAM%-SHA%-256%-PLUS SCRAM%-SHA%-1%-PLUS SCRAM%-SHA%-256 SCRAM%-SHA%-1 CRAM%-MD5 "
      .. "OAUTHBEARER XOAUTH2 PLAIN LOGIN\n", text)
    c:close()
  end)

  it("SCRAM: flag y while -PLUS is offered is a downgrade (535); without TLS y is fine", function()
    local c = srv:connect()
    c:cmd("EHLO client.test")
    assert.equal(220, (c:starttls()))
    c:cmd("EHLO client.test")
    local code, text = c:cmd("AUTH SCRAM-SHA-256 " .. b64("y,,n=alice,r=abcdef"))
    assert.equal(535, code, text)
    c:close()
    c = conn()
    assert(c:send("AUTH SCRAM-SHA-256 " .. b64("y,,n=alice,r=abcdef") .. "\r\n"))
    assert.matches("^r=abcdef", challenge(c)) -- server-first: no -PLUS here, so y is fine
    assert.equal(501, (c:cmd("*")))
    c:close()
  end)

  it("SCRAM-SHA-256-PLUS with tls-unique from Python's ssl: a full handshake and a resumed one", function()
    local path = dir .. "/plus.py"
    u.write_file(path, PLUS_PY)
    local out = u.sh(("python3 %s 127.0.0.1 %d alice alice-pw"):format(q(path), srv.port), 30)
    assert.equal("reused=False 235 2.7.0 Authentication successful\n"
      .. "reused=True 235 2.7.0 Authentication successful\n", out)
  end)

  it("SCRAM-SHA-256-PLUS with tls-server-end-point (hash of our certificate); a wrong binding gets 535", function()
    local pem_path = dir .. "/server.pem"
    for _, good in ipairs { true, false } do
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert.equal(220, (c:starttls()))
      c:cmd("EHLO client.test")
      u.write_file(pem_path, good and c:peer_certificate():pem() or u.read_file(client.cert))
      local gs2, bare = "p=tls-server-end-point,,", "n=alice,r=endpoint"
      assert(c:send("AUTH SCRAM-SHA-256-PLUS " .. b64(gs2 .. bare) .. "\r\n"))
      local final, sig = scram_final("sha256", "alice-pw", bare, challenge(c), gs2, pem_path)
      if good then
        assert(c:send(b64(final) .. "\r\n"))
        assert.equal(sig, challenge(c))
        assert.equal(235, (c:cmd("")))
      else
        assert.equal(535, (c:cmd(b64(final))))
      end
      c:close()
    end
  end)

  it("SCRAM: a replayed client-final (an old server nonce) is refused; a fresh one succeeds", function()
    local c = conn()
    local bare = "n=alice,r=clientnonce1"
    assert(c:send("AUTH SCRAM-SHA-256 " .. b64("n,," .. bare) .. "\r\n"))
    local sf = challenge(c)
    local final, sig = scram_final("sha256", "alice-pw", bare, sf)
    assert(c:send(b64(final) .. "\r\n"))
    assert.equal(sig, challenge(c))
    assert.equal(235, (c:cmd("")))
    c:close()
    c = conn()
    assert(c:send("AUTH SCRAM-SHA-256 " .. b64("n,," .. bare) .. "\r\n"))
    local sf2 = challenge(c)
    assert.are_not.equal(sf, sf2) -- our nonce is fresh each time
    assert.equal(535, (c:cmd(b64(final))))
    c:close()
  end)

  it("CRAM-MD5: a recorded response does not fit the next challenge", function()
    local c = conn()
    assert(c:send("AUTH CRAM-MD5\r\n"))
    local ch = challenge(c)
    local response = "alice " .. cram_digest("alice-pw", ch)
    assert.equal(235, (c:cmd(b64(response))))
    c:close()
    c = conn()
    assert(c:send("AUTH CRAM-MD5\r\n"))
    assert.are_not.equal(ch, challenge(c))
    assert.equal(535, (c:cmd(b64(response))))
    c:close()
  end)

  local CANCEL = {
    { "CRAM-MD5", "AUTH CRAM-MD5" },
    { "SCRAM-SHA-256 (first message)", "AUTH SCRAM-SHA-256" },
    { "SCRAM-SHA-1 (after server-first)", "AUTH SCRAM-SHA-1 " .. b64("n,,n=alice,r=abc") },
    { "XOAUTH2 (the error challenge)", "AUTH XOAUTH2 " .. b64("user=alice\1auth=Bearer bad\1\1") },
    { "OAUTHBEARER (first message)", "AUTH OAUTHBEARER" },
    { "LOGIN", "AUTH LOGIN" },
  }
  for _, case in ipairs(CANCEL) do
    it("a cancelled exchange (*): " .. case[1] .. " -> 501 5.7.0 Auth aborted, one reply", function()
      local c = conn()
      assert.equal(334, (c:cmd(case[2])))
      assert.equal(501, (c:cmd("*")))
      assert.equal("250 OK", (select(3, c:cmd("NOOP")))[1])
      c:close()
    end)
  end

  local MALFORMED = {
    { "CRAM-MD5", { "AUTH CRAM-MD5", b64("alice not-hex") } },
    { "CRAM-MD5", { "AUTH CRAM-MD5 " .. b64("x") } },
    { "SCRAM-SHA-256", { "AUTH SCRAM-SHA-256 " .. b64("n,,n=al=ice,r=abc") } },
    { "SCRAM-SHA-1", { "AUTH SCRAM-SHA-1 " .. b64("n,,n=alice,r=abc"), b64("c=biws,r=abc") } },
    { "XOAUTH2", { "AUTH XOAUTH2 " .. b64("user=alice\1auth=Bearer") } },
    { "OAUTHBEARER", { "AUTH OAUTHBEARER " .. b64("n,,\1auth=Bearer x\1") } },
  }
  for _, case in ipairs(MALFORMED) do
    it("a malformed " .. case[1] .. " message: 501 5.5.2 Malformed " .. case[1] .. " message", function()
      local c = conn()
      local code, text
      for _, line in ipairs(case[2]) do code, text = c:cmd(line) end
      assert.equal(501, code, text)
      assert.equal("5.5.2 Malformed " .. case[1] .. " message", text)
      assert.equal(250, (c:cmd("NOOP")))
      c:close()
    end)
  end

  it("EXTERNAL by hand: *, a malformed authzid, then = (no authzid) succeeds", function()
    local c = srv:connect()
    c:cmd("EHLO client.test")
    assert.equal(220, (c:starttls{ certificate = client.cert, key = client.key }))
    local _, text = c:cmd("EHLO client.test")
    assert.matches("AUTH [^\n]*EXTERNAL", text)
    assert.equal(334, (c:cmd("AUTH EXTERNAL")))
    assert.equal(501, (c:cmd("*")))
    local code
    code, text = c:cmd("AUTH EXTERNAL " .. b64("a\0b"))
    assert.equal(501, code)
    assert.equal("5.5.2 Malformed EXTERNAL message", text)
    assert.equal(535, (c:cmd("AUTH EXTERNAL " .. b64("someone.else"))))
    assert.equal(235, (c:cmd("AUTH EXTERNAL =")))
    c:close()
    assert.matches('EXTERNAL External%(authzid=nil, %.%.%.%) %-> true', srv:stderr())
  end)

  it("login_data after a SCRAM success is the login; tostring of auth_data hides the rest", function()
    local c = conn()
    local bare = "n=alice,r=n0nce"
    c:send("AUTH SCRAM-SHA-1 " .. b64("n,," .. bare) .. "\r\n")
    local final, sig = scram_final("sha1", "alice-pw", bare, challenge(c))
    c:send(b64(final) .. "\r\n")
    assert.equal(sig, challenge(c))
    assert.equal(235, (c:cmd("")))
    assert.equal("alice", select(2, c:cmd("NOOP who")))
    c:close()
    assert.matches('SCRAM%-SHA%-1 Scram%(login="alice", %.%.%.%) %-> true', srv:stderr())
  end)
end)

describe("the SCRAM wait (server-first sent, client-final awaited)", function()
  local function start_exchange(s, user)
    local c = s:connect()
    c:cmd("EHLO client.test")
    local bare = "n=" .. user .. ",r=waitnonce"
    c:send("AUTH SCRAM-SHA-256 " .. b64("n,," .. bare) .. "\r\n")
    return c, bare, challenge(c)
  end

  it("another client is served while one waits; then the exchange completes", function()
    local a, bare, sf = start_exchange(srv, "alice")
    local b = srv:connect()
    assert.equal(250, (b:cmd("NOOP")))
    b:close()
    local final, sig = scram_final("sha256", "alice-pw", bare, sf)
    a:send(b64(final) .. "\r\n")
    assert.equal(sig, challenge(a))
    assert.equal(235, (a:cmd("")))
    a:close()
  end)

  it("a client that disconnects mid-exchange is forgotten; the server goes on", function()
    local a = start_exchange(srv, "alice")
    a:close()
    u.wait_log(srv, "abandoning suspended hook mechanism SCRAM-SHA-256")
    local b = srv:connect()
    assert.equal(250, (b:cmd("NOOP")))
    b:close()
  end)

  it("hook_timeout fires mid-exchange: 454, the session goes on", function()
    local a = start_exchange(srv, "alice")
    local code, text = a:reply(10)
    assert.equal(454, code, text)
    assert.equal("4.7.0 Temporary authentication failure", text)
    assert.equal(250, (a:cmd("NOOP")))
    a:close()
  end)

  it("a reload during the wait: the exchange completes on its old generation", function()
    local s = u.start{ source = source{ generation = "1" } }
    local ok, err = pcall(function()
      local a, bare, sf = start_exchange(s, "alice")
      u.reload(s, source{ generation = "2" }, 2)
      local final, sig = scram_final("sha256", "alice-pw", bare, sf)
      a:send(b64(final) .. "\r\n")
      assert.equal(sig, challenge(a))
      assert.equal(235, (a:cmd("")))
      a:close()
      -- generation 2 knows no users: a new exchange is refused there
      local b, bare2, sf2 = start_exchange(s, "alice")
      assert.equal(535, (b:cmd(b64((scram_final("sha256", "alice-pw", bare2, sf2))))))
      b:close()
      assert.matches("authenticator gen=1 SCRAM%-SHA%-256 .* %-> true", s:stderr())
      assert.matches("authenticator gen=2 SCRAM%-SHA%-256 .* %-> false", s:stderr())
    end)
    u.stop(s)
    if not ok then error(err, 0) end
  end)

  it("descriptors and RSS stay flat over 10,000 challenge waits (CRAM-MD5 and SCRAM)", function()
    local c = srv:connect()
    c:cmd("EHLO client.test")
    local cram = "AUTH CRAM-MD5\r\n" .. b64("alice " .. ("0"):rep(32)) .. "\r\n"
    local scram = "AUTH SCRAM-SHA-256 " .. b64("n,,n=bob,r=loop") .. "\r\n"
      .. b64("c=biws,r=stale,p=" .. b64(("x"):rep(32))) .. "\r\n"
    local function batch(n)
      local parts = {}
      for i = 1, n do parts[i] = (i % 2 == 0) and cram or scram end
      assert(c:send(table.concat(parts)))
      for _ = 1, n do
        assert.equal(334, (c:reply(30)))
        assert.equal(535, (c:reply(30)))
      end
    end
    batch(500) -- warm up pools and caches
    local fd0, rss0 = u.fd_count(srv.pid), u.rss_kb(srv.pid)
    for _ = 1, 20 do batch(500) end
    local fd1, rss1 = u.fd_count(srv.pid), u.rss_kb(srv.pid)
    c:close()
    assert.equal(fd0, fd1)
    -- (ASan's quarantine keeps freed memory: RSS says nothing under sanitizers)
    assert.is_true(hu.sanitized(srv.pid) or rss1 - rss0 < 2048,
      ("RSS grew from %d to %d kB"):format(rss0, rss1))
  end)
end)

describe("options", function()
  it("a name in auth_mechanisms that is neither shipped nor defined is a load error naming it", function()
    local path = dir .. "/bad.lua"
    u.write_file(path, 'options = { auth_mechanisms = { "PLAIN", "SCRAM-SHA-512" } }\n')
    local status, out = u.check(path)
    assert.is_not.equal(0, status)
    assert.matches("option 'auth_mechanisms': unknown mechanism 'SCRAM%-SHA%-512'", out)
  end)

  h.run{
    { name = "the default offers PLAIN, LOGIN and the script's own, not the shipped ones",
      source = 'options = { auth_require_tls = false }\nfunction auth_CRAM__MD5() return false end\n',
      dialogue = { { "EHLO client.test", match = "\n250%-AUTH CRAM%-MD5 LOGIN PLAIN\n" } } },

    { name = "a script's own auth_NAME overrides the shipped one of that name",
      source = [[
options = { auth_require_tls = false, auth_mechanisms = { "CRAM-MD5" } }
function auth_CRAM__MD5(server, args) server:push("235 2.7.0 mine") return nil end
]],
      dialogue = { { "EHLO client.test", match = "\n250%-AUTH CRAM%-MD5\n" },
        { "AUTH CRAM-MD5", "235 2.7.0 mine" } } },

    { name = "auth_login_prompts change LOGIN's prompts (-o and a script table)",
      source = [[options = { auth_require_tls = false, auth_login_prompts = { "Username:", "Password:" } }]],
      dialogue = { h.ehlo, { "AUTH LOGIN", "334 " .. h.b64("Username:") },
        { h.b64("alice"), "334 " .. h.b64("Password:") }, { "*", h.ABORTED } } },

    { name = "LOGIN's prompts default to aiosmtpd's bytes",
      source = [[options = { auth_require_tls = false }]],
      dialogue = { h.ehlo, { "AUTH LOGIN", "334 VXNlciBOYW1lAA==" }, { h.b64("a"), "334 UGFzc3dvcmQA" },
        { "*", h.ABORTED } } },

    { name = "auth_exclude_mechanism still removes a listed name",
      source = [[options = { auth_require_tls = false, auth_mechanisms = { "CRAM-MD5", "PLAIN" },
        auth_exclude_mechanism = { "cram-md5" } }]],
      dialogue = { { "EHLO client.test", match = "\n250%-AUTH PLAIN\n" } } },
  }

  it("a bad auth_login_prompts value names the option", function()
    local path = dir .. "/prompts.lua"
    u.write_file(path, 'options = { auth_login_prompts = { "only one" } }\n')
    local status, out = u.check(path)
    assert.is_not.equal(0, status)
    assert.matches("option 'auth_login_prompts' must be a list of two strings", out)
  end)
end)
