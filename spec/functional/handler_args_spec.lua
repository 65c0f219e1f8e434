-- Handler arguments: `luasmtpd --handler FILE.lua -- ARG...` passes the
-- arguments to the script's chunk as `...` (aiosmtpd's `-c CLASS ARGS...`),
-- in every policy generation (reloads get the same ones), in every worker,
-- and to `-t`.
local testing = require "smtpd.testing"
local u = require "spec.functional.reload_util"

-- Reads its upstream host and port from `...` and says what it got.
local UPSTREAM = [[
local upstream, port = ...
local n = select("#", ...)
function handle_NOOP(server, session, envelope, arg)
  return ("250 n=%d upstream=%s port=%s"):format(n, tostring(upstream), tostring(port))
end
]]

-- Refuses to load without two arguments, as a script needing them would.
local NEEDS_TWO = [[
local upstream, port = ...
assert(upstream and tonumber(port), "usage: luasmtpd --handler relay.lua -- HOST PORT")
function handle_NOOP() return "250 relaying to " .. upstream .. ":" .. port end
]]

local function noop(srv)
  local c = srv:connect()
  local code, text = c:cmd("NOOP")
  c:close()
  return code, text
end

describe("handler arguments after --", function()
  local srv
  after_each(function()
    if srv then srv:stop() end
    srv = nil
  end)

  it("reach the chunk as ..., spaces and leading dashes kept", function()
    srv = testing.start{ source = UPSTREAM, script_args = { "relay.example", "-x y" } }
    assert.same({ 250, "n=2 upstream=relay.example port=-x y" }, { noop(srv) })
  end)

  it("are none without --", function()
    srv = testing.start{ source = UPSTREAM }
    assert.same({ 250, "n=0 upstream=nil port=nil" }, { noop(srv) })
  end)

  it("are the same after a reload (SIGHUP)", function()
    srv = testing.start{ source = UPSTREAM, script_args = { "relay.example", "2525" } }
    srv:signal("HUP")
    u.wait_log(srv, "loaded (policy generation 2)")
    local c = srv:connect()
    local code, text = c:cmd("NOOP")
    c:close()
    assert.same({ 250, "n=2 upstream=relay.example port=2525" }, { code, text })
    assert.matches("connection from 127%.0%.0%.1 port %d+ %(policy generation 2%)", srv:stderr())
  end)

  it("reach every worker", function()
    srv = testing.start{ source = UPSTREAM, args = { "--workers", "2" },
      script_args = { "relay.example", "2525" } }
    for _ = 1, 6 do
      assert.same({ 250, "n=2 upstream=relay.example port=2525" }, { noop(srv) })
    end
  end)

  it("are what -t checks with", function()
    local status, out = testing.check{ source = NEEDS_TWO, script_args = { "relay.example", "25" } }
    assert.equal(0, status, out)
    assert.matches("OK", out)
    status, out = testing.check{ source = NEEDS_TWO }
    assert.equal(1, status, out)
    assert.matches("usage: luasmtpd %-%-handler relay%.lua %-%- HOST PORT", out)
  end)

  it("must follow --: a stray word is still an error", function()
    local status, out = testing.check{ source = UPSTREAM, args = { "relay.example" } }
    assert.equal(2, status, out)
    assert.matches("unexpected argument 'relay.example'", out, 1, true)
  end)
end)
