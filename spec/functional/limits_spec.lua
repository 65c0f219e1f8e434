-- Limits on what a client controls (issue 6), against the real binary:
-- connections in total and per address, the per-command deadline
-- (slowloris), the idle timeout, the minimum DATA rate, recipients per
-- message, errors per session, the output high-water mark (a client that
-- never reads) and running out of descriptors in accept(). Each limit is
-- shown with its exact reply, and the server is shown to keep serving other
-- clients afterwards.
--
-- Small option values (command_timeout = 1, data_rate_grace = 1) keep the
-- spec fast. Every wait is bounded; where a client is made deliberately
-- slow, its pauses are reads that must time out (nothing may arrive early),
-- not sleeps.
local h = require "spec.functional.common"
local hu = require "spec.functional.hostile_util"
local socket = require "socket"

local TOO_MANY = "421 4.3.2 mx.test Error: too many connections, try again later"
local function too_many_from(ip) return "421 4.7.0 mx.test Error: too many connections from " .. ip end
local TIMEOUT = "421 4.4.2 mx.test Error: timeout exceeded"
local TOO_MANY_RCPT = "452 4.5.3 Error: too many recipients"
local TOO_MANY_ERRORS = "421 4.7.0 mx.test Error: too many errors"
local BARE = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings"
local SEND_HELO = "503 Error: send HELO first"

local with_server = hu.with_server

-- A testing client's full session: EHLO, MAIL, RCPT, DATA, QUIT.
local function full_session(c, name)
  assert.are.equal(250, (c:cmd("EHLO " .. name .. ".test")))
  assert.are.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
  assert.are.equal(250, (c:cmd("RCPT TO:<b@example.org>")))
  assert.are.equal(250, (c:data("Subject: " .. name .. "\n\nhello\n")))
  assert.are.equal(221, (c:cmd("QUIT")))
end

local function assert_closed(c, what)
  assert(c:is_closed(5), (what or "connection") .. ": the server did not close it")
end

-- ---------------------------------------------------------------------------

