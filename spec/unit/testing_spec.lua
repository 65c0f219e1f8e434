-- The testing helper itself (lua/smtpd/testing.lua), against a fake server
-- so that it can be checked without the real binary.
local testing = require "smtpd.testing"
local mime = require "mime"
local socket = require "socket"

local FAKE = "spec/unit/fixtures/fake_luasmtpd"

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

describe("smtpd.testing", function()
  describe("start/stop", function()
    local srv
    after_each(function() if srv then srv:stop() end end)

    it("starts, passes options and hostname, and stops with SIGTERM", function()
      srv = testing.start{ binary = FAKE, source = "-- handler",
        options = { auth_require_tls = false, auth_exclude_mechanism = { "LOGIN", "PLAIN" },
          data_size_limit = 1024, ident = "Hi there" },
        args = { "--timeout", "5" } }
      assert.equal("127.0.0.1", srv.host)
      assert.is_true(srv.port > 0)
      assert.is_number(srv.pid)
      assert.is_true(srv:running())
      local c = srv:connect()
      assert.equal(220, c.greeting_code)
      assert.equal("mx.test fake", c.greeting_text)
      c:close()
      local err = srv:stderr()
      assert.matches("--handler %S+/handler%.lua", err)
      -- --ready-fd first, `args` last (they may end with -c NAME ARGS).
      assert.matches("fake: argv --ready-fd 3 --handler", err, 1, true)
      assert.matches("-o auth_exclude_mechanism=LOGIN,PLAIN -o auth_require_tls=false " ..
        "-o data_size_limit=1024 -o ident=Hi there --timeout 5\n", err, 1, true)
      assert.matches("--hostname mx.test", err, 1, true)
      assert.equal("fake: hello on stdout\n", srv:stdout())
      local dir = srv.dir
      assert.is_true(exists(dir .. "/handler.lua"))
      assert.equal(143, srv:stop())
      assert.is_false(srv:running())
      assert.equal(143, srv:stop(), "stop is idempotent")
      assert.is_false(exists(dir .. "/handler.lua"), "temp dir removed")
      assert.matches("fake: argv", srv:stderr(), 1, true)
    end)

    it("reports the status of a server that died by itself", function()
      srv = testing.start{ binary = FAKE }
      srv:signal(9)
      assert.equal(137, srv:stop())
      assert.is_false(srv:running())
    end)

    it("raises with the server's stderr when start-up fails", function()
      local t0 = socket.gettime()
      local ok, err = pcall(testing.start, { binary = FAKE, args = { "--fail" } })
      assert.is_false(ok)
      assert.matches("did not start", err)
      assert.matches("status 3", err)
      assert.matches("fake: refusing to start", err)
      assert.is_true(socket.gettime() - t0 < 5)
    end)

    it("raises when the binary does not exist", function()
      local ok, err = pcall(testing.start, { binary = "/nonexistent/luasmtpd" })
      assert.is_false(ok)
      assert.matches("did not start", err)
      assert.matches("status 127", err)
    end)

    it("gives up on a server that never becomes ready, and kills it", function()
      local old = testing.start_timeout
      testing.start_timeout = 0.5
      local ok, err = pcall(testing.start, { binary = FAKE, args = { "--hang" } })
      testing.start_timeout = old
      assert.is_false(ok)
      assert.matches("no ready line within 0.5 s", err)
    end)

    it("refuses table options that have no command-line form", function()
      local ok, err = pcall(testing.start, { binary = FAKE,
        options = { command_call_limit = { ["*"] = 3 } } })
      assert.is_false(ok)
      assert.matches("command_call_limit cannot be given on the command line", err)
    end)
  end)

  describe("client", function()
    local srv, c
    setup(function() srv = testing.start{ binary = FAKE } end)
    teardown(function() if srv then srv:stop() end end)
    before_each(function() c = srv:connect() end)
    after_each(function() c:close() end)

    it("reads single and multi-line replies", function()
      local code, text, lines = c:cmd("NOOP")
      assert.same({ 250, "OK", { "250 OK" } }, { code, text, lines })
      code, text, lines = c:cmd("MULTI")
      assert.same({ 250, "a\nb b\nc", { "250-a", "250-b b", "250 c" } }, { code, text, lines })
    end)

    it("keeps the trailing space of an empty 334", function()
      local code, text, lines = c:cmd("EMPTY334")
      assert.same({ 334, "", { "334 " } }, { code, text, lines })
    end)

    it("rejects a reply line not ended by CRLF", function()
      local code, err = c:cmd("BARELF")
      assert.is_nil(code)
      assert.matches("not ended by CRLF", err)
    end)

    it("times out instead of hanging", function()
      c.timeout = 0.3
      local t0 = socket.gettime()
      local code, err = c:cmd("SILENT")
      assert.is_nil(code)
      assert.equal("timeout", err)
      assert.is_true(socket.gettime() - t0 < 2)
      assert.is_false(c:is_closed(0.1))
    end)

    it("sees the server close the connection", function()
      assert.equal(421, (c:cmd("CLOSE")))
      assert.is_true(c:is_closed())
      local code, err = c:reply()
      assert.is_nil(code)
      assert.equal("closed", err)
    end)

    it("dot-stuffs DATA and sends CRLF line ends", function()
      local code, text = c:data(".leading\nmiddle\n.\n..two\nlast")
      assert.equal(250, code)
      assert.equal("..leading\r\nmiddle\r\n..\r\n...two\r\nlast\r\n", mime.unb64(text))
    end)

    it("builds AUTH PLAIN and LOGIN arguments", function()
      assert.equal("AHVzZXIAcGFzcw==", testing.b64("\0user\0pass"))
      assert.equal(250, (c:auth_plain("user", "pass")))
      assert.equal(250, (c:auth_login("user", "pass")))
      assert.equal("", testing.b64(""))
    end)
  end)

  describe("dialogue", function()
    local srv
    setup(function() srv = testing.start{ binary = FAKE } end)
    teardown(function() if srv then srv:stop() end end)

    it("passes a matching dialogue", function()
      local conns = testing.dialogue(srv, {
        { "NOOP", "250 OK", greeting = "220 mx.test fake" },
        { "MULTI", { "250-a", "250-b b", "250 c" } },
        { "MULTI", "250-a\n250-b b\n250 c" },
        { "MULTI", match = "^250%-a\n" },
        { send = "NOOP\r\nNOOP\r\n" },
        { expect = "250 OK" },
        { code = 250 },
        { "QUIT", "221 Bye", closed = true },
      })
      assert.is_true(conns.a:is_closed())
    end)

    it("reports the step, the expectation and the transcript on mismatch", function()
      local ok, err = pcall(testing.dialogue, srv, {
        { "NOOP", "250 OK" },
        { "MULTI", { "250-a", "250 c" } },
      })
      assert.is_false(ok)
      assert.matches('step 2 ("MULTI")', err, 1, true)
      assert.matches('expected {"250-a", "250 c"}', err, 1, true)
      assert.matches("C: NOOP\\r\\n", err, 1, true)
      assert.matches("S: 250-b b", err, 1, true)
    end)

    it("fails when the server does not close", function()
      local old = testing.timeout
      testing.timeout = 0.3
      local ok, err = pcall(testing.dialogue, srv, { { "NOOP", "250 OK", closed = true } })
      testing.timeout = old
      assert.is_false(ok)
      assert.matches("expected the server to close the connection", err, 1, true)
    end)

    it("runs interleaved connections", function()
      testing.dialogue(srv, {
        { "NOOP", "250 OK" },
        { "QUIT", "221 Bye", closed = true },
        { conn = "b", "NOOP", "250 OK" },
        { conn = "b", close = true },
      })
    end)
  end)

  describe("start passes", function()
    local srv
    after_each(function() if srv then srv:stop() end end)

    it("env as the server's environment and script_args after -- (last)", function()
      srv = testing.start{ binary = FAKE, env = { FAKE_ENV = "it's set" },
        args = { "--timeout", "5" }, script_args = { "relay.example", "-x y" } }
      local err = srv:stderr()
      assert.matches("fake: FAKE_ENV=it's set\n", err, 1, true)
      assert.matches("--timeout 5 -- relay.example -x y\n", err, 1, true)
    end)

    it("refuses a bad env name", function()
      local ok, err = pcall(testing.start, { binary = FAKE, env = { ["A B"] = "x" } })
      assert.is_false(ok)
      assert.matches("env has a bad variable name: A B", err, 1, true)
    end)
  end)

  describe("binary_path", function()
    -- A fresh LuaJIT in a directory of its own, with only the PATH and
    -- LUASMTPD_BIN given here, prints what the helper would run.
    local dir, LUAJIT
    local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
    local function sh(cmd)
      local p = assert(io.popen("timeout 30 sh -c " .. q(cmd) .. " 2>&1"))
      local out = p:read("*a")
      p:close()
      return out
    end
    local function lookup(env_bin, path, opts)
      local cmd = ("cd %s && env -u LUASMTPD_BIN %s PATH=%s LUA_PATH=%s %s -e %s"):format(
        q(dir), env_bin and ("LUASMTPD_BIN=" .. q(env_bin)) or "", q(path),
        q(os.getenv("PWD") .. "/lua/?.lua;;"), LUAJIT,
        q("print(require('smtpd.testing').binary_path(" .. (opts or "") .. "))"))
      return (sh(cmd):gsub("\n$", ""))
    end
    setup(function()
      LUAJIT = sh("command -v luajit"):match("^(%S+)")
      dir = sh("mktemp -d /tmp/luasmtpd-binpath.XXXXXX"):match("^(%S+)")
      sh("mkdir -p " .. q(dir .. "/bin") .. " " .. q(dir .. "/noexec") .. " && printf '#!/bin/sh\n' > " ..
        q(dir .. "/bin/luasmtpd") .. " && chmod +x " .. q(dir .. "/bin/luasmtpd") ..
        " && touch " .. q(dir .. "/noexec/luasmtpd"))
    end)
    teardown(function()
      if dir and dir:match("^/tmp/luasmtpd%-binpath%.") then sh("rm -rf " .. q(dir)) end
    end)

    -- No system directories: an installed luasmtpd must not take part.
    local SYS = "/nonexistent"

    it("takes the binary argument first", function()
      assert.equal("/x/luasmtpd", lookup("/env/luasmtpd", dir .. "/bin:" .. SYS, "{ binary = '/x/luasmtpd' }"))
    end)

    it("then $LUASMTPD_BIN", function()
      assert.equal("/env/luasmtpd", lookup("/env/luasmtpd", dir .. "/bin:" .. SYS))
    end)

    it("then the first executable luasmtpd on PATH", function()
      assert.equal(dir .. "/bin/luasmtpd", lookup(nil, dir .. "/noexec:" .. dir .. "/bin:" .. SYS))
    end)

    it("then build/luasmtpd of a checkout", function()
      assert.equal("build/luasmtpd", lookup(nil, dir .. "/noexec:" .. SYS))
    end)
  end)
end)
