-- smtpd.crypt (async-api.md 6): verify and hash run on the thread pool
-- while the hook waits. Real hashes from mkpasswd (libxcrypt's methods) and
-- the argon2 CLI; a cost above crypt_max_cost, a NUL in the password and a
-- hash no library knows are answered at once. Other clients are served
-- during a slow verify; disconnect, hook_timeout and reload detach the job
-- (it finishes on its thread, its result is dropped); a tiny pool says
-- "busy"; --hash-password makes hashes verify accepts. The order of events
-- is asserted, never elapsed time.
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"
local hu = require "spec.functional.hostile_util"
local h = require "spec.functional.common"

local PW, BAD = "right-pw", "wrong-pw"

local function sh_line(cmd)
  local out = u.sh(cmd, 60)
  local line = out:match("^(%S+)\n$")
  assert(line, ("%s printed %q"):format(cmd, out))
  return line
end

local function mkpasswd(method, extra)
  return sh_line(("mkpasswd -m %s %s %s"):format(method, extra or "", u.shell_quote(PW)))
end

local function argon2(flag)
  return sh_line(("printf %%s %s | argon2 saltsaltsalt %s -e -t 2 -m 12 -p 1"):format(u.shell_quote(PW), flag))
end

-- Every method libxcrypt hashes (mkpasswd -m help) and the three argon2s.
local HASHES = {
  yescrypt = mkpasswd("yescrypt"),
  gost_yescrypt = mkpasswd("gost-yescrypt"),
  scrypt = mkpasswd("scrypt"),
  bcrypt = mkpasswd("bcrypt"),
  bcrypt_a = mkpasswd("bcrypt-a"),
  sha512crypt = mkpasswd("sha512crypt"),
  sha512crypt_rounds = mkpasswd("sha512crypt", "-R 10000"),
  sha256crypt = mkpasswd("sha256crypt"),
  sunmd5 = mkpasswd("sunmd5"),
  md5crypt = mkpasswd("md5crypt"),
  bsdicrypt = mkpasswd("bsdicrypt"),
  descrypt = mkpasswd("descrypt"),
  nt = mkpasswd("nt"),
  argon2id = argon2("-id"),
  argon2i = argon2("-i"),
  argon2d = argon2("-d"),
  -- Costly but allowed (2^14 of crypt_max_cost's 2^15): about a second.
  slow = mkpasswd("bcrypt", "-R 14"),
}
local METHODS = {}
for name in pairs(HASHES) do if name ~= "slow" then METHODS[#METHODS + 1] = name end end
table.sort(METHODS)

local function lua_table(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = ("  [%q] = %q,"):format(k, t[k]) end
  return "{\n" .. table.concat(parts, "\n") .. "\n}"
end

local function source(version, opts)
  return ([[
local smtpd = require "smtpd"
local H = %s
local VERSION = %q
options = { auth_require_tls = false, hook_timeout = %s }
local function show(...)
  local t = {}
  for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
  return table.concat(t, " ")
end
function handle_NOOP(server, session, envelope, arg)
  arg = arg or ""
  local name, pw = arg:match("^verify (%%S+) (.*)$")
  if name then return "250 " .. VERSION .. " " .. show(smtpd.crypt.verify(pw, H[name] or name)) end
  if arg == "nul" then return "250 " .. VERSION .. " " .. show(smtpd.crypt.verify("right\0pw", H.yescrypt)) end
  if arg == "hashnul" then return "250 " .. VERSION .. " " .. show(smtpd.crypt.hash("right\0pw")) end
  local method, pw2 = arg:match("^hash (%%S+) (.*)$")
  if method then
    local h, err = smtpd.crypt.hash(pw2, method ~= "default" and method or nil)
    if not h then return "250 nil " .. err end
    return "250 " .. show(h:match("^%%$[^$]+%%$") or h:match("^SCRAM%%-SHA%%-%%d+%%$4096:"), smtpd.crypt.verify(pw2, h),
      smtpd.crypt.verify(pw2 .. "x", h))
  end
  local n, which = arg:match("^loop (%%d+) (%%S+)$")
  if n then
    for i = 1, tonumber(n) do
      local ok, err = smtpd.crypt.verify(%q, H[which])
      if ok ~= true then return "250 failed at " .. i .. ": " .. tostring(err) end
    end
    return "250 looped " .. n
  end
  if arg == "badarg" then smtpd.crypt.verify(nil, H.yescrypt) end
  return "250 " .. VERSION
end
]]):format(lua_table(HASHES), version, tostring(opts and opts.hook_timeout or 120), PW)
end

local function reply(c, line)
  local code, text = c:cmd(line)
  return code, text
end

describe("smtpd.crypt.verify", function()
  local srv
  setup(function() srv = testing.start{ source = source("v1") } end)
  teardown(function() if srv then srv:stop() end end)

  it("verifies a real hash of every method: true for its password, false for another", function()
    local c = srv:connect()
    for _, name in ipairs(METHODS) do
      local code, text = reply(c, ("NOOP verify %s %s"):format(name, PW))
      assert.equal(250, code)
      assert.equal("v1 true", text, name .. " " .. HASHES[name])
      code, text = reply(c, ("NOOP verify %s %s"):format(name, BAD))
      assert.equal(250, code)
      assert.equal("v1 false", text, name .. " " .. HASHES[name])
    end
    c:close()
  end)

  it("refuses a password containing NUL before hashing", function()
    local c = srv:connect()
    assert.equal("v1 nil password contains NUL", select(2, reply(c, "NOOP nul")))
    assert.equal("v1 nil password contains NUL", select(2, reply(c, "NOOP hashnul")))
    c:close()
  end)

  it("answers nil, \"unsupported hash\" for what no library knows", function()
    local c = srv:connect()
    for _, hash in ipairs{ "*", "!", "!" .. HASHES.sha512crypt, "plaintext", "$9$abc$def",
      "$argon2x$v=19$m=4096,t=2,p=1$c2FsdA$aGFzaA", "$argon2id$v=19$m=4096,t=2,p=1$bad",
      "$y$j9T$", "$2b$05$short" } do
      assert.equal("v1 nil unsupported hash", select(2, reply(c, "NOOP verify " .. hash .. " " .. PW)), hash)
    end
    c:close()
  end)

  it("refuses a hash whose cost is above crypt_max_cost as \"cost too high\", without hashing", function()
    local over = {
      HASHES.bcrypt:gsub("^%$2b%$05%$", "$2b$16$"),                 -- 2^16 > 2^15
      HASHES.yescrypt:gsub("^%$y%$j9T%$", "$y$jGT$"),               -- N = 2^19 > 2^18
      HASHES.gost_yescrypt:gsub("^%$gy%$j9T%$", "$gy$jGT$"),
      HASHES.scrypt:gsub("^%$7%$C", "$7$H"),                         -- N = 2^19
      HASHES.sha512crypt:gsub("^%$6%$", "$6$rounds=2000000$"),       -- > 1,000,000 rounds
      HASHES.argon2id:gsub("m=4096", "m=2097152"),                  -- 2 GiB > 1 GiB
      HASHES.argon2i:gsub("t=2", "t=17"),                           -- > 16 passes
      (HASHES.argon2d:gsub("p=1", "p=17")),                         -- > 16 lanes
      -- SunMD5's rounds after "$" as well as after "," (found by fuzz_passhash)
      "$md5,rounds=2000000$saltsalt$abcdefghijklmnopqrstuv",
      "$md5$rounds=2000000$saltsalt$abcdefghijklmnopqrstuv",
    }
    local c = srv:connect()
    for _, hash in ipairs(over) do
      assert.equal("v1 nil cost too high", select(2, reply(c, "NOOP verify " .. hash .. " " .. PW)), hash)
    end
    -- At the limit it verifies (SHA-crypt with its rounds written out).
    assert.equal("v1 true", select(2, reply(c, "NOOP verify sha512crypt_rounds " .. PW)))
    c:close()
  end)

  it("a wrong argument type is a hook error with a readable message", function()
    local c = srv:connect()
    assert.equal(451, (reply(c, "NOOP badarg")))
    assert.equal(250, (reply(c, "NOOP")))
    c:close()
    u.wait_log(srv, "bad argument #1 to 'verify' (string expected, got nil)")
  end)

  it("serves another client while one hook waits on a slow verify", function()
    local a, b = srv:connect(), srv:connect()
    assert(a:send("NOOP verify slow " .. PW .. "\r\n"))
    local code, text = reply(b, "NOOP")
    assert.equal(250, code)
    assert.equal("v1", text)
    assert.is_nil((a:reply(0.05)), "the slow verify answered before the other client")
    code, text = a:reply(20)
    assert.equal(250, code)
    assert.equal("v1 true", text)
    a:close()
    b:close()
  end)

  it("a client that disconnects mid-job: the job finishes, its result is dropped, nothing leaks", function()
    local b = srv:connect()
    local fds = assert(hu.fd_count(srv.pid))
    local a = srv:connect()
    assert(a:send("NOOP verify slow " .. PW .. "\r\n"))
    -- b's reply comes after the loop has read a's line: a's job is queued.
    assert.equal(250, (reply(b, "NOOP")))
    a:close()
    u.wait_log(srv, "abandoning suspended hook handle_NOOP")
    u.wait_log(srv, "smtpd.crypt.verify finished after its hook went away: result dropped", 1, 20)
    hu.wait_until(function() return hu.fd_count(srv.pid) == fds end, 10, "a's descriptor to close")
    assert.equal("v1 true", select(2, reply(b, "NOOP verify md5crypt " .. PW)))
    b:close()
    assert.is_nil(srv:stderr():find(PW, 1, true), "a password reached the log")
  end)

  it("the script's top level cannot wait: the load fails with a readable error", function()
    local status, out = testing.check{ source = 'require("smtpd").crypt.verify("a", "$1$abc$def")\n' }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("smtpd.crypt.verify: cannot wait while the script loads", 1, true), out)
  end)
end)

describe("smtpd.crypt.hash", function()
  local srv
  setup(function() srv = testing.start{ source = source("v1") } end)
  teardown(function() if srv then srv:stop() end end)

  it("hashes with each method and a fresh salt; verify accepts the password and nothing else", function()
    local c = srv:connect()
    for method, prefix in pairs{ default = "$y$", yescrypt = "$y$", bcrypt = "$2b$",
      sha512crypt = "$6$", argon2id = "$argon2id$" } do
      assert.equal(prefix .. " true false", select(2, reply(c, "NOOP hash " .. method .. " " .. PW)), method)
    end
    c:close()
  end)

  it("SCRAM secrets (mechanisms.md): 4096 iterations; verify recomputes the StoredKey", function()
    local c = srv:connect()
    assert.equal("SCRAM-SHA-256$4096: true false", select(2, reply(c, "NOOP hash scram-sha-256 " .. PW)))
    assert.equal("SCRAM-SHA-1$4096: true false", select(2, reply(c, "NOOP hash scram-sha-1 " .. PW)))
    c:close()
  end)

  it("an unknown method raises a readable error", function()
    local c = srv:connect()
    assert.equal(451, (reply(c, "NOOP hash md4 " .. PW)))
    c:close()
    u.wait_log(srv, "unknown method 'md4' (expected yescrypt, bcrypt, sha512crypt, argon2id, "
      .. "scram-sha-256, scram-sha-1)")
  end)

  it("a thousand, then 10,000 cheap verifies: descriptors and RSS stay flat", function()
    local c = srv:connect()
    assert.equal("looped 1000", select(2, reply(c, "NOOP loop 1000 descrypt")))
    local fds, rss = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
    c.timeout = 120
    assert.equal("looped 10000", select(2, c:cmd("NOOP loop 10000 descrypt")))
    local fds2, rss2 = hu.fd_count(srv.pid), hu.rss_kib(srv.pid)
    io.stdout:write(("\ncrypt: 10,000 jobs; fds %d -> %d; VmRSS %d -> %d KiB\n"):format(fds, fds2, rss, rss2))
    assert.equal(fds, fds2)
    assert(hu.sanitized(srv.pid) or rss2 - rss < 2048, ("RSS grew by %d KiB"):format(rss2 - rss))
    c:close()
  end)
end)

describe("smtpd.crypt with a small pool", function()
  it("hook_timeout mid-job: 451; the job still finishes and the thread serves the next one", function()
    local srv = testing.start{ source = source("v1", { hook_timeout = 0.3 }),
      options = { thread_pool_size = 1 } }
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(451, (reply(c, "NOOP verify slow " .. PW)))
      u.wait_log(srv, "handle_NOOP still waiting for smtpd.crypt.verify after hook_timeout")
      u.wait_log(srv, "smtpd.crypt.verify finished after its hook went away: result dropped", 1, 20)
      assert.equal("v1 true", select(2, reply(c, "NOOP verify md5crypt " .. PW)))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("a full pool answers nil, \"busy\" at once; a free one works again", function()
    local srv = testing.start{ source = source("v1"),
      options = { thread_pool_size = 1, thread_pool_queue = 0 } }
    local ok, err = pcall(function()
      local a, b = srv:connect(), srv:connect()
      assert(a:send("NOOP verify slow " .. PW .. "\r\n"))
      assert.equal(250, (reply(b, "NOOP"))) -- a's job holds the one thread now
      assert.equal("v1 nil busy", select(2, reply(b, "NOOP verify md5crypt " .. PW)))
      assert.equal("v1 true", select(2, a:reply(20)))
      assert.equal("v1 true", select(2, reply(b, "NOOP verify md5crypt " .. PW)))
      a:close()
      b:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
    assert.truthy(srv:stderr():find("thread pool: 1 thread,", 1, true), srv:stderr())
  end)

  it("crypt_max_cost lowers the limit; a bad value is refused with its message", function()
    local srv = testing.start{ source = source("v1"), options = { crypt_max_cost = "bcrypt=12" } }
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal("v1 nil cost too high", select(2, reply(c, "NOOP verify slow " .. PW)))
      assert.equal("v1 true", select(2, reply(c, "NOOP verify bcrypt " .. PW)))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
    for value, msg in pairs{
      ["bcrypt=40"] = "option 'crypt_max_cost': bcrypt must be an integer from 4 to 31",
      ["pbkdf2=3"] = "option 'crypt_max_cost' has an unknown key 'pbkdf2'",
      ["argon2_memory=12q"] = "option 'crypt_max_cost': argon2_memory must be a size",
      ["bcrypt"] = "option 'crypt_max_cost' must be a table or a string of costs",
    } do
      local status, out = testing.check{ source = "", args = { "-o", "crypt_max_cost=" .. value } }
      assert.are_not.equal(0, status)
      assert.truthy(out:find(msg, 1, true), out)
    end
    local status, out = testing.check{ source = 'options = { crypt_max_cost = { argon2_memory = "64m", ' ..
      'argon2_time = 4, bcrypt = 12, scrypt = 16, rounds = 5000, argon2_lanes = 2 } }\n' }
    assert.equal(0, status, out)
    status, out = testing.check{ source = "options = { thread_pool_size = 1000 }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("option 'thread_pool_size' must be at most 256", 1, true), out)
  end)
end)

describe("smtpd.crypt in AUTH", function()
  local AUTH_SOURCE = ([[
local smtpd = require "smtpd"
options = { auth_require_tls = false, hook_timeout = 0.5 }
local users = { alice = %q, slow = %q }
function authenticator(server, session, envelope, mechanism, auth_data)
  local hash = users[auth_data.login]
  local ok = hash and smtpd.crypt.verify(auth_data.password, hash)
  return smtpd.AuthResult{ success = ok == true, handled = false }
end
]]):format(HASHES.argon2id, HASHES.slow)

  it("an authenticator verifies on the pool: 235 for the password, 535 for another, 454 on hook_timeout", function()
    local srv = testing.start{ source = AUTH_SOURCE }
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(250, (c:cmd("EHLO client.test")))
      local code, text = c:cmd("AUTH PLAIN " .. h.plain("alice", PW))
      assert.equal(235, code)
      assert.equal("2.7.0 Authentication successful", text)
      c:close()
      c = srv:connect()
      assert.equal(250, (c:cmd("EHLO client.test")))
      assert.equal(535, (c:cmd("AUTH PLAIN " .. h.plain("alice", BAD))))
      -- The costly hash outlives hook_timeout: a temporary failure, and the session goes on.
      code, text = c:cmd("AUTH PLAIN " .. h.plain("slow", PW))
      assert.equal(454, code)
      assert.equal("4.7.0 Temporary authentication failure", text)
      assert.equal(250, (c:cmd("NOOP")))
      c:close()
      u.wait_log(srv, "still waiting for smtpd.crypt.verify after hook_timeout")
    end)
    srv:stop()
    if not ok then error(err, 0) end
    assert.is_nil(srv:stderr():find(PW, 1, true), "a password reached the log")
  end)
end)

describe("smtpd.crypt across a reload", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  it("a verify running when SIGHUP arrives completes on its generation", function()
    srv = u.start{ source = source("v1") }
    local a = srv:connect()
    assert(a:send("NOOP verify slow " .. PW .. "\r\n"))
    u.reload(srv, source("v2"), 2)
    assert.equal("v1 true", select(2, a:reply(20)))
    assert.equal("v1", select(2, a:cmd("NOOP")))
    a:close()
    local b = srv:connect()
    assert.equal("v2 true", select(2, reply(b, "NOOP verify md5crypt " .. PW)))
    b:close()
  end)
end)

describe("thread_pool_size across a reload", function()
  local srv
  after_each(function()
    u.stop(srv)
    srv = nil
  end)

  local function pool_source(n)
    return ([[
local smtpd = require "smtpd"
options = { auth_require_tls = false, thread_pool_size = %d }
function handle_NOOP() return "250 " .. tostring(smtpd.crypt.verify(%q, %q)) end
]]):format(n, PW, HASHES.md5crypt)
  end

  it("the pool starts at the first job; a reload that raises thread_pool_size adds threads", function()
    srv = u.start{ source = pool_source(1) }
    assert.is_nil(srv:stderr():find("thread pool:", 1, true), "the pool started before any job")
    local c = srv:connect()
    assert.equal("true", select(2, c:cmd("NOOP")))
    c:close()
    u.wait_log(srv, "thread pool: 1 thread, at most 1024 jobs waiting")
    u.reload(srv, pool_source(3), 2)
    c = srv:connect()
    assert.equal("true", select(2, c:cmd("NOOP")))
    c:close()
    u.wait_log(srv, "thread pool: 3 threads (was 1)")
  end)
end)

describe("luasmtpd --hash-password", function()
  local bin = hu.binary()

  local function hash_password(input, method)
    local out = u.sh(("printf %s | %s --hash-password %s; echo \"exit=$?\""):format(u.shell_quote(input),
      u.shell_quote(bin), method and u.shell_quote(method) or ""), 60)
    local body, status = out:match("^(.*)exit=(%d+)\n$")
    return tonumber(status), body
  end

  it("prints a hash of the password on a pipe for each method; smtpd.crypt.verify accepts it", function()
    local made = {}
    for _, m in ipairs{ "yescrypt", "bcrypt", "sha512crypt", "argon2id", "" } do
      local status, out = hash_password(PW .. "\n", m ~= "" and m or nil)
      assert.equal(0, status, out)
      made[#made + 1] = assert(out:match("^(%$%S+)\n$"), out)
    end
    local status, out = hash_password(PW .. "\r\n", "bcrypt")
    assert.equal(0, status, out)
    made[#made + 1] = assert(out:match("^(%$%S+)\n$"), out)
    assert.truthy(made[5]:find("^%$y%$"), made[5])
    local srv = testing.start{ source = source("v1") }
    local ok, err = pcall(function()
      local c = srv:connect()
      for _, hash in ipairs(made) do
        assert.equal("v1 true", select(2, reply(c, "NOOP verify " .. hash .. " " .. PW)), hash)
        assert.equal("v1 false", select(2, reply(c, "NOOP verify " .. hash .. " " .. BAD)), hash)
      end
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("on a terminal it prompts and does not echo the password", function()
    -- A pseudo-terminal from python3's pty module; the password is typed
    -- only once the prompt is out (echo is off before it is printed).
    local py = [[
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "--hash-password", "bcrypt"])
out, deadline = b"", time.time() + 30
def read_some():
    global out
    r, _, _ = select.select([fd], [], [], 0.2)
    if not r:
        return True
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        return False
    out += chunk
    return bool(chunk)
while b"Password: " not in out and time.time() < deadline and read_some():
    pass
os.write(fd, b"tty-secret\n")
while time.time() < deadline and read_some():
    pass
if time.time() >= deadline:
    os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("latin-1").replace("\r", ""))
sys.stdout.write("exit=%d\n" % os.waitstatus_to_exitcode(status))
]]
    local script = os.tmpname()
    u.write_file(script, py)
    local out = u.sh("python3 " .. u.shell_quote(script) .. " " .. u.shell_quote(bin), 60)
    os.remove(script)
    assert.truthy(out:find("exit=0\n$"), out)
    assert.truthy(out:find("Password: ", 1, true), out)
    assert.is_nil(out:find("tty-secret", 1, true), "the password was echoed: " .. out)
    local hash = assert(out:match("\n(%$2b%$10%$%S+)\n"), out)
    local srv = testing.start{ source = source("v1") }
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal("v1 true", select(2, reply(c, "NOOP verify " .. hash .. " tty-secret")))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("a bad method is an error message and exit status 2", function()
    local status, out = hash_password(PW .. "\n", "md4")
    assert.equal(2, status)
    assert.truthy(out:find("unknown method 'md4'", 1, true), out)
    status, out = hash_password(PW .. "\n", "scram-sha-256")
    assert.equal(0, status)
    assert.truthy(out:find("^SCRAM%-SHA%-256%$4096:[%w+/=]+%$[%w+/=]+:[%w+/=]+\n$"), out)
    status, out = hash_password("", "bcrypt")
    assert.equal(1, status)
    assert.truthy(out:find("no password", 1, true), out)
  end)
end)
