-- The shipped handlers (lua/smtpd/handlers/, delivery.md 2 and 3) in the
-- real server, started with `-c NAME ARGS` (and from scripts), against real
-- upstreams on 127.0.0.1 (aiosmtpd and a raw LMTP responder,
-- spec/functional/upstream.py) and real files: relaying without loss
-- (250 only after the upstream accepted; its 550 at RCPT refused at RCPT;
-- 4xx and failures 451, never reported accepted), maildir and mbox content
-- byte-exact and fsync'd before 250 (strace shows the order), mbox quoting
-- and locking, and smtpd.fs waiting on the thread pool like every
-- yielding binding (another client served, disconnect, hook_timeout,
-- reload, flat descriptors). Order of events, never elapsed time.
local hu = require "spec.functional.hostile_util"
local u = require "spec.functional.reload_util"
local up = require "spec.functional.upstream_util"

local MESSAGE = "From: a@example.org\r\nSubject: relay\r\n\r\n.\r\n..two\r\nFrom the start\r\n>From quoted\r\n" ..
  "last line\r\n"

-- Sends one message over c; returns the replies of MAIL, each RCPT, DATA.
local function transaction(c, from, rcpts, message)
  local r = {}
  r.mail = { c:cmd("MAIL FROM:<" .. from .. ">") }
  r.rcpt = {}
  local any = false
  for i, to in ipairs(rcpts) do
    r.rcpt[i] = { c:cmd("RCPT TO:<" .. to .. ">") }
    any = any or r.rcpt[i][1] == 250
  end
  if any then r.data = { c:data(message) } end
  return r
end

local function cmd2(c, line)
  local code, text = c:cmd(line)
  return code, text
end

local function with_c(opts, fn)
  hu.with_server(opts, function(srv)
    local c = srv:connect()
    c:cmd("EHLO client.test")
    local ok, err = pcall(fn, srv, c)
    c:close()
    if not ok then error(err, 0) end
  end)
end

local function check(args)
  local out = hu.sh("LUASMTPD_DUMMY=1 " .. hu.shell_quote(hu.binary()) .. " -t " .. args .. "; echo rc=$?")
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

describe("-c NAME ARGS", function()
  it("-t validates each shipped handler and refuses bad arguments", function()
    assert.equal(0, (check("-c sink")))
    assert.equal(0, (check("-c debugging")))
    assert.equal(0, (check("-c relay 127.0.0.1 2525")))
    assert.equal(0, (check("-c relay smtp.example.net")))
    assert.equal(0, (check("-c maildir /tmp/nowhere")))
    assert.equal(0, (check("-c mbox /tmp/nowhere.mbox")))
    assert.equal(0, (check("-c lmtp unix:/run/dovecot/lmtp")))
    assert.equal(0, (check("-c lmtp 127.0.0.1:24")))
    local rc, out = check("-c relay")
    assert.equal(1, rc)
    assert.truthy(out:find("luasmtpd -c relay HOST [PORT]: expected HOST [PORT]", 1, true), out)
    rc, out = check("-c relay host 99999")
    assert.equal(1, rc)
    assert.truthy(out:find("PORT must be a number 1-65535", 1, true), out)
    rc, out = check("-c lmtp nowhere")
    assert.equal(1, rc)
    assert.truthy(out:find("expected unix:/PATH or HOST:PORT", 1, true), out)
    rc, out = check("-c nosuch")
    assert.equal(1, rc)
    assert.truthy(out:find("unknown handler 'nosuch'", 1, true), out)
    rc, out = check("-c sink extra")
    assert.equal(1, rc)
    assert.truthy(out:find("takes no arguments", 1, true), out)
  end)

  it("--handler and -c are exclusive", function()
    local rc, out = check("--handler x.lua -c sink")
    assert.equal(2, rc)
    assert.truthy(out:find("--handler and -c are exclusive", 1, true), out)
  end)

  it("-c sink accepts and discards; -c debugging prints", function()
    with_c({ args = { "-c", "sink" } }, function(srv, c)
      local r = transaction(c, "a@example.org", { "b@example.net" }, "Subject: x\r\n\r\ny\r\n")
      assert.equal(250, r.data[1])
      hu.wait_log(srv, "handler -c sink loaded (policy generation 1)")
    end)
    local srv = hu.with_server({ args = { "-c", "debugging" } }, function(srv)
      local c = srv:connect()
      c:cmd("EHLO client.test")
      assert.equal(250, transaction(c, "a@example.org", { "b@example.net" }, "Subject: x\r\n\r\nhello\r\n").data[1])
      c:close()
      hu.wait_until(function() return srv:stdout():find("hello", 1, true) end, 10, "the message on stdout")
    end)
    assert.truthy(srv:stdout():find("---------- MESSAGE FOLLOWS ----------", 1, true))
  end)

  it("smtpd.handlers.NAME is reachable from a script, and the table can be extended", function()
    local upstream = up.start()
    local src = ([[
local smtpd = require "smtpd"
local handler = require("smtpd.handlers.relay"){ host = "127.0.0.1", port = %d }
assert(smtpd.handlers.relay == require("smtpd.handlers.relay"))
assert(type(smtpd.handlers.sink) == "function" and type(smtpd.handlers.debugging) == "function")
local rcpt = handler.handle_RCPT
function handler.handle_RCPT(server, session, envelope, address, options)
  if address:find("^local@") then return "550 5.7.1 not here" end
  return rcpt(server, session, envelope, address, options)
end
return handler
]]):format(upstream.port)
    local ok, err = pcall(with_c, { source = src }, function(_, c)
      local r = transaction(c, "a@example.org", { "local@example.net", "b@example.net" }, MESSAGE)
      assert.same({ 550, "5.7.1 not here" }, { r.rcpt[1][1], r.rcpt[1][2] })
      assert.equal(250, r.data[1])
      assert.same({ "b@example.net" }, up.wait(upstream, "message")[1].rcpt_tos)
    end)
    up.stop(upstream)
    if not ok then error(err, 0) end
  end)
end)