describe("max_connections", function()
  it("refuses a connection over the total with 421 4.3.2 from any address, and serves again once a slot frees",
    function()
      with_server({ options = { max_connections = 2 } }, function(srv)
        local a, b = srv:connect(), srv:connect()
        local c, line = hu.connect_greeted(srv.host, srv.port)
        assert(c, line)
        assert.are.equal(TOO_MANY, line)
        assert_closed(c, "the third connection")
        -- The total counts every address: another one is refused too.
        local d, dline = hu.connect_greeted(srv.host, srv.port, { bind = "127.0.0.2" })
        assert(d, dline)
        assert.are.equal(TOO_MANY, dline)
        assert_closed(d, "the connection from 127.0.0.2")
        -- The sessions already open go on.
        assert.are.equal(250, (b:cmd("NOOP")))
        assert.are.equal(221, (a:cmd("QUIT")))
        a:close()
        local e = hu.connect_until_greeted(srv.host, srv.port, nil, 10, hu.log_tail(srv))
        assert.are.equal(250, (e:cmd("EHLO e.test")))
        e:close()
        b:close()
      end)
    end)

  it("the default allows 1000 sessions and refuses the 1001st", function()
    local limit = tonumber(hu.sh("ulimit -n"):match("%d+"))
    if limit and limit < 1200 then
      pending("needs 1200 descriptors in this process (ulimit -n is " .. limit .. ")")
      return
    end
    with_server({}, function(srv)
      local held = {}
      local ok, err = pcall(function()
        -- 10 addresses x 100 stays under the per-address default.
        for i = 1, 1000 do
          local ip = "127.0.0." .. tostring(math.floor((i - 1) / 100) + 1)
          local c, line = hu.connect_greeted(srv.host, srv.port, { bind = ip })
          assert(c, line)
          held[#held + 1] = c
          assert(line:match("^220 "), ("connection %d from %s: %s"):format(i, ip, line))
        end
        local c, line = hu.connect_greeted(srv.host, srv.port, { bind = "127.0.0.11" })
        assert(c, line)
        assert.are.equal(TOO_MANY, line)
        assert_closed(c)
      end)
      for _, c in ipairs(held) do c:close() end
      if not ok then error(err, 0) end
      local e = hu.connect_until_greeted(srv.host, srv.port, nil, 10, hu.log_tail(srv))
      assert.are.equal(250, (e:cmd("NOOP")))
      e:close()
    end)
  end)
end)

describe("max_connections_per_ip", function()
  it("refuses a third connection from one address with 421 4.7.0 naming it; other addresses are served",
    function()
      with_server({ options = { max_connections_per_ip = 2 } }, function(srv)
        local a, b = srv:connect(), srv:connect()
        local c, line = hu.connect_greeted(srv.host, srv.port)
        assert(c, line)
        assert.are.equal(too_many_from("127.0.0.1"), line)
        assert_closed(c)
        -- Another address has its own budget.
        local d, dline = hu.connect_greeted(srv.host, srv.port, { bind = "127.0.0.2" })
        assert(d, dline)
        assert.matches("^220 ", dline)
        assert.are.equal(250, (d:cmd("EHLO d.test")))
        local e, eline = hu.connect_greeted(srv.host, srv.port, { bind = "127.0.0.2" })
        assert(e, eline)
        assert.matches("^220 ", eline)
        local f, fline = hu.connect_greeted(srv.host, srv.port, { bind = "127.0.0.2" })
        assert(f, fline)
        assert.are.equal(too_many_from("127.0.0.2"), fline)
        assert_closed(f)
        -- The open sessions go on; a freed slot is usable again.
        full_session(b, "b")
        b:close()
        local g = hu.connect_until_greeted(srv.host, srv.port, nil, 10, hu.log_tail(srv))
        assert.are.equal(250, (g:cmd("NOOP")))
        for _, x in ipairs{ a, d, e, g } do x:close() end
      end)
    end)

  it("the default allows 100 sessions per address", function()
    with_server({}, function(srv)
      local held = {}
      local ok, err = pcall(function()
        for i = 1, 100 do
          local c, line = hu.connect_greeted(srv.host, srv.port)
          assert(c, line)
          held[#held + 1] = c
          assert(line:match("^220 "), ("connection %d: %s"):format(i, line))
        end
        local c, line = hu.connect_greeted(srv.host, srv.port)
        assert(c, line)
        assert.are.equal(too_many_from("127.0.0.1"), line)
        assert_closed(c)
        local d, dline = hu.connect_greeted(srv.host, srv.port, { bind = "127.0.0.2" })
        assert(d, dline)
        assert.matches("^220 ", dline)
        d:close()
      end)
      for _, c in ipairs(held) do c:close() end
      if not ok then error(err, 0) end
    end)
  end)
end)

-- ---------------------------------------------------------------------------

describe("command_timeout (slowloris)", function()
  it("a command line trickled a byte at a time is cut with 421 4.4.2 after command_timeout; others are served",
    function()
      with_server({ options = { command_timeout = 1, timeout = 30 } }, function(srv)
        local a, b = srv:connect(), srv:connect()
        local payload = "NOOP " .. ("x"):rep(400)
        local start = socket.gettime()
        local code, lines, sent
        for i = 1, #payload do
          assert(a:send(payload:sub(i, i)))
          sent = i
          -- The pause between bytes is a read that must find nothing yet.
          local _
          code, _, lines = a:reply(0.2)
          if code or socket.gettime() - start > 10 then break end
          if i == 3 then
            -- The trickling client holds nothing up.
            assert.are.equal(250, (b:cmd("NOOP")))
          end
        end
        assert.are.equal(421, code, "no 421 within 10 s of trickling")
        assert.are.same({ TIMEOUT }, lines)
        assert_closed(a, "the trickling client")
        -- Bytes kept coming and did not extend the deadline.
        assert(sent >= 4, "cut after only " .. tostring(sent) .. " bytes")
        full_session(b, "b")
        local c = srv:connect()
        full_session(c, "c")
      end)
    end)

  it("is per line: complete commands sent slowly are not cut", function()
    with_server({ options = { command_timeout = 1, timeout = 30 } }, function(srv)
      local a = srv:connect()
      local start = socket.gettime()
      local n = 0
      -- Each line takes ~0.4 s; together they outlast command_timeout.
      while socket.gettime() - start < 1.6 do
        assert(a:send("NO"))
        local code, text = a:reply(0.4)
        assert.is_nil(code, "a reply to half a command line: " .. tostring(text))
        assert.are.equal("timeout", text)
        assert.are.equal(250, (a:cmd("OP")))
        n = n + 1
      end
      assert(n >= 3, "only " .. n .. " commands")
      full_session(a, "a")
    end)
  end)
end)

describe("timeout (idle)", function()
  it("an idle client gets 421 4.4.2 and is closed; others are served", function()
    with_server({ options = { timeout = 1 } }, function(srv)
      local a = srv:connect()
      local code, _, lines = a:reply(10)
      assert.are.equal(421, code)
      assert.are.same({ TIMEOUT }, lines)
      assert_closed(a)
      local b = srv:connect()
      assert.are.equal(250, (b:cmd("EHLO b.test")))
      b:close()
    end)
  end)
end)

-- ---------------------------------------------------------------------------

describe("data_rate_min", function()
  local open_data = hu.open_data

  it("a DATA transfer slower than data_rate_min is cut with 421 4.4.2 after data_rate_grace; a fast one is not",
    function()
      with_server({ options = { data_rate_min = 50000, data_rate_grace = 1, timeout = 30 } }, function(srv)
        local a = srv:connect()
        open_data(a, "slow")
        local start = socket.gettime()
        local code, lines, sent = nil, nil, 0
        while socket.gettime() - start < 10 do
          assert(a:send("slow line\r\n"))
          sent = sent + 11
          local _
          code, _, lines = a:reply(0.1)
          if code then break end
        end
        local elapsed = socket.gettime() - start
        assert.are.equal(421, code, "the slow DATA was not cut within 10 s")
        assert.are.same({ TIMEOUT }, lines)
        assert_closed(a, "the slow sender")
        -- The grace period is honoured (a generous margin: this is not a benchmark).
        assert(elapsed >= 0.9, ("cut after %.2f s, before data_rate_grace (1 s)"):format(elapsed))
        assert(sent > 0)

        -- A sender well above the rate, whose transfer outlasts the grace.
        local b = srv:connect()
        open_data(b, "fast")
        local chunk = (("y"):rep(98) .. "\r\n"):rep(1000) -- 100 kB
        local t0 = socket.gettime()
        local chunks = 0
        while socket.gettime() - t0 < 1.6 do
          assert(b:send(chunk))
          chunks = chunks + 1
          local c2, text = b:reply(0.2)
          assert.is_nil(c2, "a fast sender got a reply in DATA: " .. tostring(text))
        end
        assert(b:send(".\r\n"))
        local final, text = b:reply()
        assert.are.equal(250, final, text)
        assert(chunks >= 4)
        assert.are.equal(250, (b:cmd("NOOP")))
        b:close()
      end)
    end)
end)

-- ---------------------------------------------------------------------------

local COUNT_RCPTS = [[
function handle_DATA(server, session, envelope)
  return "250 OK " .. #envelope.rcpt_tos .. " recipients"
end
]]

local function rcpts(n, first)
  local steps = {}
  for i = first or 1, n do steps[#steps + 1] = { "RCPT TO:<r" .. i .. "@example.org>", "250 OK" } end
  return steps
end

describe("rcpt_limit", function()
  h.run{
    { name = "refuses recipients over rcpt_limit with 452 4.5.3, per message; the message keeps the first ones",
      source = COUNT_RCPTS, options = { rcpt_limit = 3 },
      dialogue = h.steps(
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        rcpts(3),
        { "RCPT TO:<r4@example.org>", TOO_MANY_RCPT },
        { "RCPT TO:<r5@example.org>", TOO_MANY_RCPT },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "Subject: x\r\n\r\nhi\r\n.\r\n", expect = "250 OK 3 recipients" },
        -- A new message has its own budget.
        { "MAIL FROM:<a@example.org>", "250 OK" },
        rcpts(3),
        { "RCPT TO:<r4@example.org>", TOO_MANY_RCPT },
        -- RSET starts over too.
        { "RSET", "250 OK" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        rcpts(3),
        { "RCPT TO:<r4@example.org>", TOO_MANY_RCPT },
        { conn = "b", "EHLO b.test", match = "^250" },
        { conn = "b", "MAIL FROM:<a@example.org>", "250 OK" },
        { conn = "b", "RCPT TO:<r@example.org>", "250 OK" },
        { conn = "b", "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { conn = "b", send = "hi\r\n.\r\n", expect = "250 OK 1 recipients" }) },

    { name = "the default is 100 recipients: the 101st gets 452 4.5.3",
      source = COUNT_RCPTS,
      dialogue = h.steps(
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        rcpts(100),
        { "RCPT TO:<r101@example.org>", TOO_MANY_RCPT },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "hi\r\n.\r\n", expect = "250 OK 100 recipients" }) },
  }
end)

-- ---------------------------------------------------------------------------

local ERRORS = [[
local smtpd = require "smtpd"
function handle_NOOP(server, session, envelope, arg)
  if arg == "fail" then return "451 4.3.0 try later" end
  return "250 OK"
end
function authenticator(server, session, envelope, mechanism, auth_data)
  return false
end
function auth_WAIT(server, args)
  local r = server:challenge_auth("waiting")
  if r == nil then return nil end
  return false
end
]]

describe("error_limit", function()
  local default_errors = {}
  for i = 1, 19 do default_errors[i] = { "MAIL FROM:<a@example.org>", SEND_HELO } end

  h.run{
    { name = "the default: the 20th error reply is followed by 421 4.7.0 and the close",
      dialogue = h.steps(
        default_errors,
        { "MAIL FROM:<a@example.org>", SEND_HELO },
        { expect = TOO_MANY_ERRORS, closed = true },
        { conn = "b", "EHLO b.test", match = "^250" }) },

    { name = "counts 4xx and 5xx replies over the whole session, not only in a row",
      source = ERRORS, options = { error_limit = 3 },
      dialogue = {
        { "MAIL FROM:<a@example.org>", SEND_HELO },
        { "NOOP", "250 OK" },
        { "EHLO a.test", match = "^250" },
        { "NOOP fail", "451 4.3.0 try later" },
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        { send = "hi\r\n.\r\n", expect = "250 OK" },
        { "RCPT TO:<b@example.org>", "503 Error: need MAIL command" },
        { expect = TOO_MANY_ERRORS, closed = true },
        { conn = "b", "NOOP", "250 OK" },
      } },

    { name = "an error at the end of DATA reaching the limit closes at once, before another command runs",
      source = ERRORS, options = { error_limit = 2, rcpt_limit = 1 },
      dialogue = {
        h.ehlo,
        { "MAIL FROM:<a@example.org>", "250 OK" },
        { "RCPT TO:<b@example.org>", "250 OK" },
        { "RCPT TO:<c@example.org>", TOO_MANY_RCPT },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" },
        -- The bare LF is refused at the final dot: the second error. The
        -- NOOP is in the same write: it must not be answered.
        { send = "a\nb\r\n.\r\nNOOP\r\n", expect = BARE },
        { expect = TOO_MANY_ERRORS, closed = true },
        { conn = "b", "NOOP", "250 OK" },
      } },

    { name = "a command line over 12,288 octets (discarded unread) reaching the limit closes at once",
      options = { error_limit = 2 },
      dialogue = {
        { send = ("X"):rep(600) .. "\r\n" .. ("Y"):rep(13000) .. "\r\nNOOP\r\n",
          expect = "500 Command line too long" },
        { expect = "500 Command line too long" },
        { expect = TOO_MANY_ERRORS, closed = true },
        { conn = "b", "NOOP", "250 OK" },
      } },

    { name = "an error at the end of an AUTH exchange reaching the limit closes at once",
      source = ERRORS, options = { error_limit = 2, auth_require_tls = false, auth_failure_limit = 0 },
      dialogue = {
        h.ehlo,
        { "AUTH WAIT", "334 " .. h.b64("waiting") },
        { h.b64("no"), h.AUTH_INVALID },
        { "AUTH WAIT", "334 " .. h.b64("waiting") },
        { send = h.b64("no") .. "\r\nNOOP\r\n", expect = h.AUTH_INVALID },
        { expect = TOO_MANY_ERRORS, closed = true },
        { conn = "b", "NOOP", "250 OK" },
      } },
  }
end)

-- ---------------------------------------------------------------------------

describe("output high-water mark", function()
  -- Each NOOP (6 octets) is answered with a 3000-octet line carrying its
  -- number: 40,000 of them are 120 MB of replies, which a server without a
  -- high-water mark would have to hold for a client that does not read.
  local BIG_NOOP = [[
function handle_NOOP(server, session, envelope, arg)
  session.n = (session.n or 0) + 1
  return ("250 n=%d "):format(session.n) .. ("x"):rep(3000)
end
]]
  local N = 40000
  local RSS_BOUND_KIB = 64 * 1024

  it("a client pipelining 40,000 NOOPs without reading: the server stops reading it, RSS stays bounded, " ..
    "others are served, and every reply arrives in order once it reads", function()
    with_server({ source = BIG_NOOP }, function(srv)
      local rss0 = assert(hu.rss_kib(srv.pid))
      -- A small receive buffer: the kernel absorbs little, the server must hold back.
      local a = assert(hu.connect(srv.host, srv.port, { rcvbuf = 16384 }))
      local code, text = a:reply()
      assert.are.equal(220, code, text)
      local _, aport = a:local_addr()
      local data = ("NOOP\r\n"):rep(N)
      local i, last_progress, t0 = 1, socket.gettime(), socket.gettime()
      while i <= #data and socket.gettime() - last_progress < 1 and socket.gettime() - t0 < 10 do
        local ni, err = a:send_some(data, i)
        assert(not err, err)
        if ni > i then i, last_progress = ni, socket.gettime() end
        socket.select(nil, { a.sock }, 0.1)
      end

      -- The server stops taking a's input: its receive queue for a stays
      -- non-empty and unchanged while we watch, and its RSS stays bounded.
      local rss_max, same, last_rx = rss0, 0, nil
      hu.wait_until(function()
        rss_max = math.max(rss_max, hu.rss_kib(srv.pid) or 0)
        local _, rx = hu.tcp_queues(srv.port, aport)
        if rx and rx > 0 and rx == last_rx then same = same + 1 else same = 0 end
        last_rx = rx
        return same >= 10
      end, 15, "the server's receive queue for the non-reading client to stop moving",
        function() return ("rx queue %s, sent %d of %d"):format(tostring(last_rx), i - 1, #data) end)

      -- Another client is served meanwhile.
      local b = srv:connect()
      assert.are.equal(250, (b:cmd("EHLO b.test")))
      local bcode, btext = b:cmd("NOOP")
      assert.are.equal(250, bcode)
      assert.matches("^n=1 ", btext)
      rss_max = math.max(rss_max, hu.rss_kib(srv.pid) or 0)
      -- Under ASan freed replies sit in its quarantine: no RSS bound there.
      local check_rss = not hu.sanitized(srv.pid)
      assert(not check_rss or rss_max - rss0 < RSS_BOUND_KIB,
        ("RSS grew by %d KiB (bound %d KiB) for a client that does not read"):format(rss_max - rss0, RSS_BOUND_KIB))

      -- Now a reads: every reply comes, in order, and the rest of its
      -- commands are taken as the output drains.
      local want, carry = 1, ""
      local deadline = socket.gettime() + 60
      while want <= N and socket.gettime() < deadline do
        if i <= #data then
          local ni, err = a:send_some(data, i)
          assert(not err, err)
          i = ni
        end
        socket.select({ a.sock }, i <= #data and { a.sock } or nil, 0.5)
        local s, err = a:read_some(0)
        if s ~= "" then
          -- Whole lines are checked; an incomplete last line waits in carry.
          local buf = carry .. s
          local tail = buf:match(".*\r\n()") or 1
          for n in buf:sub(1, tail - 1):gmatch("250 n=(%d+) x+\r\n") do
            if tonumber(n) ~= want then
              error(("reply %d is numbered %s"):format(want, n))
            end
            want = want + 1
          end
          carry = buf:sub(tail)
        end
        if err == "closed" then break end
        rss_max = math.max(rss_max, hu.rss_kib(srv.pid) or 0)
      end
      assert.are.equal(N + 1, want, ("%d of %d replies arrived within 60 s (sent %d of %d octets)")
        :format(want - 1, N, i - 1, #data))
      assert(not check_rss or rss_max - rss0 < RSS_BOUND_KIB,
        ("RSS grew by %d KiB while draining"):format(rss_max - rss0))
      assert.are.equal(221, (select(1, a:cmd("QUIT"))))
      a:close()
      assert.are.equal(250, (b:cmd("NOOP")))
      b:close()
    end)
  end)
end)

-- ---------------------------------------------------------------------------

describe("out of descriptors", function()
  it("accept() failing with EMFILE pauses instead of spinning; queued clients are served once descriptors free",
    function()
      local dir = hu.tempdir()
      local wrapper = dir .. "/luasmtpd-nofile"
      hu.write_file(wrapper, "#!/bin/sh\nulimit -n 24 || exit 1\nexec " .. hu.shell_quote(hu.binary()) ..
        " \"$@\"\n")
      os.execute("chmod +x " .. hu.shell_quote(wrapper))
      local ok, err = pcall(with_server, { binary = wrapper }, function(srv)
        local held = {}
        for k = 1, 30 do held[k] = assert(hu.connect(srv.host, srv.port)) end
        -- Which ones the server accepted (it greets at once) and which wait.
        local greeted, waiting = {}, {}
        for _, c in ipairs(held) do
          local code = c:reply(0.3)
          if code == 220 then greeted[#greeted + 1] = c else waiting[#waiting + 1] = c end
        end
        assert(#greeted > 0, "no connection was accepted")
        assert(#waiting > 0, "every connection was accepted: the descriptor limit did not bite")

        -- While out of descriptors: paused, not spinning.
        hu.wait_log(srv, "pausing new connections", 1, 5)
        local cpu0, t0 = hu.cpu_ticks(srv.pid), socket.gettime()
        local n0 = hu.count(srv:stderr(), "pausing new connections")
        hu.wait_log(srv, "pausing new connections", n0 + 3, 10)
        local cpu1, t1 = hu.cpu_ticks(srv.pid), socket.gettime()
        local n1 = hu.count(srv:stderr(), "pausing new connections")
        local ticks = cpu1 - cpu0
        -- A spinning accept() loop burns ~100 ticks per second.
        assert(ticks <= (t1 - t0) * 30,
          ("%d clock ticks of CPU in %.2f s while out of descriptors"):format(ticks, t1 - t0))
        assert(n1 - n0 <= (t1 - t0) / 0.5 + 2,
          ("%d pauses logged in %.2f s"):format(n1 - n0, t1 - t0))

        -- Free the accepted ones: every waiting client is greeted.
        for _, c in ipairs(greeted) do c:close() end
        for k, c in ipairs(waiting) do
          local code, text = c:reply(10)
          assert.are.equal(220, code, ("waiting client %d: %s"):format(k, tostring(text)))
        end
        assert.are.equal(250, (waiting[1]:cmd("EHLO late.test")))
        for _, c in ipairs(waiting) do c:close() end
        local d = hu.connect_until_greeted(srv.host, srv.port, nil, 10, hu.log_tail(srv))
        assert.are.equal(250, (d:cmd("NOOP")))
        d:close()
      end)
      hu.rmdir(dir)
      if not ok then error(err, 0) end
    end)
end)
