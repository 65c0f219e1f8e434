-- smtpd.client inside the real server, against real upstreams on
-- 127.0.0.1 started by the spec: Debian's aiosmtpd (spec/functional/
-- upstream.py: records envelopes and message bytes, with AUTH, STARTTLS,
-- refusals and 4xx/5xx modes), a raw LMTP responder, luasmtpd itself, and
-- TCP peers the spec plays by hand where the order of events matters (a
-- hook waiting on an upstream that has not answered yet). Order of
-- events, never elapsed time, is what these cases assert.
local socket = require "socket"
local testing = require "smtpd.testing"
local hu = require "spec.functional.hostile_util"
local u = require "spec.functional.reload_util"
local up = require "spec.functional.upstream_util"

-- A Lua literal for v (strings, numbers, booleans, tables).
local function lit(v)
  local t = type(v)
  if t == "string" then return (("%q"):format(v):gsub("\\\n", "\\n"):gsub("\r", "\\r")) end
  if t ~= "table" then return tostring(v) end
  local parts = {}
  for k, x in pairs(v) do parts[#parts + 1] = "[" .. lit(k) .. "]=" .. lit(x) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local SOURCE = [[
local smtpd = require "smtpd"
local client = require "smtpd.client"
local VERSION = "v1"
options = { auth_require_tls = false, hook_timeout = %s }
local OPTS = %s
local function lit(v)
  local t = type(v)
  if t == "string" then return (("%%q"):format(v):gsub("\\\n", "\\n"):gsub("\r", "\\r")) end
  if t ~= "table" then return tostring(v) end
  local parts = {}
  for k, x in pairs(v) do parts[#parts + 1] = "[" .. lit(k) .. "]=" .. lit(x) end
  return "{" .. table.concat(parts, ",") .. "}"
end
local function copy(t, extra)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end
local function pack(...) return { n = select("#", ...), ... } end
function handle_NOOP(server, session, envelope, arg)
  if arg == "ver" then return "250 " .. VERSION end
  if arg == "module" then return "250 " .. tostring(smtpd.client == client) .. " " .. type(client.send) end
  if arg == "badopt" then client.send{ host = "127.0.0.1", bogus = 1 } end
  if arg == "twice" then
    local a = pack(client.send(copy(OPTS, { keepalive = true })))
    local b = pack(client.send(copy(OPTS, { keepalive = true })))
    return "250 " .. lit({ a, b })
  end
  if arg == "steps" then
    local copts = copy(OPTS, { from = false, to = false, data = false })
    for k, v in pairs(copts) do if v == false then copts[k] = nil end end
    local c = assert(client.connect(copts))
    local r = { reused = c:getreusedtimes(), ext = c:extensions() }
    r.mail = pack(c:mail(OPTS.from))
    r.rcpt = pack(c:rcpt(OPTS.to[1]))
    r.data = pack(c:data(OPTS.data))
    r.keep = pack(c:setkeepalive())
    local d = assert(client.connect(copts))
    r.reused2 = d:getreusedtimes()
    r.rset = pack(d:rset())
    r.quit = pack(d:quit())
    return "250 " .. lit(r)
  end
  local n = tonumber(arg and arg:match("^loop (%%d+)$"))
  if n then
    for _ = 1, n do assert(client.send(copy(OPTS, { keepalive = true }))) end
    return "250 looped " .. n
  end
  local res = pack(client.send(copy(OPTS)))
  return "250 " .. VERSION .. " " .. lit(res)
end
function handle_DATA(server, session, envelope)
  local res = pack(client.send(copy(OPTS, { from = envelope.mail_from, to = envelope.rcpt_tos,
    data = envelope.original_content })))
  return "250 " .. lit(res)
end
]]

local function source(opts, hook_timeout)
  return SOURCE:format(hook_timeout or 10, lit(opts))
end

local function decode(text)
  local f = assert(load("return " .. assert(text:match("^v%d (.*)$") or text), "reply", "t", {}))
  return f()
end

-- Runs fn(srv, c) with a server whose hooks send with opts.
local function with_client(opts, fn, hook_timeout)
  hu.with_server({ source = source(opts, hook_timeout) }, function(srv)
    local c = srv:connect()
    local ok, err = pcall(fn, srv, c)
    c:close()
    if not ok then error(err, 0) end
  end)