describe("relay without loss", function()
  local upstream
  after_each(function()
    up.stop(upstream)
    upstream = nil
  end)

  local function relay_args(port, extra)
    local a = { "-c", "relay", "127.0.0.1", tostring(port) }
    return { args = a, options = extra }
  end

  it("250 with the upstream's reply only after the upstream accepted; byte-exact", function()
    upstream = up.start()
    with_c(relay_args(upstream.port), function(_, c)
      local r = transaction(c, "a@example.org", { "b@example.net", "c@example.net" }, MESSAGE)
      assert.same({ 250, "2.0.0 Ok: queued as UP1" }, { r.data[1], r.data[2] })
      local msg = up.events(upstream, "message")[1] -- already there: the 250 came after it
      assert.is_table(msg)
      assert.equal(MESSAGE, msg.data)
      assert.same({ "b@example.net", "c@example.net" }, msg.rcpt_tos)
      assert.equal("a@example.org", msg.mail_from)
    end)
  end)

  it("the upstream's 550 at RCPT is the client's 550 at RCPT; the rest is delivered", function()
    upstream = up.start{ refuse = "nobody" }
    with_c(relay_args(upstream.port), function(_, c)
      local r = transaction(c, "a@example.org", { "nobody@example.net", "b@example.net" }, MESSAGE)
      assert.same({ 550, "5.1.1 No such user here" }, { r.rcpt[1][1], r.rcpt[1][2] })
      assert.equal(250, r.rcpt[2][1])
      assert.equal(250, r.data[1])
      assert.same({ "b@example.net" }, up.events(upstream, "message")[1].rcpt_tos)
    end)
  end)

  it("the upstream's 4xx at RCPT passes through at RCPT", function()
    upstream = up.start{ tempfail_rcpt = "busy" }
    with_c(relay_args(upstream.port), function(_, c)
      local r = transaction(c, "a@example.org", { "busy@example.net" }, MESSAGE)
      assert.same({ 450, "4.2.1 Mailbox busy, try later" }, { r.rcpt[1][1], r.rcpt[1][2] })
      assert.is_nil(r.data)
    end)
  end)

  it("the upstream's 452 at DATA is the client's 452; 554 is 554; nothing reported accepted", function()
    for _, reply in ipairs{ "452 4.3.1 Insufficient system storage", "554 5.7.1 Message rejected" } do
      upstream = up.start{ data_reply = reply }
      with_c(relay_args(upstream.port), function(_, c)
        local r = transaction(c, "a@example.org", { "b@example.net" }, MESSAGE)
        assert.equal(reply, r.data[1] .. " " .. r.data[2])
        assert.equal(0, #up.events(upstream, "message"))
      end)
      up.stop(upstream)
    end
    upstream = nil
  end)

  it("upstream down: 451 4.4.1 at RCPT, and at DATA with verify_rcpt = false", function()
    local port = hu.free_port()
    with_c(relay_args(port), function(srv, c)
      local r = transaction(c, "a@example.org", { "b@example.net" }, MESSAGE)
      assert.same({ 451, "4.4.1 Error: upstream unavailable, try again later" }, { r.rcpt[1][1], r.rcpt[1][2] })
      assert.is_nil(r.data)
      hu.wait_log(srv, "relay: upstream at 127.0.0.1: connection refused (stage connect)")
    end)
    local src = ('return require("smtpd.handlers.relay"){ host = "127.0.0.1", port = %d, verify_rcpt = false }')
      :format(port)
    with_c({ source = src }, function(_, c)
      local r = transaction(c, "a@example.org", { "b@example.net" }, MESSAGE)
      assert.equal(250, r.rcpt[1][1])
      assert.same({ 451, "4.4.1 Error: upstream unavailable, try again later" }, { r.data[1], r.data[2] })
    end)
  end)

  it("upstream gone between RCPT and DATA: 451, and nothing delivered", function()
    upstream = up.start()
    with_c(relay_args(upstream.port), function(_, c)
      assert.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
      assert.equal(250, (c:cmd("RCPT TO:<b@example.net>")))
      up.stop(upstream)
      hu.wait_until(function() return not u.alive(upstream.pid) end, 10, "the upstream to exit")
      local code, text = c:data(MESSAGE)
      assert.equal(451, code)
      assert.equal("4.4.1 Error: upstream unavailable, try again later", text)
    end)
    upstream = nil
  end)

  it("a recipient accepted at RCPT and refused at DATA time: 451, the message not sent to anyone", function()
    -- The script adds a recipient after verification (as a recipient the
    -- upstream changed its mind about): the real transaction has a refusal.
    upstream = up.start{ refuse = "nobody" }
    local src = ([[
local handler = require("smtpd.handlers.relay"){ host = "127.0.0.1", port = %d }
local data = handler.handle_DATA
function handler.handle_DATA(server, session, envelope)
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = "nobody@example.net"
  return data(server, session, envelope)
end
return handler
]]):format(upstream.port)
    with_c({ source = src }, function(_, c)
      local r = transaction(c, "a@example.org", { "b@example.net" }, MESSAGE)
      assert.equal(250, r.rcpt[1][1])
      assert.same({ 451, "4.4.1 Error: upstream refused a recipient it had accepted, try again later" },
        { r.data[1], r.data[2] })
      c:cmd("NOOP")
      assert.equal(0, #up.events(upstream, "message"))
    end)
  end)
end)

describe("lmtp handler", function()
  local upstream
  after_each(function()
    up.stop(upstream)
    upstream = nil
  end)

  it("-c lmtp unix:/path: per-recipient replies; an SMTP server gives one verdict", function()
    upstream = up.start{ lmtp = true, unix = true, lmtp_fail = "full", refuse = "nobody" }
    with_c({ args = { "-c", "lmtp", "unix:" .. upstream.path } }, function(srv, c)
      local r = transaction(c, "a@example.org", { "nobody@example.net", "a@example.net", "full@example.net" },
        MESSAGE)
      assert.same({ 550, "5.1.1 <nobody@example.net> User unknown" }, { r.rcpt[1][1], r.rcpt[1][2] })
      assert.equal(250, r.rcpt[2][1])
      assert.equal(250, r.rcpt[3][1])
      assert.equal(250, r.data[1])
      hu.wait_log(srv, "lmtp: full@example.net not delivered (452 4.2.2 <full@example.net> Mailbox full)")
      local msg = up.events(upstream, "message")[1]
      assert.equal(MESSAGE, msg.data)
      assert.same({ { "a@example.net", 250 }, { "full@example.net", 452 } }, msg.results)
      -- Every recipient failing: the first one's reply.
      r = transaction(c, "a@example.org", { "full@example.net" }, MESSAGE)
      assert.same({ 452, "4.2.2 <full@example.net> Mailbox full" }, { r.data[1], r.data[2] })
    end)
  end)

  it("in an LMTP server (--lmtp), each recipient's reply is passed through", function()
    upstream = up.start{ lmtp = true, unix = true, lmtp_fail = "full" }
    local started, srv = pcall(require("smtpd.testing").start,
      { args = { "--lmtp", "-c", "lmtp", "unix:" .. upstream.path } })
    if not started then
      pending("this build has no LMTP server mode (--lmtp)")
      return
    end
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(250, (c:cmd("LHLO client.test")))
      assert.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
      assert.equal(250, (c:cmd("RCPT TO:<a@example.net>")))
      assert.equal(250, (c:cmd("RCPT TO:<full@example.net>")))
      local code, text = c:data(MESSAGE)
      assert.same({ 250, "2.0.0 <a@example.net> delivered" }, { code, text })
      code, text = c:reply(10)
      assert.same({ 452, "4.2.2 <full@example.net> Mailbox full" }, { code, text })
      assert.equal(MESSAGE, up.events(upstream, "message")[1].data)
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("-c lmtp HOST:PORT", function()
    upstream = up.start{ lmtp = true }
    with_c({ args = { "-c", "lmtp", "127.0.0.1:" .. upstream.port } }, function(_, c)
      assert.equal(250, transaction(c, "a@example.org", { "a@example.net" }, MESSAGE).data[1])
      assert.equal(MESSAGE, up.wait(upstream, "message")[1].data)
    end)
  end)
end)

-- Files in a directory, sorted.
local function ls(dir)
  local out = {}
  for name in hu.sh("ls -1 " .. hu.shell_quote(dir) .. " 2>/dev/null"):gmatch("[^\n]+") do out[#out + 1] = name end
  return out
end

describe("maildir handler", function()
  it("tmp -> new with unique names, byte-exact, before 250", function()
    local dir = hu.tempdir()
    local md = dir .. "/Maildir"
    local ok, err = pcall(with_c, { args = { "-c", "maildir", md } }, function(_, c)
      for i = 1, 3 do
        local r = transaction(c, "a@example.org", { "b@example.net" }, MESSAGE .. "n" .. i .. "\r\n")
        assert.equal(250, r.data[1])
        local names = ls(md .. "/new")
        assert.equal(i, #names) -- there when the 250 came
      end
      assert.same({}, ls(md .. "/tmp"))
      assert.same({}, ls(md .. "/cur"))
      local seen = {}
      for _, name in ipairs(ls(md .. "/new")) do
        assert.truthy(name:find("^%d+%.M%d+P%d+Q%d+%."), name)
        seen[hu.read_file(md .. "/new/" .. name)] = true
      end
      for i = 1, 3 do assert.is_true(seen[MESSAGE .. "n" .. i .. "\r\n"]) end
    end)
    hu.rmdir(dir)
    if not ok then error(err, 0) end
  end)

  it("fsyncs the file before the rename into new/ and new/ after it (strace)", function()
    local dir = hu.tempdir()
    local md = dir .. "/Maildir"
    local trace = dir .. "/trace"
    -- luasmtpd under strace, started by hand (the syscalls of every thread).
    local port = hu.free_port()
    local cmd = ("strace -f -e trace=fsync,rename,openat -o %s %s -n -l 127.0.0.1:%d -c maildir %s " ..
      ">%s/out 2>&1 & echo $!"):format(hu.shell_quote(trace), hu.shell_quote(hu.binary()), port,
      hu.shell_quote(md), dir)
    local p = assert(io.popen(cmd))
    local pid = tonumber(p:read("*l"))
    p:close()
    local ok, err = pcall(function()
      local c = hu.connect_until_greeted("127.0.0.1", port, nil, 20)
      local function cmd_(line)
        assert(c:send(line .. "\r\n"))
        return c:reply(20)
      end
      cmd_("EHLO client.test")
      cmd_("MAIL FROM:<a@example.org>")
      cmd_("RCPT TO:<b@example.net>")
      assert.equal(354, (cmd_("DATA")))
      assert(c:send("Subject: traced\r\n\r\nbody\r\n.\r\n"))
      assert.equal(250, (c:reply(20)))
      c:close()
      local t = hu.read_file(trace) or ""
      local name = ls(md .. "/new")[1]
      assert.is_string(name)
      local open_at = t:find('openat%([^\n]*tmp/' .. name:gsub("%p", "%%%0"))
      local fsync_at = open_at and t:find("fsync%(", open_at)
      local rename_at = fsync_at and t:find("rename%([^\n]*new/", fsync_at)
      local dir_fsync = rename_at and t:find("fsync%(", rename_at + 1)
      assert(open_at and fsync_at and rename_at and dir_fsync, "open tmp -> fsync -> rename -> fsync in:\n" .. t)
    end)
    for _, child in ipairs(u.children(pid)) do os.execute("kill " .. child .. " 2>/dev/null") end
    hu.wait_until(function() return not u.alive(pid) end, 10, "strace to exit")
    hu.rmdir(dir)
    if not ok then error(err, 0) end
  end)

  it("a directory it cannot write: 451 and a log line naming the reason", function()
    local dir = hu.tempdir()
    local ok, err = pcall(with_c, { args = { "-c", "maildir", dir .. "/file/Maildir" } }, function(srv, c)
      hu.write_file(dir .. "/file", "not a directory")
      local r = transaction(c, "a@example.org", { "b@example.net" }, MESSAGE)
      assert.same({ 451, "4.3.0 Error: cannot deliver to the mailbox, try again later" }, { r.data[1], r.data[2] })
      hu.wait_log(srv, "mkdir " .. dir .. "/file/Maildir: Not a directory")
    end)
    hu.rmdir(dir)
    if not ok then error(err, 0) end
  end)
end)

-- A process that holds a POSIX fcntl lock on path until it is killed.
local function hold_lock(path, dir)
  local ready = dir .. "/locked"
  local py = ("import fcntl,time,os\nf=open(%q,'a')\nfcntl.lockf(f,fcntl.LOCK_EX)\nopen(%q,'w').close()\n" ..
    "time.sleep(60)\n"):format(path, ready)
  hu.write_file(dir .. "/lock.py", py)
  local p = assert(io.popen("/usr/bin/python3 " .. dir .. "/lock.py >/dev/null 2>&1 & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  hu.wait_until(function() return hu.read_file(ready) ~= nil end, 10, "the lock holder")
  return pid
end

describe("mbox handler", function()
  it("From_ line, >From quoting, LF line ends, an empty line after each message", function()
    local dir = hu.tempdir()
    local box = dir .. "/mbox"
    local ok, err = pcall(with_c, { args = { "-c", "mbox", box } }, function(_, c)
      assert.equal(250, transaction(c, "a@example.org", { "b@example.net" }, MESSAGE).data[1])
      assert.equal(250, transaction(c, "", { "b@example.net" }, "Subject: 2\r\n\r\nFrom me\r\n").data[1])
      local text = hu.read_file(box)
      local first, body1, second, body2 = text:match("^(From [^\n]*)\n(.-)\n(From [^\n]*)\n(.*)$")
      assert.truthy(first:find("^From a@example%.org %a%a%a %a%a%a [ %d]%d %d%d:%d%d:%d%d %d%d%d%d$"), first)
      assert.truthy(second:find("^From MAILER%-DAEMON "), second)
      assert.equal("From: a@example.org\nSubject: relay\n\n.\n..two\n>From the start\n>>From quoted\nlast line\n",
        body1)
      assert.equal("Subject: 2\n\n>From me\n\n", body2)
    end)
    hu.rmdir(dir)
    if not ok then error(err, 0) end
  end)

  it("waits for another writer's fcntl lock; other clients are served meanwhile", function()
    local dir = hu.tempdir()
    local box = dir .. "/mbox"
    local locker
    local ok, err = pcall(with_c, { args = { "-c", "mbox", box } }, function(srv, c)
      locker = hold_lock(box, dir)
      assert.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
      assert.equal(250, (c:cmd("RCPT TO:<b@example.net>")))
      assert.equal(354, (c:cmd("DATA")))
      assert(c:send("Subject: locked\r\n\r\nwaiting\r\n.\r\n"))
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP")))
      b:close()
      assert.is_nil((c:reply(0.2)), "delivered while another process held the lock")
      assert.equal("", hu.read_file(box))
      os.execute("kill " .. locker)
      assert.equal(250, (c:reply(20)))
      assert.truthy(hu.read_file(box):find("\nwaiting\n", 1, true))
    end)
    if locker then os.execute("kill " .. locker .. " 2>/dev/null") end
    hu.rmdir(dir)
    if not ok then error(err, 0) end
  end)

  it("two concurrent deliveries of large messages are not interleaved", function()
    local dir = hu.tempdir()
    local box = dir .. "/mbox"
    local ok, err = pcall(hu.with_server, { args = { "-c", "mbox", box }, options = { thread_pool_size = 2 } },
      function(srv)
        local a, b = srv:connect(), srv:connect()
        local line_a, line_b = ("a"):rep(900), ("b"):rep(900)
        local big_a = ("Subject: A\r\n\r\n" .. (line_a .. "\r\n"):rep(2000))
        local big_b = ("Subject: B\r\n\r\n" .. (line_b .. "\r\n"):rep(2000))
        for _, c in ipairs{ a, b } do
          c:cmd("EHLO client.test")
          c:cmd("MAIL FROM:<x@example.org>")
          c:cmd("RCPT TO:<y@example.net>")
          assert.equal(354, (c:cmd("DATA")))
        end
        assert(a:send(big_a .. ".\r\n"))
        assert(b:send(big_b .. ".\r\n"))
        assert.equal(250, (a:reply(30)))
        assert.equal(250, (b:reply(30)))
        a:close()
        b:close()
        local text = "\n" .. hu.read_file(box)
        local parts = {}
        local pos = 1
        while true do
          local s = text:find("\nFrom x@example%.org [^\n]*\n", pos)
          if not s then break end
          local body_start = text:find("\n", s + 1, true) + 1
          local nxt = text:find("\nFrom x@example%.org ", body_start)
          -- the message, then the empty line mbox puts after it
          parts[#parts + 1] = text:sub(body_start, nxt and nxt - 1 or #text - 1)
          pos = nxt or #text + 1
        end
        assert.equal(2, #parts)
        table.sort(parts)
        assert.equal(big_a:gsub("\r\n", "\n"), parts[1])
        assert.equal(big_b:gsub("\r\n", "\n"), parts[2])
      end)
    hu.rmdir(dir)
    if not ok then error(err, 0) end
  end)
end)

local FS_SOURCE = [[
local smtpd = require "smtpd"
local VERSION = "v1"
options = { hook_timeout = 2 }
local BOX, MD = %q, %q
function handle_NOOP(server, session, envelope, arg)
  if arg == "ver" then return "250 " .. VERSION end
  if arg == "append" then
    local ok, err = smtpd.fs.append(BOX, "line\n")
    return "250 " .. VERSION .. " " .. tostring(ok) .. " " .. tostring(err)
  end
  if arg == "badpath" then
    local ok, err = smtpd.fs.append("/nonexistent/dir/box", "x")
    return "250 " .. tostring(ok) .. " " .. tostring(err)
  end
  if arg == "badarg" then smtpd.fs.append(BOX, {}) end
  local n = tonumber(arg and arg:match("^loop (%%d+)$"))
  if n then
    for _ = 1, n do assert(smtpd.fs.deliver_maildir(MD, "x\r\n")) end
    return "250 looped " .. n
  end
  return "250 OK"
end
]]

describe("smtpd.fs waiting on the thread pool", function()
  local dir, box, md
  before_each(function()
    dir = hu.tempdir()
    box, md = dir .. "/box", dir .. "/Maildir"
  end)
  after_each(function() hu.rmdir(dir) end)

  local function src() return FS_SOURCE:format(box, md) end

  it("results and error strings", function()
    with_c({ source = src() }, function(srv, c)
      assert.same({ 250, "v1 true nil" }, { cmd2(c, "NOOP append") })
      assert.equal("line\n", hu.read_file(box))
      assert.same({ 250, "nil open /nonexistent/dir/box: No such file or directory" }, { cmd2(c, "NOOP badpath") })
      assert.equal(451, (c:cmd("NOOP badarg")))
      hu.wait_log(srv, "bad argument #2 to 'append' (string expected, got table)")
    end)
  end)

  it("a client that disconnects while its append waits: the result is dropped, the server goes on", function()
    -- The lock holder first: a process started later would inherit the
    -- client's socket, and closing it here would not disconnect.
    local locker = hold_lock(box, dir)
    local ok, err = pcall(with_c, { source = src() }, function(srv, c)
      assert(c:send("NOOP append\r\n"))
      assert.is_nil((c:reply(0.1)))
      c:close()
      hu.wait_log(srv, "abandoning suspended hook handle_NOOP")
      os.execute("kill " .. locker)
      hu.wait_log(srv, "smtpd.fs.append finished after its hook went away: result dropped")
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP")))
      b:close()
    end)
    if locker then os.execute("kill " .. locker .. " 2>/dev/null") end
    if not ok then error(err, 0) end
  end)

  it("hook_timeout while an append waits for the lock: 451", function()
    local locker
    local ok, err = pcall(with_c, { source = src() }, function(srv, c)
      locker = hold_lock(box, dir)
      assert(c:send("NOOP append\r\n"))
      assert.equal(451, (c:reply(15)))
      hu.wait_log(srv, "handle_NOOP still waiting for smtpd.fs.append after hook_timeout (2 s)")
      os.execute("kill " .. locker)
      assert.same({ 250, "v1 true nil" }, { cmd2(c, "NOOP append") })
    end)
    if locker then os.execute("kill " .. locker .. " 2>/dev/null") end
    if not ok then error(err, 0) end
  end)

  it("an append in progress when SIGHUP arrives completes on its generation", function()
    local s = src():gsub("hook_timeout = 2", "hook_timeout = 20")
    local srv = u.start{ source = s }
    local locker
    local ok, err = pcall(function()
      locker = hold_lock(box, dir)
      local a = srv:connect()
      assert(a:send("NOOP append\r\n"))
      u.write_file(srv.script, (s:gsub('local VERSION = "v1"', 'local VERSION = "v2"', 1)))
      srv:signal("HUP")
      u.wait_log(srv, "loaded (policy generation 2)")
      os.execute("kill " .. locker)
      local code, text = a:reply(15)
      assert.equal(250, code)
      assert.equal("v1 true nil", text)
      a:close()
      local b = srv:connect()
      assert.same({ 250, "v2" }, { cmd2(b, "NOOP ver") })
      b:close()
    end)
    if locker then os.execute("kill " .. locker .. " 2>/dev/null") end
    u.stop(srv)
    if not ok then error(err, 0) end
  end)

  it("descriptors and RSS are flat after 10,000 maildir deliveries", function()
    with_c({ source = src():gsub("hook_timeout = 2", "hook_timeout = 60") }, function(srv, c)
      assert.equal(250, (c:cmd("NOOP loop 500")))
      collectgarbage()
      local fd_before, rss_before = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
      for _ = 1, 19 do assert.same({ 250, "looped 500" }, { cmd2(c, "NOOP loop 500") }) end
      assert.equal(10000, #ls(md .. "/new"))
      local fd_after, rss_after = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
      assert(fd_after <= fd_before + 1, ("fds %d before, %d after"):format(fd_before, fd_after))
      assert(hu.sanitized(srv.pid) or rss_after - rss_before < 4096,
        ("VmRSS %d KiB before, %d KiB after"):format(rss_before, rss_after))
    end)
  end)
end)
