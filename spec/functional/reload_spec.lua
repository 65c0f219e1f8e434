-- Hot reload (design.md "Policy generations and hot reload"): SIGHUP and
-- --watch build a new policy generation for new connections while open
-- sessions finish on theirs; a script that fails to load is refused with its
-- reason and the old generation keeps serving; retired generations drain;
-- per-hook deadlines and the Lua memory limit turn a stuck or greedy hook
-- into a reply; -t validates exactly like a reload; many reloads under load
-- lose no session and leak no descriptor.
local h = require "spec.functional.common"
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"

local function noop_script(text, extra)
  return ([[
options = { auth_require_tls = false }
function handle_NOOP(server, session, envelope, arg)
  return "250 %s"
end
]]):format(text) .. (extra or "")
end
local GEN_ONE, GEN_TWO = noop_script("gen one"), noop_script("gen two")

-- Alice's password is `pass`; everything else is refused.
local function password_script(pass)
  return ([[
local smtpd = require "smtpd"
options = { auth_require_tls = false }
function authenticator(server, session, envelope, mechanism, auth_data)
  return smtpd.AuthResult{ success = auth_data.login == "alice" and auth_data.password == %q,
    handled = false }
end
]]):format(pass)
end

local function noop(c)
  local code, text = c:cmd("NOOP")
  return code and (code .. " " .. text) or ("no reply: " .. tostring(text))
end

describe("reload", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("changes the outcome for new connections while an open one keeps its policy", function()
    srv = u.start{ source = GEN_ONE }
    local a = srv:connect()
    assert.equal("250 gen one", noop(a))
    u.reload(srv, GEN_TWO, 2)
    local b = srv:connect()
    assert.equal("250 gen two", noop(b))
    assert.equal("250 gen one", noop(a))
    assert.equal("250 gen two", noop(srv:connect()))
    assert.equal("250 gen one", noop(a))
    assert.matches("connection from 127%.0%.0%.1 port %d+ %(policy generation 2%)", srv:stderr())
    a:close()
    b:close()
  end)

  it("lets an AUTH LOGIN suspended in challenge_auth complete on the old script", function()
    srv = u.start{ source = password_script("old-pw") }
    local a = srv:connect()
    assert.equal(250, (a:cmd("EHLO a.test")))
    assert.equal("334 " .. h.b64("User Name\0"), table.concat(select(3, a:cmd("AUTH LOGIN")), "\n"))
    assert.equal("334 " .. h.b64("Password\0"), table.concat(select(3, a:cmd(h.b64("alice"))), "\n"))
    -- a waits in the built-in LOGIN mechanism's challenge_auth
    u.reload(srv, password_script("new-pw"), 2)
    local b = srv:connect()
    assert.equal(250, (b:cmd("EHLO b.test")))
    assert.equal(h.AUTH_INVALID, table.concat(select(3, b:auth_login("alice", "old-pw")), "\n"))
    assert.equal(h.AUTH_OK, table.concat(select(3, a:cmd(h.b64("old-pw"))), "\n"))
    local c = srv:connect()
    assert.equal(250, (c:cmd("EHLO c.test")))
    assert.equal(h.AUTH_OK, table.concat(select(3, c:auth_login("alice", "new-pw")), "\n"))
    assert.equal("250 OK", noop(a))
    a:close()
    b:close()
    c:close()
  end)

  it("reloads options: the EHLO of a new connection reflects them, an open one keeps its own", function()
    srv = u.start{ source = "options = { auth_require_tls = false }\n" }
    local a = srv:connect()
    assert.same(h.EHLO_AUTH, select(3, a:cmd("EHLO a.test")))
    u.reload(srv, 'options = { auth_require_tls = false, auth_exclude_mechanism = { "LOGIN" },\n' ..
      '  data_size_limit = 1000 }\n', 2)
    local b = srv:connect()
    assert.same({ "250-mx.test", "250-SIZE 1000", "250-8BITMIME", "250-PIPELINING", "250-AUTH PLAIN",
      "250 HELP" }, select(3, b:cmd("EHLO b.test")))
    assert.equal(h.UNRECOGNIZED_MECH, table.concat(select(3, b:cmd("AUTH LOGIN")), "\n"))
    assert.same(h.EHLO_AUTH, select(3, a:cmd("EHLO a.test")))
    a:close()
    b:close()
  end)
end)

