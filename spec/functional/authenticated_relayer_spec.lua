-- scripts/examples/authenticated_relayer end to end (delivery.md 6): users
-- made with its make_user_db.sh (luasmtpd --hash-password argon2id and
-- sqlite3), the real server with STARTTLS, swaks-like dialogues from the
-- testing client, and real upstreams: aiosmtpd on 127.0.0.1 as the
-- smarthost, and for MX routing dnsmasq answering example.test's MX
-- records (mail.example.test 127.0.0.10 preference 10, mx2.example.test
-- 127.0.0.11 preference 20) with aiosmtpd on 127.0.0.11 only: the first MX
-- is down, the second takes the message.
local testing = require "smtpd.testing"
local hu = require "spec.functional.hostile_util"
local up = require "spec.functional.upstream_util"
local du = require "spec.functional.dns_util"

local DIR = "scripts/examples/authenticated_relayer"
local MESSAGE = "From: alice@example.com\r\nSubject: relayed\r\n\r\n.dot\r\nbody\r\n"

local function make_db(dir)
  local db = dir .. "/users.db"
  local out = hu.sh(("printf 's3cret\\n' | LUASMTPD=%s %s/make_user_db.sh %s alice"):format(
    hu.shell_quote(hu.binary()), DIR, hu.shell_quote(db)), 60)
  assert(out:find("alice added to", 1, true), out)
  return db
end

local function start(db, args, options)
  local script_args = { db }
  for _, a in ipairs(args or {}) do script_args[#script_args + 1] = a end
  return testing.start{ handler = DIR .. "/server.lua", tls = "starttls", script_args = script_args,
    options = options }
end

-- EHLO, STARTTLS, EHLO, AUTH PLAIN: returns the AUTH reply's code and text.
local function login(c, user, pass)
  c:cmd("EHLO client.test")
  assert.equal(220, (c:cmd("STARTTLS")))
  c:tls_handshake()
  c:cmd("EHLO client.test")
  local code, text = c:auth_plain(user, pass)
  return code, text
end

describe("the authenticated relayer", function()
  local dir, db, upstream
  setup(function()
    dir = hu.tempdir()
    db = make_db(dir)
  end)
  teardown(function() hu.rmdir(dir) end)
  after_each(function()
    up.stop(upstream)
    upstream = nil
  end)

  it("stores argon2id hashes in userauth", function()
    local out = hu.sh("sqlite3 " .. hu.shell_quote(db) .. " 'SELECT username, hashpass FROM userauth'")
    assert.truthy(out:find("^alice|%$argon2id%$"), out)
  end)

  it("no AUTH before STARTTLS; a wrong password is 535; mail needs AUTH", function()
    upstream = up.start()
    local srv = start(db, { "127.0.0.1:" .. upstream.port })
    local ok, err = pcall(function()
      local c = srv:connect()
      local _, _, lines = c:cmd("EHLO client.test")
      assert.is_nil(table.concat(lines, "\n"):find("AUTH", 1, true))
      local code = c:cmd("MAIL FROM:<alice@example.com>")
      assert.equal(530, code)
      c:close()
      c = srv:connect()
      assert.same({ 535, "5.7.8 Authentication credentials invalid" }, { login(c, "alice", "wrong") })
      c:close()
      c = srv:connect()
      assert.equal(535, (login(c, "mallory", "s3cret")))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("relays to the smarthost byte-exact, 250 only after the upstream accepted", function()
    upstream = up.start()
    local srv = start(db, { "127.0.0.1:" .. upstream.port })
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(235, (login(c, "alice", "s3cret")))
      assert.equal(250, (c:cmd("MAIL FROM:<alice@example.com>")))
      assert.equal(250, (c:cmd("RCPT TO:<friend@example.net>")))
      local code, text = c:data(MESSAGE)
      assert.equal(250, code)
      assert.equal("2.0.0 Ok: queued as UP1", text)
      local msg = up.events(upstream, "message")[1]
      assert.is_table(msg)
      assert.equal(MESSAGE, msg.data)
      assert.same({ "friend@example.net" }, msg.rcpt_tos)
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("an upstream that is down: 451, and nothing reported accepted", function()
    local srv = start(db, { "127.0.0.1:" .. hu.free_port() })
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(235, (login(c, "alice", "s3cret")))
      assert.equal(250, (c:cmd("MAIL FROM:<alice@example.com>")))
      local code, text = c:cmd("RCPT TO:<friend@example.net>")
      assert.same({ 451, "4.4.1 Error: upstream unavailable, try again later" }, { code, text })
      assert.equal(503, (c:cmd("DATA")))
      c:close()
    end)
    srv:stop()
    if not ok then error(err, 0) end
  end)

  it("MX routing: lowest preference first, the next MX when it is down; one domain per message", function()
    local dns = du.start_dnsmasq()
    local port = hu.free_port()
    upstream = up.start{ host = "127.0.0.11", port = port }
    local srv = start(db, { "", tostring(port) }, { resolver = "127.0.0.1:" .. dns.port })
    local ok, err = pcall(function()
      local c = srv:connect()
      assert.equal(235, (login(c, "alice", "s3cret")))
      assert.equal(250, (c:cmd("MAIL FROM:<alice@example.com>")))
      assert.equal(250, (c:cmd("RCPT TO:<bob@example.test>")))
      local code, text = c:cmd("RCPT TO:<carol@example.net>")
      assert.same({ 452, "4.5.3 Error: one domain per message, send the others in another transaction" },
        { code, text })
      assert.equal(250, (c:data(MESSAGE)))
      local msg = up.events(upstream, "message")[1]
      assert.is_table(msg)
      assert.equal(MESSAGE, msg.data)
      assert.same({ "bob@example.test" }, msg.rcpt_tos)
      -- The first MX was tried first (its address, 127.0.0.10 or ::10, does not answer).
      hu.wait_log(srv, "relay: upstream at mail.example.test: ")
      c:close()
    end)
    srv:stop()
    dns.close()
    if not ok then error(err, 0) end
  end)
end)
