-- The PROXY protocol (issue 6), against the real binary: v1 and v2 headers
-- written by the spec itself (valid, invalid, late, refused by handle_PROXY,
-- no handle_PROXY at all, LOCAL, before implicit TLS), what handle_PROXY and
-- later hooks see in session.proxy_data, session.peer staying the proxy's
-- address; then real HAProxy (Debian's `haproxy`) in front of luasmtpd on
-- loopback with `send-proxy`, `send-proxy-v2` and v2 options.
--
-- The handler (fixtures/proxy_handler.lua) records what handle_PROXY got and
-- reports it through NOOP. A refused, invalid or late header closes the
-- connection without a byte: the spec checks that it reads EOF and nothing
-- else. Every wait is bounded.
local testing = require "smtpd.testing"
local hu = require "spec.functional.hostile_util"
local socket = require "socket"
local ffi = require "ffi"

pcall(ffi.cdef, "int kill(int pid, int sig);")

local HANDLER = "spec/functional/fixtures/proxy_handler.lua"
local PROXY_TIMEOUT = 1   -- seconds: --proxy-protocol=1

-- ---------------------------------------------------------------------------
-- Headers

local function v1(fam, src, dst, sport, dport)
  if fam == "UNKNOWN" then return "PROXY UNKNOWN\r\n" end
  return ("PROXY %s %s %s %d %d\r\n"):format(fam, src, dst, sport, dport)
end

local SIG = "\r\n\r\n\0\r\nQUIT\n"

local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end

local function ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
end

local function tlv(t, value) return string.char(t) .. be16(#value) .. value end

-- A v2 header. `cmd` 0 (LOCAL) or 1 (PROXY); `fam_proto` the byte after it
-- (0x11 TCP4, 0x21 TCP6, 0x31 UNIX stream, 0x00 UNSPEC); `addr` the address
-- block; `tlvs` raw TLV bytes.
local function v2(cmd, fam_proto, addr, tlvs)
  local body = (addr or "") .. (tlvs or "")
  return SIG .. string.char(0x20 + cmd, fam_proto) .. be16(#body) .. body
end

local function v2_tcp4(src, dst, sport, dport, tlvs)
  return v2(1, 0x11, ipv4(src) .. ipv4(dst) .. be16(sport) .. be16(dport), tlvs)
end

-- ---------------------------------------------------------------------------
-- Client side

-- Parses the handler's flattened "key=value ..." back into a table.
local function parse(text)
  local t = {}
  for pair in text:gmatch("%S+") do
    local k, v = pair:match("^([^=]+)=(.*)$")
    assert(k, "bad pair in " .. text)
    t[k] = v:gsub("\\x(%x%x)", function(x) return string.char(tonumber(x, 16)) end)
  end
  return t
end

local function noop(c, what)
  local code, text = c:cmd("NOOP " .. what)
  assert.are.equal(250, code, text)
  return text
end

-- Connects, sends `header` (or `chunks`, one write each) and reads the greeting.
local function proxied(srv, header, opts)
  local c = assert(hu.connect(srv.host, srv.port, opts))
  assert(c:send(header))
  local code, text, lines = c:reply(5)
  assert.are.equal(220, code, "no greeting after the PROXY header: " .. tostring(text))
  assert.are.same({ "220 mx.test luasmtpd 0.1.0" }, lines)
  return c
end

-- The connection must be closed without the server sending anything.
local function assert_silent_close(c, secs, what)
  local got = ""
  local deadline = socket.gettime() + (secs or 5)
  while socket.gettime() < deadline do
    local s, err = c:read_some(0.1)
    got = got .. s
    if err == "closed" then
      assert.are.equal("", got, what .. ": the server sent bytes before closing")
      return
    end
  end
  error(what .. ": not closed within " .. (secs or 5) .. " s" ..
    (got ~= "" and (", got " .. ("%q"):format(got)) or ""), 2)
end

local function start(opts)
  opts = opts or {}
  local o = { handler = HANDLER, args = { "--proxy-protocol=" .. PROXY_TIMEOUT } }
  for k, v in pairs(opts) do o[k] = v end
  return testing.start(o)
end

-- ---------------------------------------------------------------------------

describe("PROXY protocol", function()
  local srv
  setup(function() srv = start() end)
  teardown(function() if srv then srv:stop() end end)

  local function check_peer(c)
    local host, port = c:local_addr()
    -- The session's peer is the connection's own (the proxy's) address,
    -- also while handle_PROXY ran.
    assert.are.equal(("%s %d %s:%d"):format(host, port, host, port), noop(c, "peer"))
    assert.are.equal("true", noop(c, "same"))
  end

  it("v1 TCP4: handle_PROXY sees every field; session.proxy_data keeps them; session.peer is unchanged", function()
    local header = v1("TCP4", "192.0.2.1", "198.51.100.2", 12345, 25)
    local c = proxied(srv, header)
    local want = { version = "1", family = "INET", protocol = "STREAM", src_addr = "192.0.2.1",
      dst_addr = "198.51.100.2", src_port = "12345", dst_port = "25", rest = "", whole_raw = header,
      valid = "true", error = "" }
    assert.are.same(want, parse(noop(c, "seen")))
    check_peer(c)
    -- Still there after EHLO and a mail transaction.
    assert.are.equal(250, (c:cmd("EHLO client.test")))
    assert.are.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
    assert.are.same(want, parse(noop(c, "data")))
    c:close()
  end)

  it("v1 TCP6", function()
    local header = v1("TCP6", "2001:db8::1", "2001:db8::2", 65535, 587)
    local c = proxied(srv, header)
    assert.are.same({ version = "1", family = "INET6", protocol = "STREAM", src_addr = "2001:db8::1",
      dst_addr = "2001:db8::2", src_port = "65535", dst_port = "587", rest = "", whole_raw = header,
      valid = "true", error = "" }, parse(noop(c, "seen")))
    check_peer(c)
    c:close()
  end)

  it("v1 UNKNOWN: no addresses", function()
    local header = v1("UNKNOWN")
    local c = proxied(srv, header)
    assert.are.same({ version = "1", family = "UNSPEC", protocol = "UNSPEC", rest = "", whole_raw = header,
      valid = "true", error = "" }, parse(noop(c, "seen")))
    check_peer(c)
    c:close()
  end)

  it("v2 PROXY TCP4 with TLVs: command, tlv_start, rest and the named TLVs", function()
    local ssl = tlv(0x20, "\1\0\0\0\0" .. tlv(0x21, "TLSv1.2") .. tlv(0x22, "client.example"))
    local tlvs = tlv(0x01, "smtp") .. tlv(0x02, "mx.example.test") .. tlv(0x05, "uid-42") .. ssl ..
      tlv(0xE0, "custom")
    local header = v2_tcp4("192.0.2.7", "198.51.100.9", 40000, 465, tlvs)
    local c = proxied(srv, header)
    assert.are.same({ version = "2", command = "PROXY", family = "INET", protocol = "STREAM",
      src_addr = "192.0.2.7", dst_addr = "198.51.100.9", src_port = "40000", dst_port = "465",
      rest = tlvs, whole_raw = header, tlv_start = "28", valid = "true", error = "",
      ["tlv.ALPN"] = "smtp", ["tlv.AUTHORITY"] = "mx.example.test", ["tlv.UNIQUE_ID"] = "uid-42",
      ["tlv.SSL"] = "true", ["tlv.SSL_CLIENT"] = "1", ["tlv.SSL_VERIFY"] = "0",
      ["tlv.SSL_VERSION"] = "TLSv1.2", ["tlv.SSL_CN"] = "client.example", ["tlv.xE0"] = "custom" },
      parse(noop(c, "seen")))
    check_peer(c)
    c:close()
  end)

  it("v2 PROXY TCP4 without TLVs and v2 TCP6", function()
    local header = v2_tcp4("203.0.113.5", "198.51.100.9", 1, 25)
    local c = proxied(srv, header)
    assert.are.same({ version = "2", command = "PROXY", family = "INET", protocol = "STREAM",
      src_addr = "203.0.113.5", dst_addr = "198.51.100.9", src_port = "1", dst_port = "25",
      rest = "", whole_raw = header, valid = "true", error = "" }, parse(noop(c, "seen")))
    c:close()

    local a6 = ("\32\1\13\184"):rep(1) .. ("\0"):rep(11) .. "\1"  -- 2001:db8::1
    local b6 = "\32\1\13\184" .. ("\0"):rep(11) .. "\2"           -- 2001:db8::2
    local header6 = v2(1, 0x21, a6 .. b6 .. be16(5000) .. be16(25))
    local c6 = proxied(srv, header6)
    local seen = parse(noop(c6, "seen"))
    assert.are.equal("INET6", seen.family)
    assert.are.equal("2001:db8::1", seen.src_addr)
    assert.are.equal("2001:db8::2", seen.dst_addr)
    assert.are.equal("5000", seen.src_port)
    c6:close()
  end)

  it("v2 LOCAL (a health check): no addresses; handle_PROXY decides, the session goes on", function()
    local header = v2(0, 0x00)
    local c = proxied(srv, header)
    assert.are.same({ version = "2", command = "LOCAL", family = "UNSPEC", protocol = "UNSPEC", rest = "",
      whole_raw = header, valid = "true", error = "" }, parse(noop(c, "seen")))
    check_peer(c)
    assert.are.equal(250, (c:cmd("EHLO client.test")))
    c:close()
  end)

  it("bytes after the header in the same write are the client's first command, answered after the greeting",
    function()
      local c = assert(hu.connect(srv.host, srv.port))
      assert(c:send(v1("TCP4", "192.0.2.1", "198.51.100.2", 2525, 25) .. "EHLO client.test\r\nNOOP seen\r\n"))
      local code, _, lines = c:reply()
      assert.are.equal(220, code)
      assert.are.same({ "220 mx.test luasmtpd 0.1.0" }, lines)
      code = c:reply()
      assert.are.equal(250, code)
      local _, text = c:reply()
      assert.are.equal("192.0.2.1", parse(text).src_addr)
      c:close()
    end)

  it("a header arriving one byte per write", function()
    local c = assert(hu.connect(srv.host, srv.port))
    local header = v2_tcp4("192.0.2.44", "198.51.100.2", 4444, 25, tlv(0x01, "smtp"))
    for i = 1, #header do
      assert(c:send(header:sub(i, i)))
      -- Nothing may come before the header is complete.
      if i < #header then
        local s = c:read_some(0.01)
        assert.are.equal("", s, "bytes from the server after " .. i .. " header bytes")
      end
    end
    local code = c:reply()
    assert.are.equal(220, code)
    assert.are.equal("192.0.2.44", parse(noop(c, "seen")).src_addr)
    c:close()
  end)

  it("handle_PROXY returning false closes the connection silently; others go on", function()
    local calls = tonumber(noop(proxied(srv, v1("UNKNOWN")), "calls"))
    local c = assert(hu.connect(srv.host, srv.port))
    assert(c:send(v1("TCP4", "192.0.2.1", "198.51.100.2", 666, 25)))
    assert_silent_close(c, 5, "refused by handle_PROXY")
    local d = proxied(srv, v1("UNKNOWN"))
    -- The refused one did run the hook.
    assert.are.equal(calls + 2, tonumber(noop(d, "calls")))
    d:close()
  end)

  it("handle_PROXY raising an error closes the connection silently", function()
    local c = assert(hu.connect(srv.host, srv.port))
    assert(c:send(v2_tcp4("192.0.2.1", "198.51.100.2", 1000, 25, tlv(0x02, "raise.example"))))
    assert_silent_close(c, 5, "handle_PROXY raised")
  end)

  local invalid = {
    { "no header: plain SMTP", "EHLO client.test\r\n" },
    { "v1 with fields missing", "PROXY TCP4 192.0.2.1 198.51.100.2 12345\r\n" },
    { "v1 with a bad address", "PROXY TCP4 999.0.2.1 198.51.100.2 12345 25\r\n" },
    { "v1 with a bad port", "PROXY TCP4 192.0.2.1 198.51.100.2 123456 25\r\n" },
    { "v1 with an IPv6 address under TCP4", "PROXY TCP4 2001:db8::1 198.51.100.2 1 25\r\n" },
    { "v1 with a bare LF", "PROXY TCP4 192.0.2.1 198.51.100.2 12345 25\n" },
    { "v1 without CRLF within 107 bytes", "PROXY TCP4 " .. ("1"):rep(120) .. "\r\n" },
    { "v1 lower case", "proxy TCP4 192.0.2.1 198.51.100.2 12345 25\r\n" },
    { "v2 with version 3", SIG .. "\49\17" .. be16(12) .. ipv4("192.0.2.1") .. ipv4("192.0.2.2") ..
      be16(1) .. be16(2) },
    { "v2 with command 2", SIG .. "\34\17" .. be16(12) .. ipv4("192.0.2.1") .. ipv4("192.0.2.2") ..
      be16(1) .. be16(2) },
    { "v2 with an address block too short for TCP4", v2(1, 0x11, ipv4("192.0.2.1")) },
    { "v2 with a truncated TLV", v2_tcp4("192.0.2.1", "192.0.2.2", 1, 2, "\1\0\9abc") },
    { "v2 with a bad signature", "\r\n\r\n\0\r\nQUIX\n\33\17" .. be16(0) },
  }
  for _, case in ipairs(invalid) do
    it("an invalid header closes the connection silently: " .. case[1], function()
      local c = assert(hu.connect(srv.host, srv.port))
      assert(c:send(case[2]))
      assert_silent_close(c, 5, case[1])
    end)
  end

  it("the server goes on after invalid headers", function()
    local c = proxied(srv, v1("TCP4", "192.0.2.1", "198.51.100.2", 12345, 25))
    assert.are.equal(250, (c:cmd("EHLO client.test")))
    c:close()
    local log = srv:stderr()
    assert(log:find("invalid PROXY header", 1, true), "the log does not mention the invalid headers")
  end)

  it("no header within proxy_protocol_timeout: closed silently", function()
    local c = assert(hu.connect(srv.host, srv.port))
    local t0 = socket.gettime()
    assert_silent_close(c, PROXY_TIMEOUT + 5, "no header")
    assert(socket.gettime() - t0 >= PROXY_TIMEOUT * 0.9, "closed before proxy_protocol_timeout")
  end)

  it("half a header and then nothing: closed silently after proxy_protocol_timeout", function()
    local c = assert(hu.connect(srv.host, srv.port))
    assert(c:send("PROXY TCP4 192.0.2.1 "))
    assert_silent_close(c, PROXY_TIMEOUT + 5, "half a header")
  end)

  it("a header sent after proxy_protocol_timeout is too late", function()
    local c = assert(hu.connect(srv.host, srv.port))
    assert_silent_close(c, PROXY_TIMEOUT + 5, "before the late header")
    -- The connection is gone: the header goes nowhere.
    local ok = c.sock:send(v1("UNKNOWN"))
    local code = ok and c:reply(0.5)
    assert.is_nil(code)
  end)

  it("client bytes in the PROXY header and in a handle_PROXY error never reach the log unescaped", function()
    -- AF_UNIX paths are raw bytes; the server logs the source.
    local path = "/tmp/x\r\n2026-01-01T00:00:00.000Z INFO [s9] FAKE LOG LINE\27[2J"
    local function pad(s) return s .. ("\0"):rep(108 - #s) end
    local c = proxied(srv, v2(1, 0x31, pad(path) .. pad("/run/smtp.sock")))
    assert.are.equal(path, parse(noop(c, "seen")).src_addr)
    c:close()
    -- handle_PROXY raising with a TLV value in its message.
    local d = assert(hu.connect(srv.host, srv.port))
    assert(d:send(v2_tcp4("192.0.2.1", "198.51.100.2", 1000, 25,
      tlv(0x02, "raise\r\n2026-01-01T00:00:00.000Z INFO [s9] FAKE LOG LINE"))))
    assert_silent_close(d, 5, "handle_PROXY raised")
    local log = srv:stderr()
    local bad = log:find("[%z\1-\8\11-\31\127]")
    assert(not bad, bad and ("a raw control byte 0x%02X in the log: %q"):format(log:byte(bad),
      log:sub(math.max(1, bad - 100), bad + 60)))
    for line in log:gmatch("[^\n]+") do
      assert(not line:find("^2026%-01%-01"), "a forged log line: " .. line)
    end
  end)
end)

describe("PROXY protocol without handle_PROXY", function()
  it("a valid header is closed silently (as aiosmtpd); the start-up log warns", function()
    local srv = testing.start{ source = "function handle_NOOP() return '250 hi' end",
      args = { "--proxy-protocol=" .. PROXY_TIMEOUT } }
    local ok, err = pcall(function()
      local c = assert(hu.connect(srv.host, srv.port))
      assert(c:send(v1("TCP4", "192.0.2.1", "198.51.100.2", 12345, 25)))
      assert_silent_close(c, 5, "no handle_PROXY")
      assert(srv:stderr():find("handle_PROXY", 1, true), "the log says nothing about handle_PROXY")
    end)
    srv:stop()
    if not ok then error(tostring(err) .. "\n" .. srv:stderr():sub(-2000), 0) end
  end)
end)

describe("PROXY protocol turned on by the script", function()
  it("options.proxy_protocol_timeout in the handler expects the header, as the flag does", function()
    local source = assert(hu.read_file(HANDLER)) .. "\noptions = { proxy_protocol_timeout = 1 }\n"
    local srv = testing.start{ source = source }
    local ok, err = pcall(function()
      local c = assert(hu.connect(srv.host, srv.port))
      -- No greeting before the header.
      assert.are.equal("", (c:read_some(0.3)))
      assert(c:send(v1("TCP4", "192.0.2.3", "198.51.100.2", 3333, 25)))
      local code = c:reply()
      assert.are.equal(220, code)
      assert.are.equal("192.0.2.3", parse(noop(c, "seen")).src_addr)
      c:close()
      local d = assert(hu.connect(srv.host, srv.port))
      assert(d:send("EHLO client.test\r\n"))
      assert_silent_close(d, 5, "plain SMTP where a header is expected")
    end)
    srv:stop()
    if not ok then error(tostring(err) .. "\n" .. srv:stderr():sub(-2000), 0) end
  end)
end)

describe("PROXY protocol before implicit TLS", function()
  it("the header comes in clear text, then the TLS handshake, then the greeting", function()
    local srv = start{ tls = "implicit" }
    local ok, err = pcall(function()
      local c = assert(testing.connect(srv.host, srv.port, { greeting = false }))
      assert(c:send(v1("TCP4", "192.0.2.9", "198.51.100.2", 4650, 465)))
      assert(c:tls_handshake())
      local code, _, lines = c:reply()
      assert.are.equal(220, code)
      assert.are.same({ "220 mx.test luasmtpd 0.1.0" }, lines)
      local ncode, text = c:cmd("NOOP seen")
      assert.are.equal(250, ncode)
      assert.are.equal("192.0.2.9", parse(text).src_addr)
      c:close()
      -- No header: closed without a TLS handshake.
      local d = assert(hu.connect(srv.host, srv.port))
      assert_silent_close(d, PROXY_TIMEOUT + 5, "implicit TLS without a header")
    end)
    srv:stop()
    if not ok then error(tostring(err) .. "\n" .. srv:stderr():sub(-2000), 0) end
  end)
end)

-- ---------------------------------------------------------------------------
-- Real HAProxy

local function find_haproxy()
  local out = hu.sh("command -v haproxy || ls /usr/sbin/haproxy 2>/dev/null")
  return out:match("^(/%S+)")
end

local function alive(pid)
  if ffi.C.kill(pid, 0) ~= 0 then return false end
  local stat = hu.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

describe("behind HAProxy", function()
  local haproxy = find_haproxy()
  if not haproxy then
    it("HAProxy in front of luasmtpd", function()
      pending("haproxy not found (Debian: apt-get install haproxy, see tools/deps.sh)")
    end)
    return
  end

  local srv, dir, pid, ports

  setup(function()
    srv = start{ args = { "--proxy-protocol=5" } }
    dir = hu.tempdir()
    ports = { v1 = hu.free_port(), v2 = hu.free_port(), v2opts = hu.free_port() }
    local backend = "127.0.0.1:" .. srv.port
    local cfg = table.concat({
      "global",
      "  maxconn 100",
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 30s",
      "  timeout server 30s",
      "frontend v1",
      "  bind 127.0.0.1:" .. ports.v1,
      "  default_backend v1",
      "backend v1",
      "  server s " .. backend .. " send-proxy",
      "frontend v2",
      "  bind 127.0.0.1:" .. ports.v2,
      "  default_backend v2",
      "backend v2",
      "  server s " .. backend .. " send-proxy-v2",
      "frontend v2opts",
      "  bind 127.0.0.1:" .. ports.v2opts,
      "  unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%rt",
      "  default_backend v2opts",
      "backend v2opts",
      "  server s " .. backend .. " send-proxy-v2 proxy-v2-options crc32c,unique-id",
      "",
    }, "\n")
    hu.write_file(dir .. "/haproxy.cfg", cfg)
    local check = hu.sh(hu.shell_quote(haproxy) .. " -c -f " .. hu.shell_quote(dir .. "/haproxy.cfg"))
    assert(check:find("valid"), "haproxy -c: " .. check)
    local p = assert(io.popen(hu.shell_quote(haproxy) .. " -db -f " .. hu.shell_quote(dir .. "/haproxy.cfg") ..
      " </dev/null >" .. hu.shell_quote(dir .. "/haproxy.log") .. " 2>&1 & echo $!"))
    pid = tonumber(p:read("*l"))
    p:close()
    assert(pid, "could not start haproxy")
    -- Ready once every frontend accepts connections.
    hu.wait_until(function()
      for _, port in pairs(ports) do
        local s = socket.tcp4()
        s:settimeout(0.5)
        local ok = s:connect("127.0.0.1", port)
        s:close()
        if not ok then return false end
      end
      return true
    end, 10, "haproxy to listen", function()
      return "--- haproxy.log ---\n" .. (hu.read_file(dir .. "/haproxy.log") or "") end)
  end)

  teardown(function()
    if pid and alive(pid) then
      ffi.C.kill(pid, 15)
      local ok = pcall(hu.wait_until, function() return not alive(pid) end, 5, "haproxy to stop")
      if not ok then
        ffi.C.kill(pid, 9)
        pcall(hu.wait_until, function() return not alive(pid) end, 5, "haproxy to die")
      end
    end
    if srv then srv:stop() end
    hu.rmdir(dir)
  end)

  local function through(port, bind)
    local c, line = hu.connect_greeted("127.0.0.1", port, { bind = bind })
    assert(c, line)
    assert.are.equal("220 mx.test luasmtpd 0.1.0", line)
    return c
  end

  local function check(c, version, port)
    local host, lport = c:local_addr()
    local seen = parse(noop(c, "seen"))
    assert.are.equal(version, seen.version)
    assert.are.equal("INET", seen.family)
    assert.are.equal(host, seen.src_addr)
    assert.are.equal(tostring(lport), seen.src_port)
    assert.are.equal("127.0.0.1", seen.dst_addr)
    assert.are.equal(tostring(port), seen.dst_port)
    -- session.peer is HAProxy's connection to us, not the client.
    local phost = noop(c, "peer"):match("^(%S+) ")
    assert.are.equal("127.0.0.1", phost)
    assert.are.same(seen, parse(noop(c, "data")))
    return seen
  end

  it("send-proxy (v1): the hook sees the client's address and port", function()
    local c = through(ports.v1)
    local seen = check(c, "1", ports.v1)
    assert.is_nil(seen.command)
    assert.are.equal(250, (c:cmd("EHLO client.test")))
    assert.are.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
    assert.are.equal(250, (c:cmd("RCPT TO:<b@example.org>")))
    assert.are.equal(354, (c:cmd("DATA")))
    assert.are.equal(250, (c:cmd("Subject: via haproxy\r\n\r\nhi\r\n.")))
    assert.are.equal(221, (c:cmd("QUIT")))
    c:close()
  end)

  it("send-proxy-v2: the hook sees the client's address and port", function()
    local c = through(ports.v2)
    local seen = check(c, "2", ports.v2)
    assert.are.equal("PROXY", seen.command)
    assert.are.equal(221, (c:cmd("QUIT")))
    c:close()
  end)

  it("send-proxy-v2 with crc32c and unique-id: the TLVs arrive", function()
    local c = through(ports.v2opts)
    local seen = check(c, "2", ports.v2opts)
    assert.are.equal(4, #seen["tlv.CRC32C"])
    local host, lport = c:local_addr()
    local hex = ("%02X%02X%02X%02X"):format(host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$"))
    assert.matches("^" .. hex .. ":" .. ("%04X"):format(lport) .. "_", seen["tlv.UNIQUE_ID"])
    c:close()
  end)

  it("a client on another address (127.0.0.2): src_addr is the client's, session.peer stays HAProxy's", function()
    for _, port in ipairs{ ports.v1, ports.v2 } do
      local c = through(port, "127.0.0.2")
      local seen = check(c, port == ports.v1 and "1" or "2", port)
      assert.are.equal("127.0.0.2", seen.src_addr)
      c:close()
    end
  end)
end)
