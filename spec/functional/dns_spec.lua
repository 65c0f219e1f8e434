-- smtpd.dns (async-api.md 5) against a real DNS server: the spec starts
-- dnsmasq on a free loopback port (authoritative for example.test and the
-- DNSBL zone zen.test, so it answers NXDOMAIN, real TTLs and PTRs) and
-- points the server at it with `resolver`. Timeouts come from a UDP port
-- the spec holds open and never reads. Every server and dnsmasq is stopped
-- by its PID. Order of events is asserted, never elapsed time.
local socket = require "socket"
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"
local hu = require "spec.functional.hostile_util"

local du = require "spec.functional.dns_util"
local start_dnsmasq, silent_server = du.start_dnsmasq, du.silent_server

-- ---------------------------------------------------------------------------
-- The handler: NOOP runs one call and renders its results.

local SOURCE = [[
local smtpd = require "smtpd"
options = { auth_require_tls = false }
local function render(v)
  if type(v) ~= "table" then return tostring(v) end
  local keys, parts = {}, {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    parts[#parts + 1] = (type(k) == "number" and "" or k .. "=") .. render(v[k])
  end
  -- The order of an RRset is the server's choice: sort arrays.
  if #v > 0 then table.sort(parts) end
  return "{" .. table.concat(parts, " ") .. "}"
end
local function call(f, a, b)
  if f == "q" then return smtpd.dns.query(a, b) end
  if f == "rev" then return smtpd.dns.reverse(a, b == "confirm" and { confirm = true } or nil) end
  if f == "bl" then return smtpd.dns.dnsbl(a, b) end
  if f == "bad" then return smtpd.dns.query(a, b == "" and nil or b) end
end
local fresh = 0
function handle_NOOP(server, session, envelope, arg)
  local n, mode = (arg or ""):match("^loop (%d+) (%a+)$")
  if n then
    local bad = 0
    for _ = 1, tonumber(n) do
      local r, e
      if mode == "fresh" then
        fresh = fresh + 1
        r, e = smtpd.dns.query("n" .. fresh .. ".example.test", "A")
        if e ~= "name not found" then bad = bad + 1 end
      elseif mode == "dnsbl" then
        fresh = fresh + 1
        r, e = smtpd.dns.dnsbl("10.1." .. (math.floor(fresh / 256) % 256) .. "." .. fresh % 256, "zen.test")
        if r ~= false then bad = bad + 1 end
      else
        r, e = smtpd.dns.query("mail.example.test", "A")
        if not r or r[1].address ~= "127.0.0.10" then bad = bad + 1 end
      end
    end
    return "250 looped " .. n .. " bad " .. bad
  end
  local f, a, b = (arg or ""):match("^(%S+) (%S+) ?(%S*)$")
  if not f then return "250 OK" end
  local r, e = call(f, a, b)
  return "250 " .. render(r) .. (e ~= nil and (" " .. tostring(e)) or "")
end
function authenticator(server, session, envelope, mechanism, auth_data)
  local r = smtpd.dns.query("mail.example.test", "A")
  return smtpd.AuthResult{ success = r ~= nil }
end
]]

local function with_server(opts, fn)
  local srv = testing.start(opts)
  local ok, err = pcall(fn, srv)
  srv:stop()
  if not ok then error(err, 0) end
  return srv
end

local function text_of(c, line)
  local code, text = c:cmd(line)
  return code and (code .. " " .. text) or ("no reply: " .. tostring(text))
end

describe("smtpd.dns against dnsmasq", function()
  local dns, srv, c
  setup(function()
    dns = start_dnsmasq()
    srv = testing.start{ source = SOURCE, options = { resolver = "127.0.0.1:" .. dns.port } }
    c = srv:connect()
  end)
  teardown(function()
    if c then c:close() end
    if srv then srv:stop() end
    if dns then dns.close() end
  end)

  it("returns every qtype's records in the documented shape", function()
    for _, case in ipairs{
      { "q mail.example.test A", "250 {{address=127.0.0.10 ttl=300}}" },
      { "q mail.example.test AAAA", "250 {{address=::10 ttl=300}}" },
      { "q example.test MX", "250 {{exchange=mail.example.test preference=10 ttl=300} " ..
        "{exchange=mx2.example.test preference=20 ttl=300}}" },
      { "q example.test TXT", "250 {{text=v=spf1 -all ttl=300}}" },
      -- the strings of one TXT record are joined
      { "q multi.example.test TXT", "250 {{text=part onepart two ttl=300}}" },
      { "q 10.0.0.127.in-addr.arpa PTR", "250 {{name=mail.example.test ttl=300}}" },
      { "q alias.example.test CNAME", "250 {{name=mail.example.test ttl=300}}" },
      { "q example.test NS", "250 {{name=ns.example.test ttl=300}}" },
      { "q _submission._tcp.example.test SRV",
        "250 {{port=587 priority=1 target=mail.example.test ttl=300 weight=5}}" },
    } do
      assert.equal(case[2], text_of(c, "NOOP " .. case[1]), case[1])
    end
  end)

  it("returns each error string of the contract", function()
    assert.equal("250 nil name not found", text_of(c, "NOOP q nope.example.test A"))
    assert.equal("250 nil no data", text_of(c, "NOOP q mx2.example.test AAAA"))
    assert.equal("250 nil bad name", text_of(c, "NOOP q a..example.test A"))
    assert.equal("250 nil bad name", text_of(c, "NOOP q " .. ("x"):rep(64) .. ".example.test A"))
    assert.equal("250 nil bad name", text_of(c, "NOOP q " .. ("abcdefgh."):rep(29) .. "test A"))
    -- dnsmasq is authoritative only for its zones: anything else is REFUSED
    assert.equal("250 nil server failure", text_of(c, "NOOP q www.elsewhere.invalid A"))
  end)

  it("reverse: the PTR names; with confirm only those whose addresses lead back", function()
    assert.equal("250 {mail.example.test}", text_of(c, "NOOP rev 127.0.0.10"))
    assert.equal("250 {mail.example.test}", text_of(c, "NOOP rev 127.0.0.10 confirm"))
    assert.equal("250 {mail.example.test}", text_of(c, "NOOP rev ::10 confirm"))
    -- 127.0.0.20 claims fake.example.test, which has no A record
    assert.equal("250 {fake.example.test}", text_of(c, "NOOP rev 127.0.0.20"))
    assert.equal("250 nil name not found", text_of(c, "NOOP rev 127.0.0.20 confirm"))
    assert.equal("250 nil name not found", text_of(c, "NOOP rev 127.0.0.99"))
  end)

  it("dnsbl: the listing's A records, false when not listed; the TXT holds the reason", function()
    assert.equal("250 {127.0.0.2}", text_of(c, "NOOP bl 127.0.0.2 zen.test"))
    assert.equal("250 {{text=listed: see https://zen.test/127.0.0.2 ttl=300}}",
      text_of(c, "NOOP q 2.0.0.127.zen.test TXT"))
    assert.equal("250 false", text_of(c, "NOOP bl 127.0.0.3 zen.test"))
    -- IPv6: reversed nibbles; an IPv4-mapped address counts as IPv4
    assert.equal("250 {127.0.0.4}", text_of(c, "NOOP bl ::1 zen.test"))
    assert.equal("250 false", text_of(c, "NOOP bl ::2 zen.test"))
    assert.equal("250 {127.0.0.2}", text_of(c, "NOOP bl ::ffff:127.0.0.2 zen.test"))
    assert.equal("250 nil bad name", text_of(c, "NOOP bl 127.0.0.2 zen..test"))
  end)

  it("raises a readable error for a bad argument (a hook error, 451)", function()
    assert.equal("451 4.3.0 Error: local error in processing", text_of(c, "NOOP bad example.test MXX"))
    assert.equal("451 4.3.0 Error: local error in processing", text_of(c, "NOOP rev not-an-ip"))
    assert.equal("250 OK", text_of(c, "NOOP"))
    local log = srv:stderr()
    assert.truthy(log:find('bad argument #2 to \'%w+\' %(expected "A", "AAAA", "MX", "TXT", "PTR", '
      .. '"CNAME", "NS" or "SRV"%)'), log)
    assert.truthy(log:find("bad argument #1 to '%w+' %(expected an IPv4 or IPv6 address%)"), log)
  end)
end)

describe("smtpd.dns cache", function()
  it("answers again from the cache within the TTL after dnsmasq stopped", function()
    local dns = start_dnsmasq()
    local ok, err = pcall(with_server, { source = SOURCE,
      options = { resolver = "127.0.0.1:" .. dns.port, resolver_timeout = 1 } }, function(srv)
      local c = srv:connect()
      assert.equal("250 {{address=127.0.0.10 ttl=300}}", text_of(c, "NOOP q mail.example.test A"))
      assert.equal("250 nil name not found", text_of(c, "NOOP q gone.example.test A"))
      assert.equal("250 {mail.example.test}", text_of(c, "NOOP rev 127.0.0.10 confirm"))
      dns.stop()
      -- the answers (positive and NXDOMAIN, RFC 2308) come from the cache
      assert.truthy(text_of(c, "NOOP q mail.example.test A"):find("^250 {{address=127%.0%.0%.10 ttl=%d+}}$"))
      assert.equal("250 nil name not found", text_of(c, "NOOP q gone.example.test A"))
      assert.equal("250 {mail.example.test}", text_of(c, "NOOP rev 127.0.0.10 confirm"))
      -- a name never asked is not in it: the server is gone
      assert.truthy(text_of(c, "NOOP q mx2.example.test A"):find("^250 nil ") )
      c:close()
    end)
    dns.close()
    if not ok then error(err, 0) end
  end)

  it("resolver_cache_size = 0 asks the server every time", function()
    local dns = start_dnsmasq()
    local ok, err = pcall(with_server, { source = SOURCE,
      options = { resolver = "127.0.0.1:" .. dns.port, resolver_timeout = 1, resolver_cache_size = 0 } },
      function(srv)
        local c = srv:connect()
        assert.equal("250 {{address=127.0.0.10 ttl=300}}", text_of(c, "NOOP q mail.example.test A"))
        dns.stop()
        local again = text_of(c, "NOOP q mail.example.test A")
        assert.truthy(again == "250 nil server failure" or again == "250 nil timeout", again)
        c:close()
      end)
    dns.close()
    if not ok then error(err, 0) end
  end)
end)

describe("smtpd.dns while a query waits", function()
  local silent, silent_port
  before_each(function() silent, silent_port = silent_server() end)
  after_each(function() silent:close() end)

  it("times out against a server that never answers: \"timeout\"", function()
    with_server({ source = SOURCE,
      options = { resolver = "127.0.0.1:" .. silent_port, resolver_timeout = 0.5 } }, function(srv)
      local c = srv:connect()
      assert.equal("250 nil timeout", text_of(c, "NOOP q mail.example.test A"))
      assert.equal("250 nil timeout", text_of(c, "NOOP rev 127.0.0.10 confirm"))
      assert.equal("250 nil timeout", text_of(c, "NOOP bl 127.0.0.2 zen.test"))
      c:close()
    end)
  end)

  it("serves another client while one hook waits for DNS", function()
    with_server({ source = SOURCE,
      options = { resolver = "127.0.0.1:" .. silent_port, resolver_timeout = 2 } }, function(srv)
      local a, b = srv:connect(), srv:connect()
      assert(a:send("NOOP q mail.example.test A\r\n"))
      assert.equal("250 OK", text_of(b, "NOOP"))
      assert.is_nil((a:reply(0.05)), "the waiting hook answered before the other client")
      local code, text = a:reply(10)
      assert.equal(250, code)
      assert.equal("nil timeout", text)
      a:close()
      b:close()
    end)
  end)

  it("a client that disconnects mid-query leaves the server serving; the late end is dropped", function()
    local srv = with_server({ source = SOURCE,
      options = { resolver = "127.0.0.1:" .. silent_port, resolver_timeout = 1 } }, function(srv)
      local a = srv:connect()
      assert(a:send("NOOP q mail.example.test A\r\n"))
      a:close()
      u.wait_log(srv, "abandoning suspended hook handle_NOOP")
      local b = srv:connect()
      assert.equal("250 OK", text_of(b, "NOOP"))
      b:close()
      -- past resolver_timeout and c-ares's own tries: nothing fires into
      -- the freed session
      socket.sleep(1.5)
      local c = srv:connect()
      assert.equal("250 OK", text_of(c, "NOOP"))
      c:close()
    end)
    assert.is_nil(srv:stderr():find("ERROR", 1, true), srv:stderr())
  end)

  it("hook_timeout ends a hook waiting on DNS: 451 for a command, 454 in AUTH", function()
    with_server({ source = SOURCE, options = { resolver = "127.0.0.1:" .. silent_port,
      resolver_timeout = 30, hook_timeout = 1 } }, function(srv)
      local c = srv:connect()
      assert.equal("451 4.3.0 Error: local error in processing", text_of(c, "NOOP q mail.example.test A"))
      assert.equal("250 OK", text_of(c, "NOOP"))
      assert.equal(250, (c:cmd("EHLO client.test")))
      assert.equal("454 4.7.0 Temporary authentication failure",
        text_of(c, "AUTH PLAIN " .. testing.b64("\0alice\0secret")))
      assert.equal("250 OK", text_of(c, "NOOP"))
      c:close()
      local log = srv:stderr()
      assert.truthy(log:find("handle_NOOP still waiting for smtpd.dns.query after hook_timeout (1 s)", 1,
        true), log)
      assert.equal(2, u.count(log, "still waiting for smtpd.dns.query after hook_timeout (1 s)"), log)
    end)
  end)
end)

describe("smtpd.dns across a reload", function()
  it("a query waiting when SIGHUP arrives completes on its generation; the new one has its own resolver",
    function()
      local dns = start_dnsmasq()
      local silent, silent_port = silent_server()
      local v1 = SOURCE:gsub("options = { auth_require_tls = false }", ("options = { auth_require_tls = false, "
        .. "resolver = %q, resolver_timeout = 1.5 }"):format("127.0.0.1:" .. silent_port), 1)
      local v2 = SOURCE:gsub("options = { auth_require_tls = false }", ("options = { auth_require_tls = false, "
        .. "resolver = %q }"):format("127.0.0.1:" .. dns.port), 1)
      local srv = u.start{ source = v1 }
      local ok, err = pcall(function()
        local a = srv:connect()
        assert(a:send("NOOP q mail.example.test A\r\n"))
        u.reload(srv, v2, 2)
        local b = srv:connect()
        assert.equal("250 {{address=127.0.0.10 ttl=300}}", text_of(b, "NOOP q mail.example.test A"))
        -- a's wait is still on generation 1's resolver, which never answers
        local code, text = a:reply(10)
        assert.equal(250, code)
        assert.equal("nil timeout", text)
        a:close()
        b:close()
      end)
      u.stop(srv)
      silent:close()
      dns.close()
      if not ok then error(err, 0) end
    end)
end)

describe("smtpd.dns where no hook runs, and its options", function()
  it("the script's top level cannot wait: the load fails with a readable error", function()
    local status, out = testing.check{ source = 'require("smtpd").dns.query("example.test", "A")\n' }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("smtpd.dns.query: cannot wait while the script loads", 1, true), out)
  end)

  it("a bad resolver option is refused with its place, in the script and on the command line", function()
    local status, out, path = testing.check{ source = 'options = {\n  resolver = "nope:53" }\n' }
    assert.are_not.equal(0, status)
    assert.truthy(out:find(path .. ":2: option 'resolver': bad server 'nope:53'", 1, true), out)
    status, out = testing.check{ source = "", args = { "-o", "resolver=127.0.0.1:70000" } }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("command line: option 'resolver': bad server '127.0.0.1:70000'", 1, true), out)
    status, out = testing.check{ source = "options = { resolver_timeout = 0 }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'resolver_timeout' must be a positive number", 1, true), out)
    status, out = testing.check{ source = "options = { resolver_cache_size = -1 }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'resolver_cache_size' must be a non-negative integer", 1, true), out)
    status, out = testing.check{ source = 'options = { resolver = "127.0.0.1:5353, [::1]:53,::1" }\n' }
    assert.equal(0, status, out)
  end)
