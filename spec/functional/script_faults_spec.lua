-- A careless (or hostile) script must never end the process that serves
-- every other client: strict tables whose __index raises, on session,
-- envelope, an AuthResult or its auth_data; finalizers that raise; os.exit.
-- Each case once ended in "PANIC: unprotected error in call to Lua API"
-- (or rc 3) and dropped every session; now the step gets its hook-error
-- reply (451 / 454) and the session and the server go on.
local h = require "spec.functional.common"

local SOURCE = [[
local smtpd = require "smtpd"
local ffi = require "ffi"

local function strict(t)
  return setmetatable(t or {}, {
    __index = function(_, k) error("strict table: no field " .. tostring(k), 2) end,
    __newindex = function(_, k) error("strict table: cannot set " .. tostring(k), 2) end,
  })
end

-- Garbage whose finalizers raise, and enough ballast that the next hook's
-- "make room" collection (outside any hook) runs them.
local ballast
local function raising_garbage(kind)
  -- About 7 MB against lua_memory_limit = 8 (MiB): past the three
  -- quarters at which C collects before a hook runs.
  ballast = {}
  for i = 1, 700 do ballast[i] = string.rep(string.char(65 + i % 26), 10000) .. i end
  local keep = {}
  for i = 1, 50 do
    if kind == "proxy" then
      local u = newproxy(true)
      getmetatable(u).__gc = function() error("finalizer " .. i .. " raised") end
      keep[i] = u
    else
      keep[i] = ffi.gc(ffi.new("int[1]"), function() error("ffi finalizer " .. i .. " raised") end)
    end
  end
  return #keep
end

function handle_NOOP(server, session, envelope, arg)
  if arg == "strict-session" then strict(session)
  elseif arg == "strict-envelope" then strict(envelope)
  elseif arg == "exit" then os.exit(3)
  elseif arg == "gc-proxy" or arg == "gc-ffi" then raising_garbage(arg:sub(4))
  elseif arg == "drop-ballast" then ballast = nil
  end
  return "250 OK " .. (arg or "")
end

function handle_MAIL(server, session, envelope, address, options)
  strict(envelope)
  return "250 OK"
end

function auth_STRICT(server, args)
  return strict({})
end

function auth_STRICTDATA(server, args)
  return smtpd.AuthResult{ success = true, auth_data = strict({}) }
end
]]

local OPTS = { auth_require_tls = false }

describe("script faults never end the process", function()
  h.run{
    { name = "a strict session table: 451, and the session goes on",
      source = SOURCE, options = OPTS,
      dialogue = {
        h.helo,
        { "NOOP strict-session", h.LOCAL_ERROR },
        { "RSET", "250 OK" },
        { "QUIT", "221 Bye", closed = true },
      },
      stderr_has = { "hook handle_NOOP failed", "reading the session table", "strict table: no field" } },

    { name = "a strict envelope table (NOOP and MAIL): 451, and the session goes on",
      source = SOURCE, options = OPTS,
      dialogues = {
        { h.helo, { "NOOP strict-envelope", h.LOCAL_ERROR }, { "RSET", "250 OK" } },
        -- The envelope stays strict until RSET replaces it.
        { h.helo, { "MAIL FROM:<a@example.org>", h.LOCAL_ERROR }, { "NOOP", h.LOCAL_ERROR },
          { "RSET", "250 OK" }, { "NOOP", "250 OK " } },
      },
      stderr_has = { "hook handle_MAIL failed", "reading the envelope table" } },

    { name = "a mechanism returning a strict table: 454, the next AUTH is served",
      source = SOURCE, options = OPTS,
      dialogue = {
        h.ehlo,
        { "AUTH STRICT", h.AUTH_TEMPFAIL },
        { "AUTH STRICT", h.AUTH_TEMPFAIL },
        { "NOOP", "250 OK " },
      },
      stderr_has = { "reading the AuthResult", "strict table: no field" } },

    { name = "an AuthResult whose auth_data is a strict table: 454, not authenticated",
      source = SOURCE, options = OPTS,
      dialogue = {
        h.ehlo,
        { "AUTH STRICTDATA", h.AUTH_TEMPFAIL },
        { "AUTH STRICTDATA", h.AUTH_TEMPFAIL },
        { "NOOP", "250 OK " },
      },
      stderr_has = { "reading auth_data.login" },
      stderr_lacks = { "authenticated with" } },

    { name = "os.exit in a hook fails the hook, the server goes on",
      source = SOURCE, options = OPTS,
      dialogues = {
        { h.helo, { "NOOP exit", h.LOCAL_ERROR }, { "NOOP", "250 OK " } },
        { h.helo, { "NOOP", "250 OK " } },
      },
      stderr_has = { "hook handle_NOOP failed", "os.exit is disabled in handler scripts" } },

    { name = "newproxy finalizers that raise are logged and ignored",
      source = SOURCE, options = { auth_require_tls = false, lua_memory_limit = 8 },
      dialogues = {
        { h.helo, { "NOOP gc-proxy", "250 OK gc-proxy" }, { "NOOP", "250 OK " },
          { "NOOP drop-ballast", "250 OK drop-ballast" } },
        { h.helo, { "NOOP", "250 OK " } },
      },
      stderr_has = { "error in a __gc finalizer (ignored)", "raised" } },

    { name = "ffi.gc finalizers that raise are logged and ignored",
      source = SOURCE, options = { auth_require_tls = false, lua_memory_limit = 8 },
      dialogues = {
        { h.helo, { "NOOP gc-ffi", "250 OK gc-ffi" }, { "NOOP", "250 OK " },
          { "NOOP drop-ballast", "250 OK drop-ballast" } },
        { h.helo, { "NOOP", "250 OK " } },
      },
      stderr_has = { "error in a __gc finalizer (ignored)", "ffi finalizer" } },
  }
end)

describe("os.exit at the top level", function()
  it("refuses the script with a clear error instead of ending the check", function()
    local testing = require "smtpd.testing"
    local status, out = testing.check{ source = "os.exit(0)\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("os.exit is disabled in handler scripts", 1, true), out)
  end)
end)
