-- smtpd.sleep, the first wait kind beside the client's next line, on the
-- hook layer's one wait machinery: any command hook may wait; other
-- clients are served meanwhile; hook_timeout, disconnect and reload cancel
-- through the same record; where a hook may not wait the binding raises a
-- readable error. The order of events is asserted, never elapsed time.
local socket = require "socket"
local testing = require "smtpd.testing"
local h = require "spec.functional.common"
local u = require "spec.functional.reload_util"

local SOURCE = [[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = 2 }
local log = {}
function handle_NOOP(server, session, envelope, arg)
  local n = tonumber(arg and arg:match("^sleep ([%d.]+)$"))
  if n then
    smtpd.sleep(n)
    return "250 slept " .. n
  end
  if arg == "bad" then smtpd.sleep(-1) end
  if arg == "nested" then
    local co = coroutine.create(function() smtpd.sleep(0.01) end)
    local ok, err = coroutine.resume(co)
    return "250 nested " .. tostring(ok) .. " " .. tostring(err):gsub("^.-: ", "")
  end
  if arg == "yield" then coroutine.yield() end
  if arg == "log" then return "250 " .. table.concat(log, ",") end
  return "250 OK"
end
function handle_MAIL(server, session, envelope, address, options)
  smtpd.sleep(0.2)
  log[#log + 1] = "mail:" .. address
  envelope.mail_from = address
  return "250 OK"
end
function handle_RCPT(server, session, envelope, address, options)
  smtpd.sleep(0.05)
  log[#log + 1] = "rcpt:" .. address
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end
function handle_exception(err)
  if tostring(err):find("in handle_exception", 1, true) then return nil end
  local ok, e = pcall(smtpd.sleep, 0.01)
  if not ok and e:find("cannot wait here (handle_exception)", 1, true) then
    return "451 4.3.0 handle_exception may not wait"
  end
  return nil
end
]]

describe("smtpd.sleep", function()
  h.run{
    { name = "a command hook sleeps and then replies",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP sleep 0.1", "250 slept 0.1" }, { "NOOP", "250 OK" } } },

    { name = "a bad argument is a hook error with a readable message",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP bad", "451 4.3.0 handle_exception may not wait" } },
      stderr_has = { "expected a number of seconds >= 0" } },

    { name = "a coroutine of the script's own cannot wait: readable error, the hook goes on",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP nested", "250 nested false smtpd.sleep: cannot wait inside a coroutine "
        .. "the script created; call it from the hook itself" } } },

    { name = "handle_exception cannot wait (the binding raises there)",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP yield", "451 4.3.0 handle_exception may not wait" }, { "NOOP", "250 OK" } },
      stderr_has = { "handle_NOOP yielded without waiting for anything" } },

    { name = "hook_timeout ends a hook waiting on anything: 451 for a command, the session goes on",
      source = SOURCE,
      dialogue = { h.ehlo, { "NOOP sleep 30", "451 4.3.0 handle_exception may not wait" },
        { "NOOP", "250 OK" } },
      stderr_has = { "handle_NOOP still waiting for smtpd.sleep after hook_timeout (2 s)" } },

    { name = "pipelined commands wait for a sleeping MAIL hook and keep their order and arguments",
      source = SOURCE,
      dialogue = {
        h.ehlo,
        { send = "MAIL FROM:<first@example.org>\r\nRCPT TO:<one@example.org>\r\n"
          .. "RCPT TO:<two@example.org>\r\nNOOP log\r\n" },
        { expect = "250 OK" }, { expect = "250 OK" }, { expect = "250 OK" },
        { expect = "250 mail:first@example.org,rcpt:one@example.org,rcpt:two@example.org" },
      } },
  }

  it("serves another client while one hook sleeps", function()
    local srv = testing.start{ source = SOURCE }
    local ok, err = pcall(function()
      local a, b = srv:connect(), srv:connect()
      assert(a:send("NOOP sleep 1.5\r\n"))
      -- b's NOOP is answered while a's hook still sleeps
      local code, text = b:cmd("NOOP")
      assert.equal(250, code)
      assert.equal("OK", text)
      assert.is_nil((a:reply(0.05)), "the sleeping hook answered before the other client")
      local acode, atext = a:reply(5)
      assert.equal(250, acode)
      assert.equal("slept 1.5", atext)
      a:close()
      b:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("a client that disconnects during the sleep leaves the server serving", function()
    local srv = testing.start{ source = SOURCE }
    local ok, err = pcall(function()
      local a = srv:connect()
      assert(a:send("NOOP sleep 1\r\n"))
      a:close()
      u.wait_log(srv, "abandoning suspended hook handle_NOOP")
      local b = srv:connect()
      assert.equal(250, (b:cmd("NOOP")))
      b:close()
      -- the cancelled timer never fires into the freed session
      socket.sleep(1.2)
      local c = srv:connect()
      assert.equal(250, (c:cmd("NOOP")))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
    assert.is_nil(srv:stderr():find("ERROR", 1, true), srv:stderr())
  end)
end)

describe("smtpd.sleep across a reload", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("a hook sleeping when SIGHUP arrives finishes on its generation; new sessions get the new one", function()
    srv = u.start{ source = SOURCE }
    local a = srv:connect()
    assert(a:send("NOOP sleep 1\r\n"))
    u.write_file(srv.script, (SOURCE:gsub('return "250 OK"\nend', 'return "250 v2"\nend', 1)))
    srv:signal("HUP")
    u.wait_log(srv, "loaded (policy generation 2)")
    local code, text = a:reply(5)
    assert.equal(250, code)
    assert.equal("slept 1", text)
    assert.equal("OK", select(2, a:cmd("NOOP")))
    a:close()
    local b = srv:connect()
    assert.equal("v2", select(2, b:cmd("NOOP")))
    b:close()
  end)
end)

describe("smtpd.sleep where no hook runs", function()
  it("the script's top level cannot wait: the load fails with a readable error", function()
    local status, out = testing.check{ source = 'require("smtpd").sleep(1)\n' }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("smtpd.sleep: cannot wait while the script loads", 1, true), out)
  end)
end)
