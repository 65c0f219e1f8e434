-- Brute-force defence for AUTH (mechanisms.md 3): the one failure log line
-- and the shipped fail2ban filter, tested with fail2ban-regex against the
-- server's real log output from IPv4 and IPv6 clients.
local testing = require "smtpd.testing"
local h = require "spec.functional.common"

local FILTER = "contrib/fail2ban/filter.d/luasmtpd.conf"
-- Penalty delays off where a case is not about them (step 1 has none yet).
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
