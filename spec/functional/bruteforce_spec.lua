-- Brute-force defence for AUTH (mechanisms.md 3): the one failure log line
-- and the shipped fail2ban filter, tested with fail2ban-regex against the
-- server's real log output from IPv4 and IPv6 clients.
local socket = require "socket"
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"

local FILTER = "contrib/fail2ban/filter.d/luasmtpd.conf"
-- Penalties off where a case is not about them (testing.start's default).
local PENALTY_OFF = nil

-- alice / s3cret is the one valid login; penalties off unless a case asks.
local function source(opts)
  return "options = { auth_require_tls = false" .. (opts and (", " .. opts) or "") .. " }\n" .. h.ALICE
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Runs fail2ban-regex on text; returns its output and the Failregex total.
local function fail2ban_regex(text)
  local path = os.tmpname()
  write(path, text)
  local p = assert(io.popen("timeout 60 fail2ban-regex " .. path .. " " .. FILTER .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return out, tonumber(out:match("Failregex: (%d+) total"))
end

local function with_server(opts, fn)
  local srv = testing.start(opts)
  local ok, err = pcall(fn, srv)
  srv:stop()
  if not ok then error(err, 0) end
  return srv
end

local function failure_lines(text)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    if line:find("AUTH failed:", 1, true) then lines[#lines + 1] = line end
  end
  return lines
end

describe("AUTH failure log line", function()
  it("is one line per failure naming mechanism, client and login, never the password", function()
    local srv = with_server({ source = source(PENALTY_OFF) }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert.equal(535, (c:auth_plain("alice", "wrong-pw-1")))
      assert.equal(535, (c:auth_login('ev"il\n', "wrong-pw-2")))
      assert.equal(235, (c:auth_plain("alice", "s3cret")))
      c:close()
    end)
    local lines = failure_lines(srv:stderr())
    assert.equal(2, #lines)
    assert.truthy(lines[1]:find('%[s1%] AUTH failed: mechanism=PLAIN client=%[127%.0%.0%.1%] login="alice"$'))
    -- log escaping: control bytes as \n, a quote as \x22 (one end to the quoted login)
    assert.truthy(lines[2]:find('%[s1%] AUTH failed: mechanism=LOGIN client=%[127%.0%.0%.1%] login="ev\\x22il\\n"$'),
      lines[2])
    local err = srv:stderr()
    assert.is_nil(err:find("wrong-pw", 1, true))
    assert.is_nil(err:find("in this session", 1, true)) -- the old second line is gone
  end)

  it("has an empty login when the mechanism never got one (bad base64)", function()
    local srv = with_server({ source = source(PENALTY_OFF) }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert.equal(501, (c:cmd("AUTH PLAIN !!!")))
      c:close()
    end)
    local lines = failure_lines(srv:stderr())
    assert.equal(1, #lines)
    assert.truthy(lines[1]:find('AUTH failed: mechanism=PLAIN client=%[127%.0%.0%.1%] login=""$'))
  end)

  it("the shipped fail2ban filter matches real failures from IPv4 and IPv6 (fail2ban-regex)", function()
    local srv = with_server({ source = source(PENALTY_OFF), args = { "-l", "[::1]:0" } },
      function(srv)
        assert.equal("[::1]", srv.listeners[2]:match("^(%[.-%]):%d+$"))
        local h6, p6 = srv.listeners[2]:match("^%[(.-)%]:(%d+)$")
        local a = srv:connect()
        a:cmd("EHLO client.test")
        assert.equal(535, (a:auth_plain("alice", "nope")))
        assert.equal(535, (a:auth_login("bob", "nope")))
        a:close()
        local b = assert(testing.connect(h6, tonumber(p6)))
        b:cmd("EHLO client.test")
        assert.equal(535, (b:auth_plain("carol", "nope")))
        -- a success is not a failure line
        assert.equal(235, (b:auth_plain("alice", "s3cret")))
        b:close()
      end)
    local log = srv:stderr()
    assert.equal(3, #failure_lines(log))
    local out, total = fail2ban_regex(log)
    assert.equal(3, total, out)
    assert.truthy(out:find("127.0.0.1", 1, true) or out:find("Lines: %d+ lines"), out)
    -- which addresses: ask fail2ban-regex to print the matches
    local path = os.tmpname()
    write(path, log)
    local p = assert(io.popen("timeout 60 fail2ban-regex --print-all-matched " .. path .. " " .. FILTER .. " 2>&1"))
    local matched = p:read("*a")
    p:close()
    os.remove(path)
    local v4, v6 = 0, 0
    for line in matched:gmatch("[^\n]+") do
      if line:find("client=[127.0.0.1]", 1, true) then v4 = v4 + 1 end
      if line:find("client=[::1]", 1, true) then v6 = v6 + 1 end
    end
    assert.equal(2, v4, matched)
    assert.equal(1, v6, matched)
    -- and nothing else in the log matches (connection lines, the success)
    local _, only = fail2ban_regex(log:gsub("[^\n]*AUTH failed:[^\n]*\n", ""))
    assert.equal(0, only)
  end)
end)

-- Penalties at full scale: the first failure holds the next AUTH 2 s less
-- the (up to 1 s) pause before its 535, so at least 1 s remains for the
-- other client's exchange.
local PENALTY = { auth_fail_penalty = true, auth_fail_penalty_scale = 1 }

describe("auth_fail_penalty", function()
  it("holds the next AUTH of an address that failed; another client is answered meanwhile", function()
    local srv = with_server({ source = source(), options = PENALTY }, function(srv)
      local a = srv:connect()
      a:cmd("EHLO client.test")
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      assert(a:send("AUTH PLAIN " .. h.ALICE_PLAIN .. "\r\n"))
      u.wait_log(srv, "[s1] AUTH penalty: holding AUTH")
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP")))
      assert.is_nil((a:reply(0.05)), "the held AUTH answered before the other client")
      local code, text = a:reply(20)
      assert.equal(235, code, text)
      -- the success forgave the address: b's failure is the first again
      b:cmd("EHLO client.test")
      assert.equal(535, (b:auth_plain("alice", "wrong")))
      a:close()
      b:close()
    end)
    local err = srv:stderr()
    local held = {}
    for line in err:gmatch("[^\n]+") do
      if line:find("AUTH penalty: holding AUTH", 1, true) then held[#held + 1] = line end
    end
    assert.equal(1, #held, err)
    assert.truthy(held[1]:find("%[s1%] AUTH penalty: holding AUTH [%d.]+ s %(earlier failures from 127%.0%.0%.1%)$"))
    -- the log order: failure, hold, b's connection, then a's success
    local f = err:find("AUTH failed", 1, true)
    local p = err:find("AUTH penalty", 1, true)
    local c2 = err:find("[s2] connection from", 1, true)
    local ok = err:find("[s1] authenticated with PLAIN", 1, true)
    assert.truthy(f and p and c2 and ok, err)
    assert.truthy(f < p and p < c2 and c2 < ok, err)
  end)

  it("pipelined commands after a failed AUTH wait for its 535 and keep their order", function()
    with_server({ source = source(), options = PENALTY }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert(c:send("AUTH PLAIN " .. h.plain("alice", "wrong") .. "\r\nNOOP\r\nAUTH PLAIN "
        .. h.ALICE_PLAIN .. "\r\nNOOP\r\n"))
      local replies = {}
      for _ = 1, 4 do
        local code = c:reply(20)
        replies[#replies + 1] = code
      end
      assert.same({ 535, 250, 235, 250 }, replies)
      c:close()
    end)
  end)

  it("a client that disconnects while held leaves the server serving (the hold is cancelled)", function()
    local srv = with_server({ source = source(), options = PENALTY }, function(srv)
      local a = srv:connect()
      a:cmd("EHLO client.test")
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      assert(a:send("AUTH PLAIN " .. h.ALICE_PLAIN .. "\r\n"))
      u.wait_log(srv, "[s1] AUTH penalty: holding AUTH")
      local b = srv:connect()
      a:close()
      local deadline = socket.gettime() + 10
      while not srv:stderr():find("[s1] closed", 1, true) and socket.gettime() < deadline do
        assert.equal(250, (b:cmd("NOOP")))
      end
      -- past the penalty: nothing happens on the closed session
      assert.equal(250, (b:cmd("NOOP")))
      b:close()
    end)
    local err = srv:stderr()
    assert.truthy(err:find("[s1] AUTH penalty: holding AUTH", 1, true), err)
    assert.truthy(err:find("[s1] closed: client closed the connection", 1, true)
      or err:find("[s1] closed: connection lost", 1, true), err)
    assert.is_nil(err:find("[s1] authenticated", 1, true), err)
  end)

  it("auth_fail_penalty = false holds nothing", function()
    local srv = with_server({ source = source(), options = { auth_fail_penalty = false } }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      for _ = 1, 3 do assert.equal(535, (c:auth_plain("alice", "wrong"))) end
      assert.equal(235, (c:auth_plain("alice", "s3cret")))
      c:close()
    end)
    assert.is_nil(srv:stderr():find("AUTH penalty", 1, true))
  end)

  it("rejects a bad auth_fail_penalty_scale", function()
    local status, out = testing.check{ source = source(), args = { "-o", "auth_fail_penalty_scale=0" } }
    assert.is_not.equal(0, status)
    assert.truthy(out:find("option 'auth_fail_penalty_scale' must be a positive number", 1, true), out)
  end)
end)

local REFUSED = "454 4.7.0 Too many failed attempts, try again later"

-- alice / s3cret, and NOOP names the worker's pid.
local function limit_source(limit)
  return [[
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")
function handle_NOOP() return "250 pid " .. ffi.C.getpid() end
options = { auth_require_tls = false, auth_fail_limit_per_client = ]] .. limit .. [[ }
]] .. h.ALICE
end

local function pid_of(c)
  local code, text = c:cmd("NOOP")
  assert.equal(250, code)
  return tonumber(text:match("pid (%d+)$"))
end

-- The whole reply line of a command.
local function line_of(c, cmd)
  local _, _, lines = c:cmd(cmd)
  return lines[#lines]
end

describe("auth_fail_limit_per_client", function()
  it("past count failures, AUTH from the address gets 454 for the window, on every connection", function()
    local srv = with_server({ source = limit_source("{ count = 2, window = 600 }") }, function(srv)
      local a = srv:connect()
      a:cmd("EHLO client.test")
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      assert.equal(535, (a:auth_login("alice", "wrong")))
      -- right credentials, but the address spent its failures
      assert.equal(REFUSED, line_of(a, "AUTH PLAIN " .. h.ALICE_PLAIN))
      local b = srv:connect()
      b:cmd("EHLO client.test")
      assert.equal(REFUSED, line_of(b, "AUTH LOGIN"))
      assert.equal(250, (b:cmd("NOOP"))) -- the session goes on
      a:close()
      b:close()
    end)
    local err = srv:stderr()
    assert.equal(2, #failure_lines(err)) -- a refusal is no failure line (nor a new failure)
    local _, refusals = err:gsub(
      "AUTH refused: too many failed attempts from 127%.0%.0%.1 %(auth_fail_limit_per_client%)", "")
    assert.equal(2, refusals)
  end)

  it("the count ends with the window", function()
    with_server({ source = limit_source("{ count = 1, window = 0.5 }") }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert.equal(535, (c:auth_plain("alice", "wrong")))
      assert.equal(REFUSED, line_of(c, "AUTH PLAIN " .. h.ALICE_PLAIN))
      c:close()
      -- bounded: the 0.5 s window ends well within 10 s (a new connection
      -- each time: refusals count to error_limit)
      local deadline, last = socket.gettime() + 10
      repeat
        socket.sleep(0.05)
        local d = srv:connect()
        d:cmd("EHLO client.test")
        last = line_of(d, "AUTH PLAIN " .. h.ALICE_PLAIN)
        d:close()
      until last ~= REFUSED or socket.gettime() > deadline
      assert.equal(h.AUTH_OK, last)
    end)
  end)

  it("is one count for all workers (--workers 2)", function()
    local srv = with_server({ source = limit_source("{ count = 6, window = 600 }"),
      args = { "--workers", "2" } }, function(srv)
      -- one open connection on each worker
      local by_pid, conns = {}, {}
      for _ = 1, 200 do
        local c = srv:connect()
        local pid = pid_of(c)
        if by_pid[pid] then c:close() else
          by_pid[pid] = c
          conns[#conns + 1] = c
        end
        if #conns == 2 then break end
      end
      assert.equal(2, #conns, "connections never reached two workers")
      local a, b = conns[1], conns[2]
      a:cmd("EHLO client.test")
      b:cmd("EHLO client.test")
      -- three failures through each worker: neither saw six itself
      for _ = 1, 3 do
        assert.equal(535, (a:auth_plain("alice", "wrong")))
        assert.equal(535, (b:auth_plain("alice", "wrong")))
      end
      assert.equal(REFUSED, line_of(a, "AUTH PLAIN " .. h.ALICE_PLAIN))
      assert.equal(REFUSED, line_of(b, "AUTH PLAIN " .. h.ALICE_PLAIN))
      a:close()
      b:close()
    end)
    local lines = failure_lines(srv:stderr())
    assert.equal(6, #lines)
    local tags = {}
    for _, line in ipairs(lines) do
      local tag = line:match(" (w%d+) %[s%d+%] AUTH failed")
      tags[tag or "?"] = (tags[tag or "?"] or 0) + 1
    end
    assert.same({ w0 = 3, w1 = 3 }, tags)
    -- and fail2ban reads the worker-tagged lines too
    local out, total = fail2ban_regex(srv:stderr())
    assert.equal(6, total, out)
  end)

  it("rejects bad values with a readable message", function()
    for _, case in ipairs{
      { "count=0,window=600", "count must be a positive integer" },
      { "count=3,window=-1", "window must be a positive number of seconds" },
      { "count=3,size=1", "unknown field 'size' (count, window)" },
      { "lots", "must be false or a table { count = N, window = SECONDS }" },
    } do
      local status, out = testing.check{ source = source(), args = { "-o", "auth_fail_limit_per_client=" .. case[1] } }
      assert.is_not.equal(0, status)
      assert.truthy(out:find(case[2], 1, true), out)
    end
    local status, out = testing.check{ source = "options = { auth_fail_limit_per_client = { count = 1.5 } }\n" }
    assert.is_not.equal(0, status)
    assert.truthy(out:find("count must be a positive integer", 1, true), out)
  end)
end)

describe("auth_fail_penalty holds and the session's life", function()
  local hu = require "spec.functional.hostile_util"

  it("a reload (SIGHUP) during a hold: the held AUTH completes on its old generation", function()
    local srv = u.start{ source = source(), options = PENALTY }
    local ok, err = pcall(function()
      local a = srv:connect()
      a:cmd("EHLO client.test")
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      assert(a:send("AUTH PLAIN " .. h.ALICE_PLAIN .. "\r\n"))
      u.wait_log(srv, "[s1] AUTH penalty: holding AUTH")
      -- generation 2 accepts nobody
      u.reload(srv, "options = { auth_require_tls = false }\n"
        .. "function authenticator() return false end\n", 2)
      assert.is_nil((a:reply(0.05)), "the held AUTH answered before the reload finished")
      local code, text = a:reply(20)
      assert.equal(235, code, text)
      a:close()
      local b = srv:connect()
      b:cmd("EHLO client.test")
      assert.equal(535, (b:auth_plain("alice", "s3cret"))) -- a new session: generation 2
      b:close()
    end)
    u.stop(srv)
    if not ok then error(err, 0) end
  end)

  it("SIGTERM during a hold: the held AUTH is answered, then 421, and the server stops", function()
    local srv = testing.start{ source = source(), options = PENALTY }
    local ok, err = pcall(function()
      local a = srv:connect()
      a:cmd("EHLO client.test")
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      assert(a:send("AUTH PLAIN " .. h.ALICE_PLAIN .. "\r\nNOOP\r\n"))
      u.wait_log(srv, "[s1] AUTH penalty: holding AUTH")
      srv:signal("TERM")
      u.wait_log(srv, "SIGTERM received")
      assert.equal(235, (a:reply(20)))
      local code, text = a:reply(20)
      assert.equal(421, code)
      assert.equal("4.3.2 mx.test Error: server shutting down, try again later", text)
      a:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("descriptors and RSS stay flat over thousands of holds (pause, penalty, 421 after a held 535)", function()
    -- 0.0001: the holds are sub-millisecond timers; each session fails five
    -- times (auth_failure_limit), the fifth 535 held, then 421 and close
    local srv = testing.start{ source = source(),
      options = { auth_fail_penalty = true, auth_fail_penalty_scale = 0.0001 } }
    local ok, err = pcall(function()
      local bad = "AUTH PLAIN " .. h.plain("alice", "wrong") .. "\r\n"
      local function sessions(n)
        for _ = 1, n do
          local c = srv:connect()
          assert(c:send("EHLO client.test\r\n" .. bad:rep(5)))
          assert.equal(250, (c:reply(10)))
          for _ = 1, 5 do assert.equal(535, (c:reply(10))) end
          assert.equal(421, (c:reply(10)))
          c:close()
        end
      end
      sessions(50)
      local fds, rss = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
      sessions(1000) -- 5,000 failures, about 10,000 holds
      u.wait_log(srv, "[s1050] closed", 1, 10)
      local fds2, rss2 = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
      io.stdout:write(("\nauth holds: 5,000 failures; fds %d -> %d; VmRSS %d -> %d KiB\n")
        :format(fds, fds2, rss, rss2))
      assert.equal(fds, fds2)
      assert(hu.sanitized(srv.pid) or rss2 - rss < 2048, ("RSS grew by %d KiB"):format(rss2 - rss))
    end)
    srv:stop()
    if not ok then error(err, 0) end
    local _, holds = srv:stderr():gsub("AUTH penalty: holding", "")
    assert.truthy(holds >= 4000, "only " .. holds .. " penalty holds")
  end)
end)

describe("auth_fail_store (Redis): one count across hosts", function()
  local ru = require "spec.bindings.redis_util"
  local hu = require "spec.functional.hostile_util"
  local rsrv
  setup(function() rsrv = ru.start_redis() end)
  teardown(function() if rsrv then rsrv:stop() end end)

  local function store_source(url, count)
    return limit_source(("{ count = %d, window = 600 }, auth_fail_store = %q"):format(count, url))
  end

  it("two servers sharing one Redis refuse an address past its failures on either", function()
    local url = ("redis://127.0.0.1:%d/3"):format(rsrv.port)
    local one = testing.start{ source = store_source(url, 3) }
    local two = testing.start{ source = store_source(url, 3) }
    local ok, err = pcall(function()
      local a, b = one:connect(), two:connect()
      a:cmd("EHLO client.test")
      b:cmd("EHLO client.test")
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      assert.equal(535, (a:auth_plain("alice", "wrong")))
      -- neither server saw three failures itself
      assert.equal(535, (b:auth_plain("alice", "wrong")))
      assert.equal(REFUSED, line_of(a, "AUTH PLAIN " .. h.ALICE_PLAIN))
      assert.equal(REFUSED, line_of(b, "AUTH PLAIN " .. h.ALICE_PLAIN))
      -- the counter in Redis: db 3, with the window as its expiry
      local p = assert(io.popen(("timeout 10 redis-cli -p %d -n 3 GET luasmtpd:auth_fail:127.0.0.1; "
        .. "timeout 10 redis-cli -p %d -n 3 TTL luasmtpd:auth_fail:127.0.0.1"):format(rsrv.port, rsrv.port)))
      local got = p:read("*a")
      p:close()
      local count, ttl = got:match("^(%d+)\n(%d+)\n$")
      assert.equal("3", count, got)
      assert.truthy(tonumber(ttl) > 500 and tonumber(ttl) <= 600, got)
      a:close()
      b:close()
    end)
    one:stop()
    two:stop()
    if not ok then error(err, 0) end
    assert.equal(2, #failure_lines(one:stderr()))
    assert.equal(1, #failure_lines(two:stderr()))
  end)

  it("another client is served while AUTH waits on a Redis that never answers; a disconnect or "
    .. "hook_timeout mid-wait", function()
    -- a listener that never accepts: connect completes, GET is never answered
    local silent = assert(socket.bind("127.0.0.1", 0))
    local _, sport = silent:getsockname()
    local url = ("redis://127.0.0.1:%d"):format(sport)
    local srv = with_server({ source = store_source(url, 1), options = { hook_timeout = 1 } }, function(srv)
      local a = srv:connect()
      a:cmd("EHLO client.test")
      assert(a:send("AUTH PLAIN " .. h.ALICE_PLAIN .. "\r\n"))
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP")))
      assert.is_nil((a:reply(0.05)), "AUTH answered before the other client")
      -- hook_timeout ends the wait; the store fails open and AUTH goes on
      assert.equal(235, (a:reply(20)))
      a:close()
      -- a client that leaves while AUTH waits on the store
      b:cmd("EHLO client.test")
      assert(b:send("AUTH PLAIN " .. h.ALICE_PLAIN .. "\r\n"))
      u.wait_log(srv, "[s2] connection")
      b:close()
      u.wait_log(srv, "[s2] closed")
      local c = srv:connect()
      assert.equal(250, (c:cmd("NOOP")))
      c:close()
    end)
    silent:close()
    local err = srv:stderr()
    assert.truthy(err:find("[s1] hook auth_fail_store failed: auth_fail_store still waiting for sock:receive "
      .. "after hook_timeout (1 s)", 1, true), err)
    assert.truthy(err:find("[s1] authenticated with PLAIN", 1, true), err)
    assert.truthy(err:find("[s2] abandoning suspended hook auth_fail_store", 1, true), err)
  end)

  it("a Redis that is down fails open (AUTH goes on, a warning is logged)", function()
    local url = ("redis://127.0.0.1:%d"):format(hu.free_port()) -- nobody listens
    local srv = with_server({ source = store_source(url, 1) }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert.equal(535, (c:auth_plain("alice", "wrong")))
      assert.equal(535, (c:auth_plain("alice", "wrong"))) -- not counted: no 454
      assert.equal(235, (c:auth_plain("alice", "s3cret")))
      c:close()
    end)
    local err = srv:stderr()
    assert.truthy(err:find("auth_fail_store: [^\n]*; not counting"), err)
  end)

  it("rejects a bad auth_fail_store", function()
    local status, out = testing.check{ source = source(), args = { "-o", "auth_fail_store=redis://127.0.0.1:6379" } }
    assert.is_not.equal(0, status)
    assert.truthy(out:find("option 'auth_fail_store' needs auth_fail_limit_per_client", 1, true), out)
    status, out = testing.check{ source = source(), args = { "-o", "auth_fail_store=memcached://x",
      "-o", "auth_fail_limit_per_client=count=3" } }
    assert.is_not.equal(0, status)
    assert.truthy(out:find("option 'auth_fail_store' must be \"redis://host:port[/db]\"", 1, true), out)
    status, out = testing.check{ source = source(), args = { "-o", "auth_fail_store=redis://nohost",
      "-o", "auth_fail_limit_per_client=count=3" } }
    assert.is_not.equal(0, status)
    assert.truthy(out:find("option 'auth_fail_store': expected redis://host:port[/db]", 1, true), out)
  end)
end)

describe("behind a PROXY protocol front end", function()
  local hu = require "spec.functional.hostile_util"
  local WRONG = "AUTH PLAIN AGFsaWNlAHdyb25n" -- \0alice\0wrong
  local function proxied(srv, src)
    local c = assert(hu.connect(srv.host, srv.port))
    assert(c:send(("PROXY TCP4 %s 127.0.0.1 40000 25\r\n"):format(src)))
    assert.equal(220, (c:reply(5)))
    assert.equal(250, (c:cmd("EHLO client.test")))
    return c
  end

  it("counts, limits and logs the client the header names, not the proxy", function()
    local src = limit_source("{ count = 2, window = 600 }") ..
      "\nfunction handle_PROXY(server, session, envelope, data) return true end\n"
    local srv = with_server({ source = src, args = { "--proxy-protocol=5" } }, function(srv)
      local a = proxied(srv, "203.0.113.9")
      assert.equal(535, (a:cmd(WRONG)))
      assert.equal(535, (a:cmd(WRONG)))
      assert.equal(REFUSED, line_of(a, WRONG))
      -- another client behind the same proxy has its own count
      local b = proxied(srv, "203.0.113.10")
      assert.equal(535, (b:cmd(WRONG)))
      a:close()
      b:close()
    end)
    local lines = failure_lines(srv:stderr())
    assert.equal(3, #lines)
    assert.truthy(lines[1]:find("client=[203.0.113.9]", 1, true), lines[1])
    assert.truthy(lines[3]:find("client=[203.0.113.10]", 1, true), lines[3])
  end)
end)
