-- LMTP server mode (RFC 2033, delivery.md 4): `--lmtp` / option `lmtp`.
-- LHLO replaces HELO/EHLO (which get 500), and after DATA the server sends
-- one reply per accepted recipient in RCPT order: handle_DATA's status for
-- all, or its table's entry for each (a missing or invalid entry is a hook
-- error for that one recipient). A raw client reads every reply: smtplib's
-- LMTP reads only one after DATA. Order of events, never elapsed time.
local socket = require "socket"
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"
local hu = require "spec.functional.hostile_util"

local LHLO = {
  "250-mx.test",
  "250-SIZE 33554432",
  "250-8BITMIME",
  "250-PIPELINING",
  "250-ENHANCEDSTATUSCODES",
  "250 HELP",
}
local lhlo = { "LHLO client.test", LHLO }

-- handle_DATA answers by the recipient's local part; "sleep" waits first,
-- "boom" raises, "string" returns one status for every recipient.
local SOURCE = [[
local smtpd = require "smtpd"
options = { hook_timeout = 2 }
function handle_NOOP(server, session, envelope, arg)
  if arg == "lmtp" then return "250 lmtp=" .. tostring(session.lmtp) end
  return "250 OK"
end
function handle_DATA(server, session, envelope)
  local first = envelope.rcpt_tos[1]
  if first:find("^boom") then error("exploded") end
  if first:find("^string") then return "250 2.0.0 one for all" end
  if first:find("^sleep") then smtpd.sleep(tonumber(first:match("^sleep(%d+)")) or 1) end
  if first:find("^nothing") then return nil end
  local t = {}
  for _, r in ipairs(envelope.rcpt_tos) do
    if r:find("^bad") then t[r] = "550 5.1.1 <" .. r .. "> no such user"
    elseif r:find("^full") then t[r] = "452 4.2.2 <" .. r .. "> mailbox full"
    elseif r:find("^missing") then -- no entry
    elseif r:find("^invalid") then t[r] = 42
    else t[r] = "250 2.1.5 <" .. r .. "> delivered (" .. #envelope.content .. " bytes)" end
  end
  -- Editing the list does not change how many replies the client gets.
  envelope.rcpt_tos = {}
  return t
end
]]

local MSG = "Subject: hi\r\n\r\nbody\r\n.\r\n"

-- For the descriptor and memory check: every handle_DATA waits briefly.
local FLAT = [[
local smtpd = require "smtpd"
function handle_DATA(server, session, envelope)
  smtpd.sleep(0.001)
  local t = {}
  for _, r in ipairs(envelope.rcpt_tos) do
    t[r] = "250 2.0.0 delivered to " .. r
  end
  return t
end
]]

