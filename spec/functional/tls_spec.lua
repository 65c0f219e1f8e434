-- TLS against the real binary (issue 3): STARTTLS (RFC 3207) and implicit
-- TLS (RFC 8314), AUTH over TLS with the default auth_require_tls = true,
-- the STARTTLS injection case, require_starttls, handle_STARTTLS,
-- session.ssl, client certificates and auth_EXTERNAL, certificate reload on
-- SIGHUP, start-up errors, TLS 1.1 refusal and stalled handshakes.
--
-- Certificates are made at test time with `openssl` (testing.make_cert);
-- the client side is LuaSec through smtpd.testing. Every wait is bounded;
-- the only polling loop (`wait_for`) waits for a log line after SIGHUP.
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local socket = require "socket"
local mime = require "mime"

local EHLO_STARTTLS = {   -- plain listener with a certificate: STARTTLS, no AUTH
  "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING", "250-STARTTLS", "250 HELP",
}
local EHLO_TLS = {        -- inside TLS: AUTH, no STARTTLS
  "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING", "250-AUTH LOGIN PLAIN", "250 HELP",
}
local EHLO_TLS_EXTERNAL = {
  "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING", "250-AUTH EXTERNAL LOGIN PLAIN",
  "250 HELP",
}
local EHLO_NO_TLS = h.EHLO_DEFAULT
local ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
local MUST_STARTTLS = "530 Must issue a STARTTLS command first"
local LACK_OF_SECURITY = "554 Command refused due to lack of security"
local TLS_ACTIVE = "554 5.5.1 Error: TLS already active"