end

local function noop(c, arg, timeout)
  assert(c:send("NOOP " .. (arg or "send") .. "\r\n"))
  local code, text = c:reply(timeout or 20)
  assert.equal(250, code, text)
  return text
end

local MESSAGE = "From: a@example.org\r\nSubject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nend . \r\n" ..
  "no final newline"

describe("smtpd.client", function()
  local upstream
  after_each(function()
    up.stop(upstream)
    upstream = nil
  end)

  local function base(extra)
    local o = { host = "127.0.0.1", port = upstream.port, from = "sender@example.org",
      to = { "rcpt@example.net" }, data = "Subject: hi\r\n\r\nbody\r\n", helo = "client.test" }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  it("is embedded as smtpd.client; a bad option raises a readable error", function()
    upstream = up.start()
    with_client(base(), function(srv, c)
      assert.equal("true function", noop(c, "module"))
      assert(c:send("NOOP badopt\r\n"))
      local code = c:reply(10)
      assert.equal(451, code)
      hu.wait_log(srv, "smtpd.client.send: unknown option bogus")
    end)
  end)

  it("delivers byte-exact (dot-stuffing round trip, CRLF termination) and returns the result", function()
    upstream = up.start()
    with_client(base{ to = { "one@example.net", "two@example.net" }, data = MESSAGE }, function(_, c)
      local r = decode(noop(c))
      local res = r[1]
      assert.is_table(res, tostring(r[2]))
      assert.equal(250, res.code)
      assert.equal("2.0.0 Ok: queued as UP1", res.message)
      assert.same({ "one@example.net", "two@example.net" }, res.accepted)
      assert.same({}, res.rejected)
      local msg = up.wait(upstream, "message")[1]
      assert.equal(MESSAGE .. "\r\n", msg.data)
      assert.equal("sender@example.org", msg.mail_from)
      assert.same({ "one@example.net", "two@example.net" }, msg.rcpt_tos)
      assert.equal("client.test", up.events(upstream, "ehlo")[1].name)
    end)
  end)

  it("relays what a client sent to luasmtpd byte for byte (handle_DATA with original_content)", function()
    upstream = up.start()
    with_client(base(), function(_, c)
      c:cmd("EHLO client.test")
      c:cmd("MAIL FROM:<s@example.org>")
      c:cmd("RCPT TO:<r@example.net>")
      local code, text = c:data(".\n..\n.x\nlast")
      assert.equal(250, code)
      assert.equal(250, decode(text)[1].code)
      assert.equal(".\r\n..\r\n.x\r\nlast\r\n", up.wait(upstream, "message")[1].data)
    end)
  end)

  it("uses PIPELINING when offered: MAIL, the RCPTs and DATA arrive in one write", function()
    upstream = up.start{ pipelining = true }
    with_client(base{ to = { "a@example.net", "b@example.net" } }, function(_, c)
      assert.equal(250, decode(noop(c))[1].code)
      local mail = up.wait(upstream, "mail")[1]
      -- The two RCPT lines and DATA were already buffered behind MAIL.
      assert.equal(#"RCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n", mail.buffered)
    end)
  end)

  it("without PIPELINING, waits for each reply (nothing buffered behind MAIL)", function()
    upstream = up.start()
    with_client(base{ to = { "a@example.net", "b@example.net" } }, function(_, c)
      assert.equal(250, decode(noop(c))[1].code)
      assert.equal(0, up.wait(upstream, "mail")[1].buffered)
    end)
  end)

  for _, pipelining in ipairs{ false, true } do
    local how = pipelining and " (pipelined)" or ""
    it("reports per-recipient refusals and delivers to the rest" .. how, function()
      upstream = up.start{ refuse = "bad", pipelining = pipelining }
      with_client(base{ to = { "ok@example.net", "bad@example.net" } }, function(_, c)
        local res = decode(noop(c))[1]
        assert.same({ "ok@example.net" }, res.accepted)
        assert.same({ ["bad@example.net"] = { 550, "5.1.1 No such user here" } }, res.rejected)
        assert.same({ "ok@example.net" }, up.wait(upstream, "message")[1].rcpt_tos)
      end)
    end)

    it("every recipient refused: nil, 'all recipients refused', stage rcpt, nothing sent" .. how, function()
      upstream = up.start{ refuse = "bad", pipelining = pipelining }
      with_client(base{ to = { "bad1@example.net", "bad2@example.net" } }, function(_, c)
        local r = decode(noop(c))
        assert.is_nil(r[1])
        assert.equal("all recipients refused", r[2])
        assert.equal("rcpt", r[3].stage)
        assert.equal(550, r[3].code)
        assert.equal(2, #up.events(upstream, "rcpt"))
        assert.equal(0, #up.events(upstream, "message"))
      end)
    end)

    it("require_all: one refusal and the message is not sent at all" .. how, function()
      upstream = up.start{ refuse = "bad", pipelining = pipelining }
      with_client(base{ to = { "ok@example.net", "bad@example.net" }, require_all = true }, function(_, c)
        local r = decode(noop(c))
        assert.is_nil(r[1])
        assert.equal("recipient refused", r[2])
        assert.equal("rcpt", r[3].stage)
        assert.equal(550, r[3].code)
        assert.same({ "ok@example.net" }, r[3].accepted)
        c:cmd("NOOP ver") -- the upstream has seen everything by now
        assert.equal(0, #up.events(upstream, "message"))
      end)
    end)
  end

  it("maps the final reply: 4xx and 5xx are nil, 'data refused' with the code", function()
    for _, reply in ipairs{ "452 4.3.1 Insufficient system storage", "554 5.7.1 Message rejected" } do
      upstream = up.start{ data_reply = reply }
      with_client(base(), function(_, c)
        local r = decode(noop(c))
        assert.is_nil(r[1])
        assert.equal("data refused", r[2])
        assert.equal("data", r[3].stage)
        assert.equal(tonumber(reply:sub(1, 3)), r[3].code)
        assert.equal(reply:sub(5), r[3].message)
      end)
      up.stop(upstream)
    end
    upstream = nil
  end)

  it("a 4xx at RCPT is a refusal with its code", function()
    upstream = up.start{ tempfail_rcpt = "busy" }
    with_client(base{ to = { "busy@example.net" } }, function(_, c)
      local r = decode(noop(c))
      assert.equal("all recipients refused", r[2])
      assert.equal(450, r[3].code)
      assert.same({ ["busy@example.net"] = { 450, "4.2.1 Mailbox busy, try later" } }, r[3].rejected)
    end)
  end)

  it("connection refused: nil, 'connection refused', stage connect", function()
    with_client({ host = "127.0.0.1", port = hu.free_port(), from = "a@b", to = { "c@d" }, data = "x" },
      function(_, c)
        local r = decode(noop(c))
        assert.is_nil(r[1])
        assert.equal("connection refused", r[2])
        assert.equal("connect", r[3].stage)
      end)
  end)

  it("an upstream that never greets: nil, 'timeout', stage greeting; the server goes on", function()
    local l = assert(socket.bind("127.0.0.1", 0))
    local _, port = l:getsockname()
    with_client({ host = "127.0.0.1", port = tonumber(port), from = "a@b", to = { "c@d" }, data = "x",
      timeouts = { command = 0.5 } }, function(_, c)
      local r = decode(noop(c))
      assert.is_nil(r[1])
      assert.equal("timeout", r[2])
      assert.equal("greeting", r[3].stage)
      assert.equal("v1", noop(c, "ver"))
    end)
    l:close()
  end)

  it("SIZE: a message over the upstream's limit is refused before MAIL", function()
    upstream = up.start{ size = 100 }
    with_client(base{ data = ("x"):rep(300) .. "\r\n" }, function(_, c)
      local r = decode(noop(c))
      assert.is_nil(r[1])
      assert.equal("message too large for the server", r[2])
      assert.equal("mail", r[3].stage)
      c:cmd("NOOP ver")
      assert.equal(0, #up.events(upstream, "mail"))
    end)
  end)

  it("SIZE: a message within the limit is sent with SIZE=n", function()
    upstream = up.start{ size = 1000 }
    local data = "Subject: s\r\n\r\nsmall\r\n"
    with_client(base{ data = data }, function(_, c)
      assert.equal(250, decode(noop(c))[1].code)
      assert.same({ "SIZE=" .. #data }, up.wait(upstream, "mail")[1].options)
    end)
  end)

  it("SMTPUTF8: refused with a clear error when the upstream lacks it, used when it has it", function()
    upstream = up.start()
    with_client(base{ to = { "j\195\184rgen@example.net" } }, function(_, c)
      local r = decode(noop(c))
      assert.equal("server lacks SMTPUTF8", r[2])
      assert.equal("mail", r[3].stage)
      assert.equal(0, #up.events(upstream, "mail"))
    end)
    up.stop(upstream)
    upstream = up.start{ smtputf8 = true }
    with_client(base{ to = { "j\195\184rgen@example.net" } }, function(_, c)
      assert.equal(250, decode(noop(c))[1].code)
      local mail = up.wait(upstream, "mail")[1]
      assert.truthy(table.concat(mail.options, " "):find("SMTPUTF8", 1, true))
      assert.same({ "j\195\184rgen@example.net" }, up.wait(upstream, "message")[1].rcpt_tos)
    end)
  end)

  it("8-bit content goes with BODY=8BITMIME (aiosmtpd offers it)", function()
    upstream = up.start()
    local data = "Subject: caf\195\169\r\n\r\nna\195\175ve\r\n"
    with_client(base{ data = data }, function(_, c)
      assert.equal(250, decode(noop(c))[1].code)
      assert.same({ "BODY=8BITMIME" }, up.wait(upstream, "mail")[1].options)
      assert.equal(data, up.wait(upstream, "message")[1].data)
    end)
  end)

  it("AUTH PLAIN and LOGIN; a wrong password is nil, 'auth failed', stage auth, 535", function()
    upstream = up.start{ auth = "relay:s3cret" }
    with_client(base{ auth = { user = "relay", password = "s3cret" } }, function(srv, c)
      assert.equal(250, decode(noop(c))[1].code)
      local ev = up.wait(upstream, "auth")[1]
      assert.equal("PLAIN", ev.mechanism)
      assert.is_true(ev.ok)
      assert.is_true(up.wait(upstream, "message")[1].auth)
      assert.is_nil(srv:stderr():find("s3cret", 1, true))
    end)
    with_client(base{ auth = { user = "relay", password = "s3cret", mechanism = "LOGIN" } }, function(_, c)
      assert.equal(250, decode(noop(c))[1].code)
      assert.equal("LOGIN", up.wait(upstream, "auth", 2)[2].mechanism)
    end)
    with_client(base{ auth = { user = "relay", password = "wrong" } }, function(srv, c)
      local r = decode(noop(c))
      assert.is_nil(r[1])
      assert.equal("auth failed", r[2])
      assert.equal("auth", r[3].stage)
      assert.equal(535, r[3].code)
      assert.equal(2, #up.events(upstream, "message"))
      assert.is_nil(srv:stderr():find("wrong", 1, true))
    end)
  end)

  describe("STARTTLS", function()
    local certs
    setup(function() certs = up.certs() end)
    teardown(function() if certs then os.execute("rm -rf '" .. certs.dir .. "'") end end)

    it("required, verified against cafile: delivered over TLS", function()
      upstream = up.start{ tls = certs }
      with_client(base{ host = "localhost", starttls = "required", tls = { cafile = certs.ca } }, function(_, c)
        local r = decode(noop(c))
        assert.equal(250, r[1] and r[1].code, tostring(r[2]))
        assert.is_true(up.wait(upstream, "message")[1].tls)
        local ehlos = up.events(upstream, "ehlo")
        assert.equal(2, #ehlos)
        assert.is_false(ehlos[1].tls)
        assert.is_true(ehlos[2].tls)
      end)
    end)

    it("required, and the certificate does not verify: an error before MAIL", function()
      upstream = up.start{ tls = certs }
      with_client(base{ host = "localhost", starttls = "required" }, function(_, c)
        local r = decode(noop(c))
        assert.is_nil(r[1])
        assert.truthy(r[2]:find("^certificate verify failed"), r[2])
        assert.equal("starttls", r[3].stage)
        c:cmd("NOOP ver")
        assert.equal(0, #up.events(upstream, "mail"))
      end)
    end)

    it("required, and the upstream offers no STARTTLS: 'starttls not offered' before MAIL", function()
      upstream = up.start()
      with_client(base{ starttls = "required" }, function(_, c)
        local r = decode(noop(c))
        assert.equal("starttls not offered", r[2])
        assert.equal("starttls", r[3].stage)
        assert.equal(0, #up.events(upstream, "mail"))
      end)
    end)

    it("opportunistic: a certificate that does not verify is logged and used", function()
      upstream = up.start{ tls = certs }
      with_client(base{ host = "localhost" }, function(srv, c)
        local r = decode(noop(c))
        assert.equal(250, r[1] and r[1].code, tostring(r[2]))
        assert.is_true(up.wait(upstream, "message")[1].tls)
        hu.wait_log(srv, "using TLS without verification (starttls = opportunistic)")
      end)
    end)

    it("opportunistic without STARTTLS offered: plaintext; false never tries", function()
      upstream = up.start()
      with_client(base(), function(_, c)
        assert.equal(250, decode(noop(c))[1].code)
        assert.is_false(up.wait(upstream, "message")[1].tls)
      end)
      up.stop(upstream)
      upstream = up.start{ tls = certs }
      with_client(base{ starttls = false }, function(_, c)
        assert.equal(250, decode(noop(c))[1].code)
        assert.is_false(up.wait(upstream, "message")[1].tls)
        assert.equal(1, #up.events(upstream, "ehlo"))
      end)
    end)
  end)

  it("keepalive: the next message reuses the connection (one EHLO for two messages)", function()
    upstream = up.start()
    with_client(base(), function(_, c)
      local r = decode(noop(c, "twice"))
      assert.equal(250, r[1][1].code)
      assert.equal(250, r[2][1].code)
      up.wait(upstream, "message", 2)
      assert.equal(1, #up.events(upstream, "ehlo"))
    end)
  end)

  it("connect{}: ehlo, mail, rcpt, data, setkeepalive (after RSET), reuse, rset, quit", function()
    upstream = up.start{ size = 5000 }
    with_client(base(), function(_, c)
      local r = decode(noop(c, "steps"))
      assert.equal(0, r.reused)
      assert.equal("5000", r.ext.SIZE)
      assert.same({ n = 2, 250, "OK" }, r.mail)
      assert.same({ n = 2, 250, "OK" }, r.rcpt)
      assert.same({ n = 2, 250, "2.0.0 Ok: queued as UP1" }, r.data)
      assert.same({ n = 1, true }, r.keep)
      assert.equal(1, r.reused2)
      assert.equal(250, r.rset[1])
      assert.equal(221, r.quit[1])
      assert.equal(1, #up.events(upstream, "ehlo"))
    end)
  end)

  it("delivers to a UNIX socket path", function()
    upstream = up.start{ unix = true }
    with_client({ path = upstream.path, from = "a@example.org", to = { "b@example.net" }, data = "x\r\n" },
      function(_, c)
        assert.equal(250, decode(noop(c))[1].code)
        assert.equal("x\r\n", up.wait(upstream, "message")[1].data)
      end)
  end)

  it("LMTP: LHLO, and one reply per recipient after DATA", function()
    upstream = up.start{ lmtp = true, lmtp_fail = "full", refuse = "nobody" }
    with_client(base{ lmtp = true, to = { "a@example.net", "full@example.net", "nobody@example.net" },
      data = MESSAGE }, function(_, c)
      local res = decode(noop(c))[1]
      assert.equal(250, res.code)
      assert.same({ "a@example.net", "full@example.net" }, res.accepted)
      assert.same({ ["nobody@example.net"] = { 550, "5.1.1 <nobody@example.net> User unknown" } }, res.rejected)
      assert.same({ 250, "2.0.0 <a@example.net> delivered" }, res.lmtp["a@example.net"])
      assert.same({ 452, "4.2.2 <full@example.net> Mailbox full" }, res.lmtp["full@example.net"])
      assert.equal(MESSAGE .. "\r\n", up.wait(upstream, "message")[1].data)
      assert.equal(1, #up.events(upstream, "lhlo"))
    end)
  end)

  it("LMTP over a UNIX socket; every recipient failing at DATA is 'data refused'", function()
    upstream = up.start{ lmtp = true, lmtp_fail = "full", unix = true }
    with_client({ path = upstream.path, lmtp = true, from = "a@b.example", to = { "full@example.net" },
      data = "x\r\n" }, function(_, c)
      local r = decode(noop(c))
      assert.is_nil(r[1])
      assert.equal("data refused", r[2])
      assert.equal(452, r[3].code)
      assert.same({ 452, "4.2.2 <full@example.net> Mailbox full" }, r[3].lmtp["full@example.net"])
    end)
  end)

  it("luasmtpd as the upstream: 10,000 sends over pooled connections, fds and RSS flat", function()
    local sink = testing.start{ source = "function handle_DATA() return '250 2.0.0 stored' end" }
    local ok, err = pcall(function()
      with_client({ host = "127.0.0.1", port = sink.port, from = "a@example.org", to = { "b@example.net" },
        data = "Subject: x\r\n\r\ny\r\n" }, function(srv, c)
        assert.equal("looped 500", noop(c, "loop 500", 60))
        collectgarbage()
        local fd_before, rss_before = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
        for _ = 1, 19 do assert.equal("looped 500", noop(c, "loop 500", 60)) end
        local fd_after, rss_after = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
        assert(fd_after <= fd_before + 1, ("fds %d before, %d after"):format(fd_before, fd_after))
        assert(hu.sanitized(srv.pid) or rss_after - rss_before < 4096,
          ("VmRSS %d KiB before, %d KiB after"):format(rss_before, rss_after))
      end)
    end)
    sink:stop()
    if not ok then error(err, 0) end
  end)
end)

-- A TCP upstream the spec plays by hand, so that a hook is known to wait on
-- it (the connection has been accepted and nothing answered yet).
local function hand_upstream()
  local l = assert(socket.bind("127.0.0.1", 0))
  local _, port = l:getsockname()
  l:settimeout(10)
  return l, tonumber(port)
end

local function play(conn, lines)
  conn:settimeout(10)
  for _, step in ipairs(lines) do
    if step.send then assert(conn:send(step.send)) end
    if step.expect then
      local line = assert(conn:receive("*l"))
      assert.truthy(line:find(step.expect), line)
    end
  end
end

local SMTP_SESSION = {
  { send = "220 hand.test ESMTP\r\n" }, { expect = "^EHLO" }, { send = "250 hand.test\r\n" },
  { expect = "^MAIL FROM:<a@example.org>" }, { send = "250 OK\r\n" },
  { expect = "^RCPT TO:<b@example.net>" }, { send = "250 OK\r\n" },
  { expect = "^DATA" }, { send = "354 go\r\n" }, { expect = "^x$" }, { expect = "^%.$" },
  { send = "250 2.0.0 queued by hand\r\n" }, { expect = "^QUIT" }, { send = "221 bye\r\n" },
}

describe("smtpd.client waiting in hooks", function()
  local function opts(port)
    return { host = "127.0.0.1", port = port, from = "a@example.org", to = { "b@example.net" }, data = "x\r\n" }
  end

  it("serves another client while a hook waits on the upstream", function()
    local l, port = hand_upstream()
    with_client(opts(port), function(srv, a)
      assert(a:send("NOOP send\r\n"))
      local conn = assert(l:accept())
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP ver")))
      b:close()
      assert.is_nil((a:reply(0.05)), "the waiting hook answered before the upstream did")
      play(conn, SMTP_SESSION)
      local code, text = a:reply(10)
      assert.equal(250, code)
      assert.equal(250, decode(text)[1].code)
      assert.equal("2.0.0 queued by hand", decode(text)[1].message)
      conn:close()
    end)
    l:close()
  end)

  it("a pooled connection that turns out dead at MAIL: the message goes on a new one", function()
    local l, port = hand_upstream()
    with_client(opts(port), function(_, a)
      assert(a:send("NOOP twice\r\n"))
      local session = {}
      for i = 1, 12 do session[i] = SMTP_SESSION[i] end -- up to the 250 after the message
      session[#session + 1] = { expect = "^RSET" }
      session[#session + 1] = { send = "250 OK\r\n" }
      local conn1 = assert(l:accept())
      play(conn1, session)
      -- The second message takes conn1 from the pool: it dies at MAIL.
      play(conn1, { { expect = "^MAIL FROM:<a@example.org>" } })
      conn1:close()
      local conn2 = assert(l:accept())
      play(conn2, session)
      local code, text = a:reply(10)
      assert.equal(250, code)
      local r = decode(text)
      assert.equal(250, r[1][1].code)
      assert.equal(250, r[2][1].code, tostring(r[2][2]))
      conn2:close()
    end)
    l:close()
  end)

  it("a client that disconnects mid-send: the upstream connection is closed", function()
    local l, port = hand_upstream()
    with_client(opts(port), function(srv, a)
      assert(a:send("NOOP send\r\n"))
      local conn = assert(l:accept())
      play(conn, { { send = "220 hand.test\r\n" }, { expect = "^EHLO" } })
      a:close()
      hu.wait_log(srv, "abandoning suspended hook handle_NOOP")
      conn:settimeout(10)
      local line, err = conn:receive("*l")
      assert.is_nil(line)
      assert.equal("closed", err)
      conn:close()
    end)
    l:close()
  end)

  it("hook_timeout mid-send fails the command with 451 and closes the upstream connection", function()
    local l, port = hand_upstream()
    with_client(opts(port), function(srv, a)
      assert(a:send("NOOP send\r\n"))
      local conn = assert(l:accept())
      play(conn, { { send = "220 hand.test\r\n" }, { expect = "^EHLO" } })
      local code = a:reply(15)
      assert.equal(451, code)
      hu.wait_log(srv, "handle_NOOP still waiting for sock:receive after hook_timeout (2 s)")
      conn:settimeout(10)
      assert.equal("closed", select(2, conn:receive("*l")))
      conn:close()
    end, 2)
    l:close()
  end)

  it("hook_timeout while the authenticator sends is 454", function()
    local l, port = hand_upstream()
    local src = source(opts(port), 2) .. [[
function authenticator(server, session, envelope, mechanism, auth_data)
  client.send(OPTS)
  return smtpd.AuthResult{ success = true }
end
]]
    hu.with_server({ source = src }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert(c:send("AUTH PLAIN " .. testing.b64("\0u\0p") .. "\r\n"))
      local conn = assert(l:accept())
      local code = c:reply(15)
      assert.equal(454, code)
      conn:settimeout(10)
      assert.equal("closed", select(2, conn:receive("*l")))
      conn:close()
      c:close()
    end)
    l:close()
  end)

  it("a send in progress when SIGHUP arrives completes on its generation", function()
    local l, port = hand_upstream()
    local src = source(opts(port))
    local srv = u.start{ source = src }
    local ok, err = pcall(function()
      local a = srv:connect()
      assert(a:send("NOOP send\r\n"))
      local conn = assert(l:accept())
      play(conn, { { send = "220 hand.test\r\n" }, { expect = "^EHLO" } })
      u.write_file(srv.script, (src:gsub('local VERSION = "v1"', 'local VERSION = "v2"', 1)))
      srv:signal("HUP")
      u.wait_log(srv, "loaded (policy generation 2)")
      local rest = {}
      for i = 3, #SMTP_SESSION do rest[#rest + 1] = SMTP_SESSION[i] end
      play(conn, rest)
      local code, text = a:reply(10)
      assert.equal(250, code)
      assert.truthy(text:find("^v1 "), text)
      assert.equal(250, decode(text)[1].code)
      a:close()
      conn:close()
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP ver")))
      b:close()
    end)
    u.stop(srv)
    l:close()
    if not ok then error(err, 0) end
  end)

  it("cannot send at the script's top level: the load fails with a readable error", function()
    local status, out = testing.check{ source = 'require("smtpd.client").send{ host = "127.0.0.1", port = 9, ' ..
      'from = "a@b", to = {"c@d"}, data = "x" }\n' }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("cannot wait while the script loads", 1, true), out)
  end)
end)
