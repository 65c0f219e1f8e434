-- The installed test helper from a user's own project: `cmake --install`
-- into a temporary prefix, then busted in a directory outside the checkout,
-- with only the prefix's bin/ on PATH before the system's and the prefix's
-- share/lua/5.1 as lpath (what README "Testing your script with busted"
-- shows), no LUASMTPD_BIN and no LUA_PATH: the user's spec must find the
-- installed helper and the installed binary, and pass environment variables
-- and script arguments to the server.
local u = require "spec.functional.reload_util"

local q = u.shell_quote

-- The user's handler: its upstream comes from `...`, a greeting word from
-- the environment.
local POLICY = [[
local upstream = ...
function handle_NOOP()
  return "250 " .. tostring(os.getenv("POLICY_WORD")) .. " via " .. tostring(upstream)
end
function handle_RCPT(server, session, envelope, address)
  if not address:match("@example%.com$") then return "550 5.7.1 relaying denied" end
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end
]]

local function user_spec(prefix)
  return ([[
local testing = require "smtpd.testing"

describe("my policy", function()
  local srv
  setup(function()
    srv = testing.start { handler = "policy.lua", env = { POLICY_WORD = "hello" },
      script_args = { "relay.example" } }
  end)
  teardown(function() if srv then srv:stop() end end)

  it("runs the installed server and helper", function()
    assert.equal(%q, testing.binary_path())
    assert.equal(%q, package.searchpath("smtpd.testing", package.path))
  end)

  it("passes env and script arguments", function()
    local c = srv:connect()
    local code, text = c:cmd("NOOP")
    assert.same({ 250, "hello via relay.example" }, { code, text })
    c:close()
  end)

  it("refuses relaying", function()
    local c = srv:connect()
    c:cmd("EHLO client.test")
    c:cmd("MAIL FROM:<a@example.com>")
    assert.equal(550, (c:cmd("RCPT TO:<x@elsewhere.test>")))
    c:close()
  end)
end)
]]):format(prefix .. "/bin/luasmtpd", prefix .. "/share/lua/5.1/smtpd/testing.lua")
end

describe("installed smtpd.testing in a user's project", function()
  local tmp

  setup(function() tmp = u.tempdir() end)
  teardown(function() u.rmdir(tmp) end)

  it("installs and runs a user's spec outside the checkout", function()
    local bin = os.getenv("LUASMTPD_BIN") or "build/luasmtpd"
    local build_dir = bin:match("^(.*)/[^/]+$") or "."
    local prefix, project = tmp .. "/prefix", tmp .. "/project"
    local out = u.sh("cmake --install " .. q(build_dir) .. " --prefix " .. q(prefix), 120)
    assert.truthy(io.open(prefix .. "/bin/luasmtpd"), out)
    assert.truthy(io.open(prefix .. "/share/lua/5.1/smtpd/testing.lua"), out)

    u.sh("mkdir -p " .. q(project .. "/spec"))
    u.write_file(project .. "/policy.lua", POLICY)
    u.write_file(project .. "/spec/policy_spec.lua", user_spec(prefix))
    u.write_file(project .. "/.busted", ([[
return { default = { lua = "luajit", lpath = %q } }
]]):format(prefix .. "/share/lua/5.1/?.lua"))

    out = u.sh(("cd %s && env -u LUASMTPD_BIN -u LUA_PATH -u LUA_CPATH PATH=%s busted -o TAP; echo exit=$?")
      :format(q(project), q(prefix .. "/bin:/usr/local/bin:/usr/bin:/bin")), 120)
    assert.matches("\nexit=0\n$", out)
    assert.matches("ok 3 ", out, 1, true)
    assert.not_matches("not ok", out, 1, true)
  end)
end)