-- Scripts a reload must refuse. `reason` is a plain string the refusal
-- must contain (PATH stands for the script's path), `args` extra server
-- arguments, `replace` a function that puts the broken script in place.
local REFUSED = {
  { name = "a syntax error",
    source = "options = { auth_require_tls = false }\nfunction handle_NOOP(server,\n  return\nend\n",
    reason = "PATH:3: " },
  { name = "a runtime error at load",
    source = "local t = nil\nlocal x = t.field\n",
    reason = "PATH:2: attempt to index" },
  { name = "an invalid option value",
    source = "-- options\noptions = { timeout = \"x\" }\n",
    reason = "PATH:2: ", also = "timeout" },
  { name = "an unknown option",
    source = "-- options\noptions = { no_such_option = 1 }\n",
    reason = "PATH:2: ", also = "no_such_option" },
  { name = "a handler entry that is not a function",
    source = "-- hooks\nhandle_NOOP = 5\n",
    reason = "PATH", also = "handle_NOOP" },
  { name = "the script file deleted",
    replace = function(path) assert(os.remove(path)) end,
    reason = "PATH", also = "No such file" },
  { name = "a top level that never finishes (--load-timeout 1)",
    source = "local n = 0\nwhile true do end\n",
    args = { "--load-timeout", "1" },
    reason = "PATH:2", also = "did not finish within 1" },
}

describe("a reload that fails", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  for _, case in ipairs(REFUSED) do
    it("is refused for " .. case.name .. ": the reason is logged and the old policy keeps serving", function()
      srv = u.start{ source = GEN_ONE, args = case.args }
      local path = srv.script
      local a = srv:connect()
      assert.equal("250 gen one", noop(a))
      if case.replace then case.replace(path) else u.write_file(path, case.source) end
      srv:signal("HUP")
      local log = u.wait_log(srv, "reload refused, keeping generation 1: ")
      local reason = u.refusal_reason(log)
      assert.truthy(reason:find((case.reason:gsub("PATH", path)), 1, true),
        ("expected the reason to contain %q, got %q"):format(case.reason:gsub("PATH", path), reason))
      if case.also then
        assert.truthy(reason:find(case.also, 1, true),
          ("expected the reason to contain %q, got %q"):format(case.also, reason))
      end
      assert.equal(0, u.count(log, "loaded (policy generation 2)"))
      -- the old generation serves old and new connections
      assert.equal("250 gen one", noop(a))
      assert.equal("250 gen one", noop(srv:connect()))
      -- and the server still takes a good script afterwards
      u.write_file(path, GEN_TWO)
      srv:signal("HUP")
      u.wait_log(srv, "loaded (policy generation ", 2)
      assert.equal("250 gen two", noop(srv:connect()))
      assert.equal("250 gen one", noop(a))
      a:close()
    end)
  end
end)

describe("-t", function()
  for _, case in ipairs(REFUSED) do
    it("refuses " .. case.name .. " with the message a reload logs", function()
      local srv = u.start{ source = GEN_ONE, args = case.args }
      local ok, err = pcall(function()
        local path = srv.script
        if case.replace then case.replace(path) else u.write_file(path, case.source) end
        srv:signal("HUP")
        local reason = u.refusal_reason(u.wait_log(srv, "reload refused, keeping generation 1: "))
        local status, out = u.check(path, case.args)
        assert.equal(1, status)
        assert.equal(reason, (out:gsub("\n$", "")))
      end)
      u.stop(srv)
      if not ok then error(err, 0) end
    end)
  end

  it("accepts what a reload accepts", function()
    local dir = u.tempdir()
    local path = dir .. "/handler.lua"
    u.write_file(path, password_script("pw") .. GEN_TWO)
    local status, out = u.check(path)
    u.rmdir(dir)
    assert.equal(0, status, out)
  end)
end)

describe("--watch", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("picks up a rename into place, and refuses a broken save while the old policy serves", function()
    srv = u.start{ source = GEN_ONE, args = { "--watch" } }
    local a = srv:connect()
    assert.equal("250 gen one", noop(a))
    u.rename_into_place(srv, GEN_TWO)
    u.wait_log(srv, "loaded (policy generation 2)")
    assert.equal("250 gen two", noop(srv:connect()))
    assert.equal("250 gen one", noop(a))
    u.rename_into_place(srv, "function handle_NOOP(\n")
    local log = u.wait_log(srv, "reload refused, keeping generation 2: ")
    assert.truthy(u.refusal_reason(log):find(srv.script .. ":", 1, true), u.refusal_reason(log))
    assert.equal("250 gen two", noop(srv:connect()))
    -- a later good save is picked up again (the watch survived both renames)
    u.rename_into_place(srv, noop_script("gen three"))
    -- (a refused reload may use up a generation number: count the loads)
    u.wait_log(srv, "loaded (policy generation ", 3)
    assert.equal("250 gen three", noop(srv:connect()))
    a:close()
  end)
end)

describe("a retired generation", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("is drained: after --drain-timeout its sessions get 421 at their next command", function()
    srv = u.start{ source = GEN_ONE, args = { "--drain-timeout", "1" } }
    local a = srv:connect()
    assert.equal("250 gen one", noop(a))
    u.reload(srv, GEN_TWO, 2)
    local b = srv:connect()
    -- right after the reload the old session is still served
    assert.equal("250 gen one", noop(a))
    -- then, once the drain timeout has passed, its next command gets 421
    local last = u.wait_until(function()
      local r = noop(a)
      if r ~= "250 gen one" then return r end
    end, 10, "the old session's NOOP to stop answering 250 gen one", u.log_tail(srv))
    assert.equal("421 4.3.2 mx.test Error: policy reloaded, try again later", last)
    assert.is_true(a:is_closed(5))
    -- the session on the new generation is not touched
    assert.equal("250 gen two", noop(b))
    assert.equal("250 gen two", noop(srv:connect()))
    b:close()
  end)
end)

describe("hook limits", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("hook_timeout: a mechanism whose challenge is never answered gets 454, the session goes on", function()
    srv = u.start{ source = h.ALICE .. [[
options = { auth_require_tls = false, hook_timeout = 1 }
function auth_WAIT(server, args)
  local r = server:challenge_auth("waiting")
  return r == "go"
end
]] }
    local a = srv:connect()
    assert.equal(250, (a:cmd("EHLO a.test")))
    assert.equal("334 " .. h.b64("waiting"), table.concat(select(3, a:cmd("AUTH WAIT")), "\n"))
    -- the client never answers; the deadline answers for it
    local code, text, lines = a:reply(10)
    assert.equal(h.AUTH_TEMPFAIL, code and table.concat(lines, "\n") or tostring(text))
    assert.equal("250 OK", noop(a))
    assert.equal(h.AUTH_OK, table.concat(select(3, a:auth_plain("alice", "s3cret")), "\n"))
    assert.matches("WAIT[^\n]*hook_timeout", srv:stderr())
    a:close()
  end)

  it("lua_memory_limit: a memory bomb is a hook error; the session and the server go on", function()
    srv = u.start{ source = [[
options = { auth_require_tls = false, lua_memory_limit = 16 }
local n = 0
function handle_NOOP(server, session, envelope, arg)
  if arg == "bomb" then
    -- some 130 MB if nothing stopped it: far past the limit, yet bounded
    local t = {}
    for i = 1, 1e6 do t[i] = ("x"):rep(100) .. i end
    return "250 survived " .. #t
  elseif arg == "some" then
    -- about 4 MiB: fits once the bomb's garbage is gone
    local t = {}
    for i = 1, 40000 do t[i] = ("y"):rep(100) .. i end
    return "250 allocated " .. #t
  end
  -- a new string each time: even a small reply allocates
  n = n + 1
  return "250 alive " .. n
end
]] }
    local a = srv:connect()
    assert.matches("^250 alive %d+$", noop(a))
    assert.equal(h.LOCAL_ERROR, table.concat(select(3, a:cmd("NOOP bomb")), "\n"))
    assert.matches("^250 alive %d+$", noop(a))
    assert.equal("250 allocated 40000", table.concat(select(3, a:cmd("NOOP some")), "\n"))
    local b = srv:connect()
    assert.matches("^250 alive %d+$", noop(b))
    assert.equal(h.LOCAL_ERROR, table.concat(select(3, b:cmd("NOOP bomb")), "\n"))
    assert.equal("250 allocated 40000", table.concat(select(3, b:cmd("NOOP some")), "\n"))
    assert.matches("^250 alive %d+$", noop(srv:connect()))
    assert.matches("hook handle_NOOP failed: not enough memory", srv:stderr())
    a:close()
    b:close()
  end)
end)

describe("50 reloads in a row while clients authenticate", function()
  it("leave no failed session and no growth of open descriptors", function()
    local scripts = { password_script("s3cret") .. GEN_ONE, password_script("s3cret") .. GEN_TWO }
    local srv = u.start{ source = scripts[1] }
    local loop
    local ok, err = pcall(function()
      -- warm up: one session, so lazily opened descriptors exist before we count
      local warm, why = u.auth_session(srv.host, srv.port, "alice", "s3cret")
      assert(warm, why)
      local fds_before = u.fd_count(srv.pid)
      loop = u.spawn_client_loop(srv, srv.script_dir, 100000, 120)
      local spanning, spanning_failed = 0, {}
      for gen = 2, 51 do
        -- a session that starts before the reload and ends after it
        local c = srv:connect()
        assert.equal(250, (c:cmd("EHLO span.test")))
        local even = gen % 2 == 0
        u.reload(srv, even and scripts[2] or scripts[1], gen)
        local code = c:auth_plain("alice", "s3cret")
        local quit = c:cmd("QUIT")
        spanning = spanning + 1
        if code ~= 235 or quit ~= 221 then spanning_failed[#spanning_failed + 1] = c:transcript_text() end
        c:close()
        -- a new connection is on the new script
        local d = srv:connect()
        assert.equal(even and "250 gen two" or "250 gen one", noop(d))
        d:close()
        local done, failure = u.auth_session(srv.host, srv.port, "alice", "s3cret")
        assert(done, failure)
      end
      local sessions, failures, out = loop.finish()
      assert.is_not_nil(sessions, out)
      assert.equal(0, failures, out)
      assert.is_true(sessions > 0, out)
      assert.equal(50, spanning)
      assert.same({}, spanning_failed)
      assert.equal(1, u.count(srv:stderr(), "loaded (policy generation 51)"))
      assert.equal(0, u.count(srv:stderr(), "reload refused"))
      -- every session has ended; wait for the server to notice the last one
      local fds_after
      u.wait_until(function()
        fds_after = u.fd_count(srv.pid)
        return math.abs(fds_after - fds_before) <= 2
      end, 10, "the descriptor count to settle", function()
        return ("before %d, now %d:\n%s"):format(fds_before, fds_after,
          u.sh("ls -l /proc/" .. srv.pid .. "/fd"))
      end)
    end)
    if loop then loop.finish() end   -- the client process ends before the server does
    u.stop(srv)
    if not ok then error(err, 0) end
  end)
end)

describe("a SIGHUP during start-up", function()
  it("neither kills the server nor is lost while the script's top level still runs", function()
    local dir = u.tempdir()
    local marker, path = dir .. "/loading", dir .. "/handler.lua"
    local function slow_script(text)
      return ([[
local f = io.open(%q, "a")
f:write("loading\n")
f:close()
-- a second of wall-clock time (a blocking sleep, as a slow DNS lookup would be)
pcall(require("ffi").cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
require("ffi").C.poll(nil, 0, 1000)
]]):format(marker) .. noop_script(text)
    end
    u.write_file(path, slow_script("gen one"))
    local proc = u.launch(dir, { "--handler", path, "-l", "127.0.0.1:0", "--hostname", "mx.test",
      "--load-timeout", "30" })
    local ok, err = pcall(function()
      u.wait_until(function() return u.read_file(marker) ~= "" end, 10, "the script's top level to start")
      -- the operator edits the script and signals while the server is still starting
      u.write_file(path, noop_script("gen two"))
      assert.is_true(u.kill(proc.pid, 1))
      local port = u.wait_until(function()
        return not u.alive(proc.pid) or proc.stderr():match("listening on 127%.0%.0%.1:(%d+)")
      end, 15, "the server to listen or die", proc.stderr)
      assert.is_true(u.alive(proc.pid), "the server died of the SIGHUP:\n" .. proc.stderr())
      local got = u.wait_until(function()
        local c = testing.connect("127.0.0.1", tonumber(port))
        if not c then return false end
        local r = noop(c)
        c:close()
        return r == "250 gen two" and r
      end, 10, "a new connection on the new script", proc.stderr)
      assert.equal("250 gen two", got)
      assert.is_true(u.alive(proc.pid))
    end)
    proc.kill()
    u.rmdir(dir)
    if not ok then error(err, 0) end
  end)
end)