end)

describe("smtpd.dns over many queries", function()
  it("10,000 queries (real and cached, past the cache's bound) leave descriptors and RSS flat", function()
    local dns = start_dnsmasq()
    local ok, err = pcall(with_server, { source = SOURCE, options = { resolver = "127.0.0.1:" .. dns.port,
      resolver_cache_size = 500, hook_timeout = 120 } }, function(srv)
      local c = srv:connect()
      c.timeout = 120
      -- warm-up: the resolver, its socket and a full cache
      assert.equal("250 looped 1000 bad 0", text_of(c, "NOOP loop 1000 fresh"))
      local pid = srv.pid
      local fd_before, rss_before = hu.fd_count(pid), hu.rss_kib(pid)
      assert.equal("250 looped 1500 bad 0", text_of(c, "NOOP loop 1500 fresh"))
      assert.equal("250 looped 1500 bad 0", text_of(c, "NOOP loop 1500 dnsbl"))
      assert.equal("250 looped 7000 bad 0", text_of(c, "NOOP loop 7000 cached"))
      local fd_after, rss_after = hu.fd_count(pid), hu.rss_kib(pid)
      io.stdout:write(("\ndns: descriptors %d before, %d after; VmRSS %d KiB before, %d KiB after\n")
        :format(fd_before, fd_after, rss_before, rss_after))
      assert.equal(fd_before, fd_after)
      assert(hu.sanitized(pid) or rss_after - rss_before < 4096,
        ("RSS grew by %d KiB over 10,000 queries"):format(rss_after - rss_before))
      c:close()
    end)
    dns.close()
    if not ok then error(err, 0) end
  end)
end)