local function transaction(rcpts)
  local steps = { lhlo, { "MAIL FROM:<sender@example.org>", "250 OK" } }
  for _, r in ipairs(rcpts) do steps[#steps + 1] = { "RCPT TO:<" .. r .. ">", "250 OK" } end
  steps[#steps + 1] = { "DATA", "354 End data with <CR><LF>.<CR><LF>" }
  return steps
end

local function expects(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = { expect = e } end
  return out
end

describe("LMTP", function()
  h.run{
    { name = "LHLO offers PIPELINING and ENHANCEDSTATUSCODES (and SIZE, 8BITMIME as EHLO does)",
      source = SOURCE, args = { "--lmtp" },
      dialogue = { lhlo, { "NOOP lmtp", "250 lmtp=true" } } },

    { name = "HELO and EHLO get 500; MAIL before LHLO names LHLO; HELP lists LHLO, not HELO/EHLO",
      source = SOURCE, args = { "--lmtp" },
      dialogue = {
        { "HELO client.test", '500 Error: command "HELO" not recognized' },
        { "EHLO client.test", '500 Error: command "EHLO" not recognized' },
        { "MAIL FROM:<a@example.org>", "503 Error: send LHLO first" },
        { "LHLO", "501 Syntax: LHLO hostname" },
        { "HELP", "250 Supported commands: AUTH DATA HELP LHLO MAIL NOOP QUIT RCPT RSET VRFY" },
        { "HELP LHLO", "250 Syntax: LHLO hostname" },
        lhlo,
        { "MAIL FROM:<a@example.org> BODY=8BITMIME", "250 OK" },
      } },

    { name = "one reply per recipient in RCPT order, from handle_DATA's table: 250, 550, 452 mixed",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "one@x.test", "bad@x.test", "two@x.test", "full@x.test" },
        { send = MSG },
        expects{
          "250 2.1.5 <one@x.test> delivered (21 bytes)",
          "550 5.1.1 <bad@x.test> no such user",
          "250 2.1.5 <two@x.test> delivered (21 bytes)",
          "452 4.2.2 <full@x.test> mailbox full",
        },
        { "NOOP", "250 OK" }),
      stderr_has = { "for 4 recipients: LMTP: 2 of 4 recipients delivered" } },

    { name = "a missing or invalid entry is a hook error for that recipient only (451 4.3.0)",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "one@x.test", "missing@x.test", "invalid@x.test" },
        { send = MSG },
        expects{ "250 2.1.5 <one@x.test> delivered (21 bytes)", h.LOCAL_ERROR, h.LOCAL_ERROR }),
      stderr_has = {
        "hook handle_DATA failed for <missing@x.test>: its table has nil for this recipient",
        "hook handle_DATA failed for <invalid@x.test>: its table has number for this recipient",
      } },

    { name = "a status string is every recipient's reply",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "string@x.test", "b@x.test", "c@x.test" }, { send = MSG },
        expects{ "250 2.0.0 one for all", "250 2.0.0 one for all", "250 2.0.0 one for all" },
        { "NOOP", "250 OK" }) },

    { name = "a hook error gives 451 for every recipient; the session goes on",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "boom@x.test", "b@x.test" }, { send = MSG },
        expects{ h.LOCAL_ERROR, h.LOCAL_ERROR }, { "NOOP", "250 OK" }),
      stderr_has = { "exploded" } },

    { name = "handle_DATA returning nothing is a hook error: 451 for every recipient",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "nothing@x.test", "b@x.test" }, { send = MSG },
        expects{ h.LOCAL_ERROR, h.LOCAL_ERROR }, { "NOOP", "250 OK" }),
      stderr_has = { "expected a status line, a table of them by recipient, or smtpd.MISSING" } },

    { name = "handle_exception's status goes to every recipient",
      source = SOURCE .. 'function handle_exception(err) return "421 4.3.0 try later" end\n',
      args = { "--lmtp" },
      dialogue = h.steps(transaction{ "boom@x.test", "b@x.test", "c@x.test" }, { send = MSG },
        expects{ "421 4.3.0 try later", "421 4.3.0 try later", "421 4.3.0 try later" }) },

    { name = "without handle_DATA every recipient gets 250 OK",
      source = "", args = { "--lmtp" },
      dialogue = h.steps(transaction{ "a@x.test", "b@x.test" }, { send = MSG },
        expects{ "250 OK", "250 OK" }) },

    { name = "a refused message is refused once per recipient (552 over data_size_limit)",
      source = SOURCE, args = { "--lmtp" }, options = { data_size_limit = 10 },
      dialogue = h.steps(
        { { "LHLO client.test", match = "250%-SIZE 10\n" }, { "MAIL FROM:<s@x.test>", "250 OK" },
          { "RCPT TO:<a@x.test>", "250 OK" }, { "RCPT TO:<b@x.test>", "250 OK" },
          { "DATA", "354 End data with <CR><LF>.<CR><LF>" } },
        { send = "Subject: a long line of text\r\n.\r\n" },
        expects{ "552 Error: Too much mail data", "552 Error: Too much mail data" },
        { "NOOP", "250 OK" }) },

    { name = "a rejected RCPT gets no reply after DATA; the accepted ones do, in order",
      source = SOURCE .. [[
function handle_RCPT(server, session, envelope, address, options)
  if address:find("^nouser") then return "550 5.1.1 no such user" end
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end
]],
      args = { "--lmtp" },
      dialogue = {
        lhlo, { "MAIL FROM:<s@x.test>", "250 OK" },
        { "RCPT TO:<one@x.test>", "250 OK" }, { "RCPT TO:<nouser@x.test>", "550 5.1.1 no such user" },
        { "RCPT TO:<bad@x.test>", "250 OK" },
        { "DATA", "354 End data with <CR><LF>.<CR><LF>" }, { send = MSG },
        { expect = "250 2.1.5 <one@x.test> delivered (21 bytes)" },
        { expect = "550 5.1.1 <bad@x.test> no such user" },
        { "NOOP", "250 OK" },
      } },

    { name = "the whole transaction pipelined in one write: every reply, in order",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(
        { send = "LHLO client.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<one@x.test>\r\n"
          .. "RCPT TO:<bad@x.test>\r\nDATA\r\n" .. MSG .. "MAIL FROM:<s2@x.test>\r\n"
          .. "RCPT TO:<two@x.test>\r\nDATA\r\n" .. MSG .. "QUIT\r\n" },
        { expect = LHLO }, expects{ "250 OK", "250 OK", "250 OK",
          "354 End data with <CR><LF>.<CR><LF>",
          "250 2.1.5 <one@x.test> delivered (21 bytes)", "550 5.1.1 <bad@x.test> no such user",
          "250 OK", "250 OK", "354 End data with <CR><LF>.<CR><LF>",
          "250 2.1.5 <two@x.test> delivered (21 bytes)", "221 Bye" }) },

    { name = "a waiting handle_DATA holds back pipelined commands, which keep their order",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "sleep1@x.test", "b@x.test" },
        { send = MSG .. "NOOP lmtp\r\nRSET\r\n" },
        expects{ "250 2.1.5 <sleep1@x.test> delivered (21 bytes)",
          "250 2.1.5 <b@x.test> delivered (21 bytes)", "250 lmtp=true", "250 OK" }) },

    { name = "hook_timeout mid-wait: 451 for every recipient, the session goes on",
      source = SOURCE, args = { "--lmtp" },
      dialogue = h.steps(transaction{ "sleep30@x.test", "b@x.test", "c@x.test" }, { send = MSG },
        expects{ h.LOCAL_ERROR, h.LOCAL_ERROR, h.LOCAL_ERROR }, { "NOOP", "250 OK" }),
      stderr_has = { "handle_DATA still waiting for smtpd.sleep after hook_timeout (2 s)" } },

    { name = "handle_EHLO runs for LHLO with LMTP's default lines",
      source = [[
function handle_EHLO(server, session, envelope, hostname, responses)
  session.host_name = hostname
  responses[#responses] = "250 HELP " .. tostring(session.lmtp) .. " " .. #responses
  return responses
end
]],
      args = { "--lmtp" },
      dialogue = { { "LHLO client.test", { "250-mx.test", "250-SIZE 33554432", "250-8BITMIME",
        "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP true 6" } },
        { "MAIL FROM:<a@x.test>", "250 OK" } } },

    { name = "the script's options = { lmtp = true } turns LMTP on",
      source = 'options = { lmtp = true }\n',
      dialogue = { { "EHLO client.test", '500 Error: command "EHLO" not recognized' }, lhlo } },

    { name = "-o lmtp=false wins over the script's lmtp = true (as every -o does)",
      source = 'options = { lmtp = true }\n'
        .. 'function handle_NOOP(s, session) return "250 lmtp=" .. tostring(session.lmtp) end\n',
      options = { lmtp = false },
      dialogue = { h.ehlo, { "NOOP", "250 lmtp=false" },
        { "LHLO client.test", '500 Error: command "LHLO" not recognized' } } },

    { name = "without --lmtp SMTP is unchanged: session.lmtp is false",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP lmtp", "250 lmtp=false" } } },
  }

  it("a bad lmtp value is refused with the option's message", function()
    local status, out = testing.check{ source = "options = { lmtp = 'yes please' }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'lmtp' must be a boolean", 1, true), out)
  end)

  it("serves another client while handle_DATA waits; a disconnect mid-wait is cancelled", function()
    local srv = testing.start{ source = SOURCE, args = { "--lmtp" } }
    local ok, err = pcall(function()
      local a, b = srv:connect(), srv:connect()
      for _, line in ipairs{ "LHLO a.test", "MAIL FROM:<s@x.test>", "RCPT TO:<sleep2@x.test>",
        "RCPT TO:<b@x.test>", "DATA" } do
        assert(a:cmd(line))
      end
      assert(a:send(MSG))
      assert.equal(250, (b:cmd("NOOP")))
      assert.is_nil((a:reply(0.05)), "handle_DATA answered before the other client")
      assert.equal("2.1.5 <sleep2@x.test> delivered (21 bytes)", select(2, a:reply(5)))
      assert.equal("2.1.5 <b@x.test> delivered (21 bytes)", select(2, a:reply(5)))
      a:close()
      -- a client gone while handle_DATA waits: the wait is abandoned
      local c = srv:connect()
      for _, line in ipairs{ "LHLO c.test", "MAIL FROM:<s@x.test>", "RCPT TO:<sleep1@x.test>", "DATA" } do
        assert(c:cmd(line))
      end
      assert(c:send(MSG))
      c:close()
      u.wait_log(srv, "abandoning suspended hook handle_DATA")
      socket.sleep(1.2) -- past the sleep: the cancelled timer never fires into the freed session
      assert.equal(250, (b:cmd("NOOP")))
      b:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
    assert.is_nil(srv:stderr():find("ERROR", 1, true), srv:stderr())
  end)

  it("a reload during handle_DATA's wait: the replies come from the old generation", function()
    local srv = u.start{ source = SOURCE, args = { "--lmtp" } }
    local ok, err = pcall(function()
      local a = srv:connect()
      for _, line in ipairs{ "LHLO a.test", "MAIL FROM:<s@x.test>", "RCPT TO:<sleep1@x.test>",
        "RCPT TO:<b@x.test>", "DATA" } do
        assert(a:cmd(line))
      end
      assert(a:send(MSG))
      u.reload(srv, (SOURCE:gsub("delivered %(", "v2 delivered (")), 2)
      assert.equal("2.1.5 <sleep1@x.test> delivered (21 bytes)", select(2, a:reply(5)))
      assert.equal("2.1.5 <b@x.test> delivered (21 bytes)", select(2, a:reply(5)))
      a:close()
      local b = srv:connect()
      for _, line in ipairs{ "LHLO b.test", "MAIL FROM:<s@x.test>", "RCPT TO:<one@x.test>", "DATA" } do
        assert(b:cmd(line))
      end
      assert(b:send(MSG))
      assert.equal("2.1.5 <one@x.test> v2 delivered (21 bytes)", select(2, b:reply(5)))
      b:close()
    end)
    u.stop(srv)
    if not ok then error(err, 0) end
  end)

  it("a reload that turns lmtp on applies to connections accepted after it", function()
    local srv = u.start{ source = "options = { lmtp = false }\n" }
    local ok, err = pcall(function()
      local a = srv:connect()
      assert.equal(250, (a:cmd("EHLO a.test")))
      u.reload(srv, "options = { lmtp = true }\n", 2)
      local b = srv:connect()
      assert.equal(500, (b:cmd("EHLO b.test")))
      assert.equal(250, (b:cmd("LHLO b.test")))
      -- the older connection keeps the protocol it started with
      assert.equal(250, (a:cmd("EHLO a.test")))
      a:close()
      b:close()
    end)
    u.stop(srv)
    if not ok then error(err, 0) end
  end)

  it("descriptors and RSS stay flat over 10,000 LMTP transactions with waiting handle_DATA", function()
    local srv = testing.start{ source = FLAT, args = { "--lmtp" } }
    local ok, err = pcall(function()
      local function batch(n)
        local c = srv:connect()
        local out = { "LHLO c.test\r\n" }
        for _ = 1, n do
          out[#out + 1] = "MAIL FROM:<s@x.test>\r\nRCPT TO:<ok@x.test>\r\nRCPT TO:<ok2@x.test>\r\nDATA\r\n"
            .. MSG
        end
        assert(c:send(table.concat(out)))
        assert.equal(250, (c:reply()))
        for _ = 1, n do
          for _ = 1, 4 do assert(c:reply()) end
          assert.equal("2.0.0 delivered to ok@x.test", select(2, c:reply()))
          assert.equal("2.0.0 delivered to ok2@x.test", select(2, c:reply()))
        end
        assert.equal(250, (c:cmd("NOOP")))
        c:close()
      end
      batch(200)
      local fd0, rss0 = u.fd_count(srv.pid), u.rss_kb(srv.pid)
      for _ = 1, 49 do batch(200) end
      local fd1, rss1 = u.fd_count(srv.pid), u.rss_kb(srv.pid)
      assert.is_true(fd1 <= fd0, ("descriptors grew: %d -> %d"):format(fd0, fd1))
      -- ASan's quarantine holds freed memory: its leak check at exit stands in.
      assert.is_true(hu.sanitized(srv.pid) or rss1 - rss0 < 4096,
        ("RSS grew: %d kB -> %d kB"):format(rss0, rss1))
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)
end)

-- Postfix's lmtp client delivering into luasmtpd --lmtp: a private Postfix
-- instance configured entirely here (its own config_directory,
-- queue_directory and data_directory under a temporary directory, loopback
-- ports only, no DNS, maillog_file for its log), its smtpd on a free port
-- as the entry and default_transport = lmtp:inet:127.0.0.1:PORT. Stopped by
-- its master's PID.
describe("LMTP with Postfix's lmtp client", function()
  local function free_port()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    return tonumber(port)
  end

  local MAIN_CF = [[
compatibility_level = 3.6
queue_directory = DIR/queue
data_directory = DIR/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.test
mydomain = test
myorigin = postfix.test
mydestination =
relayhost =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
default_transport = lmtp:inet:127.0.0.1:LMTP_PORT
relay_transport = lmtp:inet:127.0.0.1:LMTP_PORT
maillog_file_prefixes = DIR
maillog_file = DIR/maillog
biff = no
smtputf8_enable = no
]]

  -- No chroot: the daemons run from the queue directory as it is.
  local MASTER_CF = [[
127.0.0.1:SMTP_PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
]]

  -- Writes each message's sender and recipients to the file named by the
  -- script's first argument; one recipient is refused, one deferred.
  local HANDLER = [[
local path = ...
function handle_DATA(server, session, envelope)
  local t = {}
  for _, r in ipairs(envelope.rcpt_tos) do
    if r:find("^bad@") then t[r] = "550 5.1.1 <" .. r .. "> no such user"
    elseif r:find("^later@") then t[r] = "452 4.2.2 <" .. r .. "> mailbox full"
    else t[r] = "250 2.1.5 <" .. r .. "> delivered" end
  end
  local rcpts = {}
  for i, r in ipairs(envelope.rcpt_tos) do rcpts[i] = r end
  table.sort(rcpts)
  local f = assert(io.open(path, "a"))
  f:write(("from=<%s> lmtp=%s rcpts=%s body=%s\n"):format(envelope.mail_from, tostring(session.lmtp),
    table.concat(rcpts, ","), tostring(envelope.content:find("hello from postfix", 1, true) ~= nil)))
  f:close()
  return t
end
]]

  it("delivers one message with every recipient; Postfix logs each recipient's own status", function()
    assert.truthy(io.open("/usr/sbin/postfix"), "postfix is not installed (tools/deps.sh installs it)")
    local dir = u.tempdir()
    local master_pid
    local srv
    local ok, err = pcall(function()
      -- The daemons run as the postfix user and must reach the queue.
      assert(os.execute("chmod 755 " .. u.shell_quote(dir)) == 0)
      for _, d in ipairs{ "conf", "queue", "data" } do
        assert(os.execute("mkdir " .. u.shell_quote(dir .. "/" .. d)) == 0)
      end
      assert(os.execute("chown postfix " .. u.shell_quote(dir .. "/data")) == 0)
      local seen = dir .. "/seen"
      srv = testing.start{ source = HANDLER, args = { "--lmtp" }, script_args = { seen } }
      local smtp_port = free_port()
      local function fill(t)
        return (t:gsub("DIR", dir):gsub("LMTP_PORT", tostring(srv.port)):gsub("SMTP_PORT", tostring(smtp_port)))
      end
      u.write_file(dir .. "/conf/main.cf", fill(MAIN_CF))
      u.write_file(dir .. "/conf/master.cf", fill(MASTER_CF))
      local out = u.sh("postfix -c " .. u.shell_quote(dir .. "/conf") .. " start", 60)
      master_pid = u.wait_until(function()
        local f = io.open(dir .. "/queue/pid/master.pid")
        local pid = f and tonumber(f:read("*a"):match("%d+"))
        if f then f:close() end
        return pid
      end, 30, "Postfix's master.pid", function() return out .. (u.read_file(dir .. "/maillog") or "") end)
      -- Postfix's smtpd as the entry: one message, four recipients.
      local c = u.wait_until(function() return testing.connect("127.0.0.1", smtp_port) end, 30,
        "Postfix's smtpd on 127.0.0.1:" .. smtp_port)
      assert.equal(250, (c:cmd("EHLO client.test")))
      assert.equal(250, (c:cmd("MAIL FROM:<sender@example.org>")))
      for _, r in ipairs{ "one@example.net", "bad@example.net", "two@example.net", "later@example.net" } do
        assert.equal(250, (c:cmd("RCPT TO:<" .. r .. ">")))
      end
      local code, text = c:data("Subject: via postfix\r\n\r\nhello from postfix\r\n")
      assert.equal(250, code, text)
      c:cmd("QUIT")
      c:close()
      -- luasmtpd's handler saw it with every recipient, over LMTP ...
      u.wait_until(function()
        local s = u.read_file(seen) or ""
        return s:find("from=<sender@example.org> lmtp=true rcpts=bad@example.net,later@example.net,"
          .. "one@example.net,two@example.net body=true", 1, true)
      end, 60, "the message in luasmtpd's handler", function() return u.read_file(seen) or "" end)
      -- ... and Postfix took each recipient's reply as that recipient's.
      local log = u.wait_until(function()
        local s = u.read_file(dir .. "/maillog") or ""
        local n = select(2, s:gsub("status=", "status="))
        return n >= 4 and s:find("to=<later@example.net>.-status=deferred") and s
      end, 60, "four delivery statuses in Postfix's maillog",
        function() return u.read_file(dir .. "/maillog") or "" end)
      assert.truthy(log:find("to=<one@example.net>, relay=127%.0%.0%.1%[127%.0%.0%.1%]:" .. srv.port
        .. ",[^\n]-dsn=2.1.5, status=sent %(250 2.1.5 <one@example.net> delivered%)"), log)
      assert.truthy(log:find("to=<two@example.net>,[^\n]-status=sent %(250 2.1.5 <two@example.net> delivered%)"), log)
      assert.truthy(log:find("to=<bad@example.net>,[^\n]-dsn=5.1.1, status=bounced %(host 127.0.0.1%[127.0.0.1%] "
        .. "said: 550 5.1.1 <bad@example.net> no such user"), log)
      assert.truthy(log:find("to=<later@example.net>,[^\n]-dsn=4.2.2, status=deferred %(host 127.0.0.1%[127.0.0.1%] "
        .. "said: 452 4.2.2 <later@example.net> mailbox full"), log)
    end)
    if master_pid then
      u.kill(master_pid, 15)
      pcall(u.wait_until, function() return not u.alive(master_pid) end, 30, "Postfix's master to exit")
    end
    if srv then srv:stop() end
    local maillog = u.read_file(dir .. "/maillog") or ""
    u.rmdir(dir)
    if not ok then error(tostring(err) .. "\n--- Postfix maillog ---\n" .. maillog, 0) end
  end)
end)