-- ---------------------------------------------------------------------------
-- helpers

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function tempdir()
  local p = assert(io.popen("mktemp -d /tmp/luasmtpd-tls-spec.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp -d failed")
  return dir
end

local function rmdir(dir)
  if dir then os.execute("rm -rf " .. shell_quote(dir)) end
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

-- Installs a certificate pair under the paths the server was started with.
local function install(pair, target)
  write_file(target.cert, assert(read_file(pair.cert)))
  write_file(target.key, assert(read_file(pair.key)))
end

local function count(haystack, needle)
  local n, i = 0, 1
  while true do
    local s, e = haystack:find(needle, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

-- A bounded poll for a condition (not a sleep used as synchronisation).
local function wait_for(cond, secs, what)
  local deadline = socket.gettime() + secs
  while not cond() do
    if socket.gettime() >= deadline then error("timed out waiting for " .. what, 2) end
    socket.sleep(0.02)
  end
end

-- The stderr part of the error testing.start raises (the command line, also
-- in the message, names the files too, so only stderr counts).
local function stderr_of(err)
  return tostring(err):match("\nstderr:\n(.*)$") or ""
end

local function reply_lines(c, line)
  local code, text, lines = c:cmd(line)
  assert(code, ("no reply to %q: %s\n%s"):format(line, tostring(text), c:transcript_text()))
  return lines
end

local function expect(c, line, want)
  local lines = reply_lines(c, line)
  if type(want) == "string" then want = { want } end
  assert.same(want, lines, "reply to " .. line)
end

-- Reads until the server closes (bounded). Returns all bytes read and true
-- on EOF, false on timeout.
local function drain(c, secs)
  local got = { c.pending }
  c.pending = ""
  local deadline = socket.gettime() + secs
  while socket.gettime() < deadline do
    c.sock:settimeout(math.max(0.01, deadline - socket.gettime()))
    local b, err, partial = c.sock:receive(4096)
    if b then
      got[#got + 1] = b
    else
      if partial and partial ~= "" then got[#got + 1] = partial end
      if err ~= "timeout" and err ~= "wantread" then return table.concat(got), true end
    end
  end
  return table.concat(got), false
end

-- The handler of most servers below. NOOP with the argument "ssl" reports
-- what a hook sees in session.ssl; handle_STARTTLS records what it saw;
-- handle_DATA writes envelope.content to the file OUT.
local function main_handler(out)
  return ([[
local smtpd = require "smtpd"
local OUT = %q

function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "alice" and auth_data.password == "s3cret" then
    return smtpd.AuthResult{ success = true, auth_data = auth_data }
  end
  return smtpd.AuthResult{ success = false, handled = false }
end

function handle_NOOP(server, session, envelope, arg)
  if arg ~= "ssl" then return smtpd.MISSING end
  local s = session.ssl
  if s == nil then return "250 ssl=nil hook=" .. tostring(session.starttls_hook) end
  return ("250 version=%%s cipher=%%s peercert=%%s hook=%%s"):format(tostring(s.version),
    tostring(s.cipher), s.peercert == nil and "nil" or type(s.peercert), tostring(session.starttls_hook))
end

function handle_STARTTLS(server, session, envelope)
  session.starttls_hook = session.ssl and session.ssl.version or "no-ssl"
  return true
end

function handle_DATA(server, session, envelope)
  local f = assert(io.open(OUT, "wb"))
  f:write(envelope.content)
  f:close()
  return "250 OK saved " .. #envelope.content
end
]]):format(out)
end

-- Parses the NOOP ssl report.
local function ssl_report(c)
  local code, text = c:cmd("NOOP ssl")
  assert.equal(250, code, tostring(text))
  local t = {}
  for k, v in text:gmatch("(%w+)=(%S+)") do t[k] = v end
  return t
end

-- 8 MiB of random bytes, base64 in 76-character lines, with lines that
-- start with a dot (and lone dots) every so often to exercise dot-stuffing.
local function big_message(nbytes)
  local f = assert(io.open("/dev/urandom", "rb"))
  local raw = f:read(nbytes)
  f:close()
  assert.equal(nbytes, #raw)
  local b = mime.b64(raw)
  local lines = { "Subject: big", "Content-Transfer-Encoding: base64", "", ".", "..", ".x" }
  local n = 0
  for i = 1, #b, 76 do
    lines[#lines + 1] = b:sub(i, i + 75)
    n = n + 1
    if n % 997 == 0 then lines[#lines + 1] = "." .. b:sub(i, i + 40) end
    if n % 4999 == 0 then lines[#lines + 1] = "." end
  end
  lines[#lines + 1] = ".end"
  return table.concat(lines, "\r\n") .. "\r\n"
end

-- ---------------------------------------------------------------------------

describe("STARTTLS and implicit TLS (--tlscert and --listen-smtps)", function()
  local srv, dir, out
  setup(function()
    dir = tempdir()
    out = dir .. "/content"
    -- Clear-text commands before STARTTLS are under test: not required.
    srv = testing.start{ tls = "both", source = main_handler(out), args = { "--no-requiretls" } }
  end)
  teardown(function()
    if srv then srv:stop() end
    rmdir(dir)
  end)
  before_each(function() os.remove(out) end)

  it("offers STARTTLS and no AUTH before TLS; AUTH (538 before) works after STARTTLS", function()
    local c = srv:connect()
    assert.matches("^220 mx%.test ", c.greeting)
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, ENCRYPTION_REQUIRED)
    expect(c, "AUTH LOGIN", ENCRYPTION_REQUIRED)
    local code, text = c:starttls()
    assert.equal(220, code, tostring(text))
    assert.equal("Ready to start TLS", text)
    assert.is_true(c:is_tls())
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "AUTH PLAIN " .. h.plain("alice", "wrong"), h.AUTH_INVALID)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, "503 Already authenticated")
    expect(c, "QUIT", "221 Bye")
    c:close()
  end)

  it("AUTH LOGIN after STARTTLS", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.equal(220, (c:starttls()))
    expect(c, "EHLO client.test", EHLO_TLS)
    local code, text = c:auth_login("alice", "s3cret")
    assert.equal(235, code, text)
    c:close()
  end)

  it("negotiates TLS 1.2 or newer with an AEAD cipher", function()
    local c = srv:connect()
    assert.equal(220, (c:starttls()))
    local info = c:ssl_info()
    assert.is_table(info)
    assert.matches("^TLSv1%.[23]$", info.protocol)
    assert.equal("AEAD", info.mac, info.cipher)
    assert.matches("^ECDHE%-", info.cipher)
    c:close()
  end)

  it("discards plain text sent in the same write as STARTTLS (no reply to the NOOP)", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.is_true(c:send("STARTTLS\r\nNOOP\r\n"))
    local code, text = c:reply()
    assert.equal(220, code, tostring(text))
    local ok, err = c:tls_handshake()
    assert.is_true(ok, "handshake: " .. tostring(err) .. "\n" .. c:transcript_text())
    -- Nothing may be pending: the injected NOOP must not have been executed.
    local code2, err2, lines2 = c:reply(0.5)
    assert.is_nil(code2, "the injected NOOP was answered: " .. table.concat(lines2 or {}, " | "))
    assert.equal("timeout", err2)
    expect(c, "EHLO client.test", EHLO_TLS)
    c:close()
  end)

  it("discards a pipelined MAIL/RCPT after STARTTLS, and the session starts over", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.is_true(c:send("STARTTLS\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"))
    assert.equal(220, (c:reply()))
    assert.is_true((c:tls_handshake()))
    local code, err = c:reply(0.5)
    assert.is_nil(code)
    assert.equal("timeout", err)
    expect(c, "RCPT TO:<b@example.com>", "503 Error: send HELO first")
    c:close()
  end)

  it("STARTTLS inside TLS: 554 5.5.1, and the session goes on", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.equal(220, (c:starttls()))
    expect(c, "STARTTLS", TLS_ACTIVE)
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "STARTTLS", TLS_ACTIVE)
    expect(c, "NOOP", "250 OK")
    c:close()
  end)

  it("STARTTLS with an argument: 501 Syntax: STARTTLS, still plain text", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    expect(c, "STARTTLS now", "501 Syntax: STARTTLS")
    expect(c, "NOOP", "250 OK")
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.is_false(c:is_tls())
    c:close()
  end)

  it("STARTTLS resets the session: EHLO needed again, the mail transaction is gone", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    expect(c, "MAIL FROM:<a@example.com>", "250 OK")
    assert.equal(220, (c:starttls()))
    expect(c, "MAIL FROM:<a@example.com>", "503 Error: send HELO first")
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "RCPT TO:<b@example.com>", "503 Error: need MAIL command")
    expect(c, "MAIL FROM:<a@example.com>", "250 OK")
    expect(c, "RCPT TO:<b@example.com>", "250 OK")
    c:close()
  end)

  it("hooks see session.ssl: nil before TLS, then version, cipher and peercert nil", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    local before = ssl_report(c)
    assert.equal("nil", before.ssl)
    assert.equal(220, (c:starttls()))
    local after = ssl_report(c)
    assert.matches("^TLSv1%.[23]$", after.version)
    assert.equal(c:ssl_info().protocol, after.version)
    assert.is_truthy(after.cipher)
    assert.is_true(#after.cipher > 5, after.cipher)
    assert.not_equal("nil", after.cipher)
    assert.equal("nil", after.peercert)
    -- handle_STARTTLS ran after the handshake, with session.ssl set.
    assert.equal(after.version, after.hook)
    c:close()
  end)

  it("a client certificate is not asked for without --tls-client-ca: peercert stays nil", function()
    local cdir = tempdir()
    local ok, err = pcall(function()
      local ca = testing.make_cert{ cn = "Some CA", is_ca = true, dir = cdir, name = "ca" }
      local cl = testing.make_cert{ cn = "client", ca = ca, dir = cdir, name = "client", client = true }
      local c = srv:connect()
      assert.equal(220, (c:starttls{ certificate = cl.cert, key = cl.key }))
      assert.equal("nil", ssl_report(c).peercert)
      c:close()
    end)
    rmdir(cdir)
    assert(ok, err)
  end)

  it("implicit TLS listener: the greeting comes only after the handshake; AUTH works", function()
    -- Connect in clear text: no greeting may arrive before the handshake.
    local c = assert(testing.connect(srv.smtps_host, srv.smtps_port, { greeting = false }))
    local code, err = c:reply(0.5)
    assert.is_nil(code, "a greeting in clear text on the implicit TLS port")
    assert.equal("timeout", err)
    assert.is_true((c:tls_handshake()))
    local gcode, gtext, glines = c:reply()
    assert.equal(220, gcode, tostring(gtext))
    assert.matches("^220 mx%.test ", glines[1])
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "STARTTLS", TLS_ACTIVE)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    local rep = ssl_report(c)
    assert.matches("^TLSv1%.[23]$", rep.version)
    assert.equal("nil", rep.peercert)
    c:close()
  end)

  it("srv:connect_tls and srv:connect{ tls = true } reach the implicit listener", function()
    local a = srv:connect_tls()
    assert.is_true(a:is_tls())
    assert.equal(220, a.greeting_code)
    expect(a, "EHLO client.test", EHLO_TLS)
    a:close()
    local b = srv:connect{ tls = true }
    assert.is_true(b:is_tls())
    expect(b, "EHLO client.test", EHLO_TLS)
    b:close()
    local p = srv:connect()
    assert.is_false(p:is_tls())
    p:close()
  end)

  it("QUIT over TLS: 221, then close_notify (a clean TLS close, not a bare EOF)", function()
    local c = srv:connect_tls()
    expect(c, "QUIT", "221 Bye")
    c.sock:settimeout(5)
    local b, err = c.sock:receive(1)
    assert.is_nil(b)
    -- LuaSec (OpenSSL 3) reports "closed" only for close_notify; a TCP close
    -- without it is "unexpected eof while reading".
    assert.equal("closed", err)
    c:close()
  end)

  it("a pipelined session over TLS: replies in order", function()
    local c = srv:connect()
    assert.equal(220, (c:starttls()))
    assert.is_true(c:send("EHLO client.test\r\nMAIL FROM:<a@example.com>\r\n" ..
      "RCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"))
    local code, _, lines = c:reply()
    assert.equal(250, code)
    assert.same(EHLO_TLS, lines)
    assert.same({ "250 OK" }, select(3, c:reply()))
    assert.same({ "250 OK" }, select(3, c:reply()))
    assert.same({ "250 OK" }, select(3, c:reply()))
    assert.same({ "354 End data with <CR><LF>.<CR><LF>" }, select(3, c:reply()))
    local msg = "Subject: pipelined\r\n\r\nhello\r\n..dot\r\n"
    assert.is_true(c:send(msg .. ".\r\nRSET\r\nNOOP\r\nQUIT\r\n"))
    assert.same({ "250 OK saved " .. (#msg - 1) }, select(3, c:reply()))
    assert.same({ "250 OK" }, select(3, c:reply()))
    assert.same({ "250 OK" }, select(3, c:reply()))
    assert.same({ "221 Bye" }, select(3, c:reply()))
    assert.is_true(c:is_closed())
    assert.equal("Subject: pipelined\r\n\r\nhello\r\n.dot\r\n", read_file(out))
    c:close()
  end)

  it("a large message (8 MiB of base64 with dot lines) arrives byte-exact over STARTTLS", function()
    local msg = big_message(8 * 1024 * 1024)
    local c = srv:connect()
    c.timeout = 60
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.equal(220, (c:starttls()))
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    expect(c, "MAIL FROM:<a@example.com>", "250 OK")
    expect(c, "RCPT TO:<b@example.com>", "250 OK")
    local code, text = c:data(msg)
    assert.equal(250, code, tostring(text))
    assert.equal("OK saved " .. #msg, text)
    local got = read_file(out)
    assert.equal(#msg, #got)
    assert.is_true(got == msg, "content differs from what was sent")
    expect(c, "QUIT", "221 Bye")
    c:close()
  end)

  it("a large message arrives byte-exact over implicit TLS", function()
    local msg = big_message(3 * 1024 * 1024)
    local c = srv:connect_tls{ timeout = 60 }
    c.timeout = 60
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "MAIL FROM:<a@example.com>", "250 OK")
    expect(c, "RCPT TO:<b@example.com>", "250 OK")
    local code, text = c:data(msg)
    assert.equal(250, code, tostring(text))
    assert.is_true(read_file(out) == msg, "content differs from what was sent")
    c:close()
  end)
end)

describe("dialogues over TLS (testing.run_case with tls)", function()
  h.run{
    { name = "STARTTLS then AUTH PLAIN, as a dialogue", tls = "starttls", source = h.ALICE,
      args = { "--no-requiretls" },
      dialogue = {
        { "EHLO client.test", EHLO_STARTTLS },
        { "AUTH PLAIN " .. h.ALICE_PLAIN, ENCRYPTION_REQUIRED },
        { starttls = true, "EHLO client.test", EHLO_TLS },
        { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
        { "QUIT", "221 Bye", closed = true },
      },
      stderr_matches = { "TLS established: TLSv1%.[23] ", "authenticated with PLAIN" } },
    { name = "implicit TLS: every connection does the handshake", tls = "implicit", source = h.ALICE,
      dialogue = {
        { "EHLO client.test", EHLO_TLS },
        { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
        { conn = "b", "EHLO client.test", EHLO_TLS },
        { conn = "b", "STARTTLS", TLS_ACTIVE },
      },
      stderr_has = { "over implicit TLS" } },
    { name = "both: a plain connection with STARTTLS beside an implicit one", tls = "both", source = h.ALICE,
      dialogue = {
        { "EHLO client.test", EHLO_STARTTLS },
        { conn = "b", tls = true, "EHLO client.test", EHLO_TLS },
        { starttls = true, "EHLO client.test", EHLO_TLS },
        { "STARTTLS", TLS_ACTIVE },
        { conn = "b", "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
      } },
  }
end)

describe("STARTTLS forgets a clear-text AUTH", function()
  it("auth_require_tls = false: AUTH in clear text, STARTTLS, then MAIL needs AUTH again", function()
    local srv = testing.start{ tls = "starttls", source = h.ALICE, args = { "--no-requiretls" },
      options = { auth_require_tls = false, auth_required = true } }
    local ok, err = pcall(function()
      local c = srv:connect()
      expect(c, "EHLO client.test", { "250-mx.test", "250-SIZE 33554432", "250-8BITMIME", "250-PIPELINING",
        "250-STARTTLS", "250-AUTH LOGIN PLAIN", "250 HELP" })
      expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
      expect(c, "MAIL FROM:<a@example.com>", "250 OK")
      expect(c, "RSET", "250 OK")
      assert.equal(220, (c:starttls()))
      expect(c, "EHLO client.test", EHLO_TLS)
      expect(c, "MAIL FROM:<a@example.com>", h.AUTH_REQUIRED)
      expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
      expect(c, "MAIL FROM:<a@example.com>", "250 OK")
      c:close()
    end)
    srv:stop()
    assert(ok, err)
  end)
end)

describe("without a certificate", function()
  local srv
  setup(function() srv = testing.start{ source = "-- no hooks\n" } end)
  teardown(function() if srv then srv:stop() end end)

  it("no STARTTLS in EHLO; STARTTLS gets 454 TLS not available; AUTH 538", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_NO_TLS)
    expect(c, "STARTTLS", "454 TLS not available")
    expect(c, "STARTTLS x", "501 Syntax: STARTTLS")
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, ENCRYPTION_REQUIRED)
    expect(c, "NOOP", "250 OK")
    c:close()
  end)

  it("--requiretls has no effect without TLS configured", function()
    local s2 = testing.start{ source = "-- no hooks\n", args = { "--requiretls" } }
    local ok, err = pcall(function()
      local c = s2:connect()
      expect(c, "EHLO client.test", EHLO_NO_TLS)
      expect(c, "MAIL FROM:<a@example.com>", "250 OK")
      c:close()
    end)
    s2:stop()
    assert(ok, err)
  end)
end)

describe("--smtpscert/--smtpskey make the --listen sockets implicit TLS", function()
  local srv
  setup(function() srv = testing.start{ tls = "implicit", source = h.ALICE } end)
  teardown(function() if srv then srv:stop() end end)

  it("connect() does the handshake; AUTH works; STARTTLS is neither offered nor needed", function()
    assert.equal(srv.port, srv.smtps_port)
    assert.equal(1, #srv.listeners)
    local c = srv:connect()
    assert.is_true(c:is_tls())
    assert.matches("^220 mx%.test ", c.greeting)
    assert.matches("^TLSv1%.[23]$", c:ssl_info().protocol)
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "STARTTLS", TLS_ACTIVE)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    c:close()
  end)

  it("a clear-text client gets no greeting and is disconnected; others are unaffected", function()
    local p = srv:connect{ tls = false, greeting = false }
    local code, err = p:reply(0.5)
    assert.is_nil(code, "greeting in clear text")
    assert.equal("timeout", err)
    assert.is_true(p:send("EHLO client.test\r\n"))
    local bytes, eof = drain(p, 10)
    assert.is_true(eof, "the server kept a garbled handshake open")
    assert.is_nil(bytes:find("250", 1, true))
    assert.is_nil(bytes:find("220", 1, true))
    p:close()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_TLS)
    c:close()
  end)
end)

describe("require_starttls (--requiretls)", function()
  local srv
  setup(function() srv = testing.start{ tls = "both", source = h.ALICE, args = { "--requiretls" } } end)
  teardown(function() if srv then srv:stop() end end)

  it("530 for everything but NOOP, EHLO, STARTTLS and QUIT until TLS", function()
    local c = srv:connect()
    expect(c, "NOOP", "250 OK")
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    for _, line in ipairs{ "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.com>", "DATA", "RSET",
      "HELO client.test", "VRFY a@example.com", "HELP", "AUTH PLAIN " .. h.ALICE_PLAIN } do
      expect(c, line, MUST_STARTTLS)
    end
    expect(c, "NOOP", "250 OK")
    assert.equal(220, (c:starttls()))
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    expect(c, "MAIL FROM:<a@example.com>", "250 OK")
    expect(c, "RCPT TO:<b@example.com>", "250 OK")
    expect(c, "RSET", "250 OK")
    c:close()
  end)

  it("implicit TLS satisfies require_starttls", function()
    local c = srv:connect_tls()
    expect(c, "EHLO client.test", EHLO_TLS)
    expect(c, "MAIL FROM:<a@example.com>", "250 OK")
    expect(c, "RCPT TO:<b@example.com>", "250 OK")
    c:close()
  end)

  it("QUIT is allowed before TLS", function()
    local c = srv:connect()
    expect(c, "MAIL FROM:<a@example.com>", MUST_STARTTLS)
    expect(c, "QUIT", "221 Bye")
    assert.is_true(c:is_closed())
    c:close()
  end)

  it("--no-requiretls wins over the script's require_starttls = true", function()
    local s2 = testing.start{ tls = "starttls", args = { "--no-requiretls" },
      source = "options = { require_starttls = true }\n" }
    local s3 = testing.start{ tls = "starttls", source = "options = { require_starttls = true }\n" }
    local ok, err = pcall(function()
      local c = s2:connect()
      expect(c, "EHLO client.test", EHLO_STARTTLS)
      expect(c, "MAIL FROM:<a@example.com>", "250 OK")
      c:close()
      local d = s3:connect()
      expect(d, "EHLO client.test", EHLO_STARTTLS)
      expect(d, "MAIL FROM:<a@example.com>", MUST_STARTTLS)
      d:close()
    end)
    s2:stop()
    s3:stop()
    assert(ok, err)
  end)
end)

describe("handle_STARTTLS", function()
  local srv
  setup(function()
    srv = testing.start{ tls = "starttls", source = [[
function handle_STARTTLS(server, session, envelope)
  return false
end
]] }
  end)
  teardown(function() if srv then srv:stop() end end)

  it("returning false: every later command but QUIT gets 554; QUIT gets 221", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    assert.equal(220, (c:starttls()))
    for _, line in ipairs{ "EHLO client.test", "HELO client.test", "NOOP", "MAIL FROM:<a@example.com>",
      "RSET", "AUTH PLAIN " .. h.ALICE_PLAIN, "STARTTLS", "HELP" } do
      expect(c, line, LACK_OF_SECURITY)
    end
    expect(c, "QUIT", "221 Bye")
    assert.is_true(c:is_closed())
    c:close()
  end)

  it("does not affect a session that has not used STARTTLS", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    expect(c, "NOOP", "250 OK")
    c:close()
  end)
end)

describe("client certificates (--tls-client-ca) and auth_EXTERNAL", function()
  local srv, dir, ca, client, stranger
  setup(function()
    dir = tempdir()
    ca = testing.make_cert{ cn = "Test CA", is_ca = true, dir = dir, name = "ca", alg = "ec" }
    client = testing.make_cert{ cn = "client.test", ca = ca, dir = dir, name = "client", client = true,
      alg = "ec" }
    local other_ca = testing.make_cert{ cn = "Other CA", is_ca = true, dir = dir, name = "otherca", alg = "ec" }
    stranger = testing.make_cert{ cn = "stranger", ca = other_ca, dir = dir, name = "stranger", client = true,
      alg = "ec" }
    local source = ([[
local smtpd = require "smtpd"
local EXPECTED = (%q):gsub("%%s", "")

function auth_EXTERNAL(server, args)
  local ssl = server.session.ssl
  if args[2] ~= "=" then return smtpd.AuthResult{ success = false, handled = false } end
  if ssl and ssl.peercert and ssl.peercert:gsub("%%s", "") == EXPECTED then
    return smtpd.AuthResult{ success = true, auth_data = "client.test" }
  end
  return smtpd.AuthResult{ success = false, handled = false }
end

function handle_NOOP(server, session, envelope, arg)
  if arg ~= "ssl" then return smtpd.MISSING end
  local s = session.ssl
  if s == nil then return "250 ssl=nil" end
  local pem = s.peercert
  return ("250 version=%%s peercert=%%s pemok=%%s auth=%%s who=%%s"):format(tostring(s.version),
    pem == nil and "nil" or type(pem),
    tostring(pem ~= nil and pem:match("^%%-%%-%%-%%-%%-BEGIN CERTIFICATE%%-%%-%%-%%-%%-\r?\n") ~= nil),
    tostring(session.authenticated), tostring(session.auth_data))
end
]]):format(assert(read_file(client.cert)))
    srv = testing.start{ tls = "both", client_ca = ca.cert, source = source }
  end)
  teardown(function()
    if srv then srv:stop() end
    rmdir(dir)
  end)

  it("STARTTLS with a certificate signed by the CA: peercert is its PEM, AUTH EXTERNAL = succeeds", function()
    local c = srv:connect()
    assert.equal(220, (c:starttls{ certificate = client.cert, key = client.key }))
    expect(c, "EHLO client.test", EHLO_TLS_EXTERNAL)
    local rep = ssl_report(c)
    assert.equal("string", rep.peercert)
    assert.equal("true", rep.pemok)
    assert.equal("nil", rep.auth)
    expect(c, "AUTH EXTERNAL =", h.AUTH_OK)
    rep = ssl_report(c)
    assert.equal("true", rep.auth)
    assert.equal("client.test", rep.who)
    c:close()
  end)

  it("implicit TLS with the certificate: AUTH EXTERNAL = succeeds", function()
    local c = srv:connect_tls{ certificate = client.cert, key = client.key }
    expect(c, "EHLO client.test", EHLO_TLS_EXTERNAL)
    assert.equal("string", ssl_report(c).peercert)
    expect(c, "AUTH EXTERNAL =", h.AUTH_OK)
    c:close()
  end)

  it("without a certificate: peercert nil, AUTH EXTERNAL fails with 535", function()
    local c = srv:connect()
    assert.equal(220, (c:starttls()))
    expect(c, "EHLO client.test", EHLO_TLS_EXTERNAL)
    assert.equal("nil", ssl_report(c).peercert)
    expect(c, "AUTH EXTERNAL =", h.AUTH_INVALID)
    c:close()
    local d = srv:connect_tls()
    assert.equal("nil", ssl_report(d).peercert)
    expect(d, "EHLO client.test", EHLO_TLS_EXTERNAL)
    expect(d, "AUTH EXTERNAL =", h.AUTH_INVALID)
    d:close()
  end)

  it("a certificate from another CA is never reported as peercert", function()
    local c, err = testing.connect(srv.smtps_host, srv.smtps_port,
      { tls = { certificate = stranger.cert, key = stranger.key } })
    if c then
      -- Accepted without the certificate: it must not reach the hooks.
      local rep = ssl_report(c)
      assert.equal("nil", rep.peercert)
      expect(c, "EHLO client.test", EHLO_TLS_EXTERNAL)
      expect(c, "AUTH EXTERNAL =", h.AUTH_INVALID)
      c:close()
    else
      assert.matches("handshake", err)
    end
  end)
end)

describe("certificate reload on SIGHUP", function()
  local srv, dir, a, b, c3
  setup(function()
    dir = tempdir()
    -- A is RSA; B and C are ECDSA (the reload also switches the key type).
    a = testing.make_cert{ cn = "cert-a.test", dir = dir, name = "a" }
    b = testing.make_cert{ cn = "cert-b.test", dir = dir, name = "b", alg = "ec" }
    c3 = testing.make_cert{ cn = "cert-c.test", dir = dir, name = "c", alg = "ec" }
    local live = { cert = dir .. "/live.pem", key = dir .. "/live.key" }
    install(a, live)
    srv = testing.start{ tls = "both", cert = live, source = h.ALICE }
  end)
  teardown(function()
    if srv then srv:stop() end
    rmdir(dir)
  end)

  it("new handshakes use the new pair, live sessions keep theirs; a bad pair is refused", function()
    local old = srv:connect()
    assert.equal(220, (old:starttls()))
    assert.equal("cert-a.test", old:peer_cn())
    local old_implicit = srv:connect_tls()
    assert.equal("cert-a.test", old_implicit:peer_cn())
    local probe = srv:connect_tls()
    assert.equal("cert-a.test", probe:peer_cn())
    probe:close()

    install(b, srv.cert)
    srv:signal("HUP")
    wait_for(function() return count(srv:stderr(), "TLS certificates reloaded") >= 1 end, 10,
      "the reload log line")

    local n = srv:connect()
    assert.equal(220, (n:starttls()))
    assert.equal("cert-b.test", n:peer_cn())
    expect(n, "EHLO client.test", EHLO_TLS)
    expect(n, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    n:close()
    local ni = srv:connect_tls()
    assert.equal("cert-b.test", ni:peer_cn())
    ni:close()

    -- The sessions from before the reload still work on their own keys.
    expect(old, "EHLO client.test", EHLO_TLS)
    expect(old, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
    assert.equal("cert-a.test", old:peer_cn())
    expect(old_implicit, "EHLO client.test", EHLO_TLS)
    expect(old_implicit, "NOOP", "250 OK")

    -- A bad pair: cert C with the key of cert B. Refused; B keeps serving.
    write_file(srv.cert.cert, assert(read_file(c3.cert)))
    write_file(srv.cert.key, assert(read_file(b.key)))
    srv:signal("HUP")
    wait_for(function() return srv:stderr():find("TLS reload refused", 1, true) ~= nil end, 10,
      "the refused-reload log line")
    local err = srv:stderr()
    assert.equal(1, count(err, "TLS certificates reloaded"))
    assert.is_true(srv:running())
    local after = srv:connect()
    assert.equal(220, (after:starttls()))
    assert.equal("cert-b.test", after:peer_cn())
    expect(after, "EHLO client.test", EHLO_TLS)
    after:close()
    local afteri = srv:connect_tls()
    assert.equal("cert-b.test", afteri:peer_cn())
    afteri:close()

    -- A missing file on reload is refused as well.
    os.remove(srv.cert.key)
    srv:signal("HUP")
    wait_for(function() return count(srv:stderr(), "TLS reload refused") >= 2 end, 10,
      "the second refused-reload log line")
    local last
    for line in srv:stderr():gmatch("[^\n]+") do
      if line:find("TLS reload refused", 1, true) then last = line end
    end
    assert.matches(srv.cert.key, last, 1, true)
    local again = srv:connect_tls()
    assert.equal("cert-b.test", again:peer_cn())
    again:close()

    expect(old, "NOOP", "250 OK")
    old:close()
    old_implicit:close()
  end)
end)

describe("certificate reload on SIGHUP with --smtpscert", function()
  it("the implicit TLS listener serves the new pair after SIGHUP", function()
    local dir = tempdir()
    local srv
    local ok, err = pcall(function()
      local a = testing.make_cert{ cn = "smtps-a.test", dir = dir, name = "a", alg = "ec" }
      local b = testing.make_cert{ cn = "smtps-b.test", dir = dir, name = "b", alg = "ec" }
      local live = { cert = dir .. "/live.pem", key = dir .. "/live.key" }
      install(a, live)
      srv = testing.start{ tls = "implicit", cert = live, source = h.ALICE }
      local old = srv:connect()
      assert.equal("smtps-a.test", old:peer_cn())
      install(b, live)
      srv:signal("HUP")
      wait_for(function() return count(srv:stderr(), "TLS certificates reloaded") >= 1 end, 10,
        "the reload log line")
      local new = srv:connect()
      assert.equal("smtps-b.test", new:peer_cn())
      expect(new, "EHLO client.test", EHLO_TLS)
      new:close()
      expect(old, "EHLO client.test", EHLO_TLS)
      old:close()
    end)
    if srv then srv:stop() end
    rmdir(dir)
    assert(ok, err)
  end)
end)

describe("certificate types and chains", function()
  local dir
  setup(function() dir = tempdir() end)
  teardown(function() rmdir(dir) end)

  it("an ECDSA certificate with its CA in the chain file: ECDHE-ECDSA, the whole chain is sent", function()
    local ca = testing.make_cert{ cn = "Chain CA", is_ca = true, dir = dir, name = "chainca", alg = "ec" }
    local leaf = testing.make_cert{ cn = "leaf.test", ca = ca, dir = dir, name = "leaf", alg = "ec" }
    local chain = dir .. "/chain.pem"
    write_file(chain, read_file(leaf.cert) .. read_file(ca.cert))
    local srv = testing.start{ tls = "both", cert = { cert = chain, key = leaf.key }, source = h.ALICE }
    local ok, err = pcall(function()
      for _, c in ipairs{ srv:connect_tls(), (function()
        local p = srv:connect()
        assert.equal(220, (p:starttls()))
        return p
      end)() } do
        assert.matches("^ECDHE%-ECDSA%-", c:ssl_info().cipher)
        assert.equal("leaf.test", c:peer_cn())
        local peer_chain = c.sock:getpeerchain()
        assert.equal(2, #peer_chain)
        assert.equal(read_file(ca.cert):gsub("%s", ""), (peer_chain[2]:pem():gsub("%s", "")))
        expect(c, "EHLO client.test", EHLO_TLS)
        expect(c, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
        c:close()
      end
    end)
    srv:stop()
    assert(ok, err)
  end)
end)

describe("start-up with a bad certificate pair", function()
  local dir, a, b
  setup(function()
    dir = tempdir()
    a = testing.make_cert{ cn = "a.test", dir = dir, name = "a", alg = "ec" }
    b = testing.make_cert{ cn = "b.test", dir = dir, name = "b", alg = "ec" }
  end)
  teardown(function() rmdir(dir) end)

  local function start_fails(opts)
    local ok, err = pcall(testing.start, opts)
    assert.is_false(ok, "the server started")
    assert.matches("did not start", err)
    return stderr_of(err)
  end

  it("a key that does not match the certificate (--tlscert): stops, naming the file", function()
    local e = start_fails{ tls = "starttls", cert = { cert = a.cert, key = b.key } }
    assert.is_truthy(e:find(a.cert, 1, true) or e:find(b.key, 1, true), e)
  end)

  it("a key that does not match the certificate (--smtpscert): stops, naming the file", function()
    local e = start_fails{ tls = "implicit", cert = { cert = b.cert, key = a.key } }
    assert.is_truthy(e:find(b.cert, 1, true) or e:find(a.key, 1, true), e)
  end)

  it("a missing certificate file: stops, naming it", function()
    local missing = dir .. "/missing.pem"
    local e = start_fails{ tls = "starttls", cert = { cert = missing, key = a.key } }
    assert.matches(missing, e, 1, true)
  end)

  it("a missing key file: stops, naming it", function()
    local missing = dir .. "/missing.key"
    local e = start_fails{ tls = "both", cert = { cert = a.cert, key = missing } }
    assert.matches(missing, e, 1, true)
  end)

  it("a missing --tls-client-ca file: stops, naming it", function()
    local missing = dir .. "/missing-ca.pem"
    local e = start_fails{ tls = "starttls", cert = a, client_ca = missing }
    assert.matches(missing, e, 1, true)
  end)

  it("a file that is not PEM: stops, naming it", function()
    local junk = dir .. "/junk.pem"
    write_file(junk, "not a certificate\n")
    local e = start_fails{ tls = "starttls", cert = { cert = junk, key = a.key } }
    assert.matches(junk, e, 1, true)
  end)
end)

describe("protocol versions and misbehaving clients", function()
  local srv
  setup(function()
    -- A short idle timeout bounds the handshake (min(timeout, 30 s)).
    srv = testing.start{ tls = "both", source = h.ALICE, options = { timeout = 5 } }
  end)
  teardown(function() if srv then srv:stop() end end)

  -- SECLEVEL=0: OpenSSL 3 would otherwise refuse TLS 1.1 on the client side
  -- already, and the test would prove nothing about the server.
  local TLS11 = { protocol = "tlsv1_1", ciphers = "DEFAULT:@SECLEVEL=0", timeout = 5 }

  it("refuses a TLS 1.1 client (implicit TLS)", function()
    local c, err = testing.connect(srv.smtps_host, srv.smtps_port, { tls = TLS11 })
    if c then
      local proto = c:ssl_info().protocol
      c:close()
      error("TLS 1.1 client accepted: " .. tostring(proto))
    end
    assert.matches("handshake", err)
    assert.not_matches("timeout", err)
  end)

  it("refuses a TLS 1.1 client after STARTTLS, and closes that connection only", function()
    local c = srv:connect()
    expect(c, "EHLO client.test", EHLO_STARTTLS)
    local code, err = c:starttls(TLS11)
    assert.is_nil(code, "TLS 1.1 handshake accepted")
    assert.matches("handshake", err)
    assert.not_matches("timeout", err)
    c:close()
    local d = srv:connect()
    assert.equal(220, (d:starttls()))
    expect(d, "EHLO client.test", EHLO_TLS)
    d:close()
  end)

  it("a client that stalls in the handshake does not block another client", function()
    -- a: implicit TLS port, sends nothing; b: half a ClientHello record
    -- header; s: STARTTLS accepted, then silence.
    local host, port = srv.smtps_host, srv.smtps_port
    local a = assert(testing.connect(host, port, { greeting = false }))
    local b = assert(testing.connect(host, port, { greeting = false }))
    assert.is_true(b:send("\22\3\1"))
    local s = srv:connect()
    expect(s, "STARTTLS", "220 Ready to start TLS")
    local t0 = socket.gettime()
    for _ = 1, 3 do
      local ok = srv:connect_tls{ timeout = 4 }
      expect(ok, "EHLO client.test", EHLO_TLS)
      expect(ok, "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK)
      ok:close()
      local st = srv:connect{ timeout = 4 }
      assert.equal(220, (st:starttls()))
      expect(st, "EHLO client.test", EHLO_TLS)
      st:close()
    end
    -- Well under the 5 s the stalled handshakes may last.
    assert.is_true(socket.gettime() - t0 < 4, "other clients were held up")
    -- The stalled ones lose their own connection at the handshake timeout.
    for name, x in pairs{ a = a, b = b, s = s } do
      local bytes, eof = drain(x, 10)
      assert.is_true(eof, "stalled client " .. name .. " was never disconnected")
      assert.is_nil(bytes:find("^2"), name .. " got " .. bytes)
      x:close()
    end
    assert.is_true(srv:running())
  end)

  it("pipelined commands whose replies exceed the output buffer all get their replies", function()
    -- handle_EHLO answers 100 lines (about 10.7 KB); 200 pipelined EHLOs in
    -- one write (3.6 KB) ask for 2.1 MB of replies, far over the server's
    -- output high-water mark, so it must pause and resume the pipeline.
    local big = testing.start{ tls = "implicit", source = [[
function handle_EHLO(server, session, envelope, hostname, responses)
  session.host_name = hostname
  local t = {}
  for i = 1, 99 do t[i] = ("250-%03d %s"):format(i, ("x"):rep(100)) end
  t[100] = "250 end"
  return t
end
]] }
    local ok, err = pcall(function()
      local N = 200
      local c = assert(testing.connect(big.smtps_host, big.smtps_port, { tls = true, timeout = 10 }))
      assert.is_true(c:send(("EHLO client.test\r\n"):rep(N) .. "NOOP\r\n"))
      c.sock:settimeout(10)
      local filler = ("x"):rep(100)
      for i = 1, N do
        for j = 1, 100 do
          -- LuaSocket's "*l" drops the CR; speed matters here (20,000 lines).
          local line, rerr = c.sock:receive("*l")
          local want = j < 100 and ("250-%03d %s"):format(j, filler) or "250 end"
          if line ~= want then
            error(("EHLO reply %d of %d, line %d: expected %q, got %s"):format(i, N, j, want,
              line and ("%q"):format(line) or ("nothing (" .. tostring(rerr) .. ")")), 0)
          end
        end
      end
      assert.equal("250 OK", c.sock:receive("*l"))
      c:close()
    end)
    big:stop()
    assert(ok, err)
  end)

  it("garbage instead of a ClientHello costs only that connection", function()
    local g = assert(testing.connect(srv.smtps_host, srv.smtps_port, { greeting = false }))
    assert.is_true(g:send(("\22\3\3\0\5garbagegarbage"):rep(4)))
    local _, eof = drain(g, 10)
    assert.is_true(eof, "garbled handshake kept open")
    g:close()
    local s = srv:connect()
    assert.is_true(s:send("STARTTLS\r\n"))
    assert.equal(220, (s:reply()))
    assert.is_true(s:send("NOOP\r\nNOOP\r\n"))   -- clear text where the ClientHello belongs
    local _, eof2 = drain(s, 10)
    assert.is_true(eof2, "clear text after 220 kept open")
    s:close()
    local ok = srv:connect_tls()
    expect(ok, "EHLO client.test", EHLO_TLS)
    ok:close()
    assert.is_true(srv:running())
  end)
end)
