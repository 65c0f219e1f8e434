-- One check of a status line for everything a script hands back, one
-- writer of session.authenticated, and handle_exception run through the
-- hook runner like every other hook.
local h = require "spec.functional.common"

local SOURCE = [[
local smtpd = require "smtpd"
local mode = "none"
function handle_exception(err)
  if mode == "bad-status" then return "4ab oops" end
  if mode == "yield" then coroutine.yield() return "250 yielded" end
  if mode == "memory" then
    local t = {}
    for i = 1, 400 do t[i] = string.rep(string.char(65 + i % 26), 100000) .. i end
    return "450 4.3.0 custom after " .. #t
  end
  if mode == "custom" then return "450 4.3.0 custom" end
  return nil
end
function handle_NOOP(server, session, envelope, arg)
  if arg and arg:match("^mode ") then
    mode = arg:sub(6)
    return "250 mode " .. mode
  end
  if arg == "fail" then error("on purpose") end
  if arg == "push-bad" then server:push("hello") return "250 pushed" end
  if arg == "auth" then return "250 auth=" .. tostring(session.authenticated) end
  return "250 OK"
end
function auth_FLIP(server, args)
  server.session.authenticated = true
  return false
end
]]

local OPTS = { auth_require_tls = false, auth_required = true, lua_memory_limit = 8 }

describe("handle_exception", function()
  h.run{
    { name = "a valid status line from handle_exception is the reply",
      source = SOURCE, options = OPTS,
      dialogue = { h.ehlo, { "NOOP mode custom", "250 mode custom" }, { "NOOP fail", "450 4.3.0 custom" } } },

    { name = "\"4ab oops\" is no status line: the reply is the hook-error one",
      source = SOURCE, options = OPTS,
      dialogue = { h.ehlo, { "NOOP mode bad-status", "250 mode bad-status" }, { "NOOP fail", h.LOCAL_ERROR } },
      stderr_has = { "handle_exception did not return a status line" },
      stderr_lacks = { "4ab oops" } },

    { name = "handle_exception may not wait: a yield fails it",
      source = SOURCE, options = OPTS,
      dialogue = { h.ehlo, { "NOOP mode yield", "250 mode yield" }, { "NOOP fail", h.LOCAL_ERROR },
        { "NOOP", "250 OK" } },
      stderr_has = { "handle_exception yielded" } },

    { name = "handle_exception runs under lua_memory_limit",
      source = SOURCE, options = OPTS,
      dialogue = { h.ehlo, { "NOOP mode memory", "250 mode memory" }, { "NOOP fail", h.LOCAL_ERROR },
        { "NOOP", "250 OK" } },
      stderr_has = { "hook handle_exception failed", "not enough memory" } },
  }
end)

describe("server:push", function()
  h.run{
    { name = "pushing a line that is not a status line fails the hook",
      source = SOURCE, options = OPTS,
      dialogue = { h.ehlo, { "NOOP push-bad", h.LOCAL_ERROR }, { "NOOP", "250 OK" } },
      stderr_has = { "push: the reply must be one status line" } },
  }
end)

describe("session.authenticated has one writer", function()
  h.run{
    { name = "a mechanism that sets authenticated = true and returns false is not authenticated",
      source = SOURCE, options = OPTS,
      dialogue = {
        h.ehlo,
        { "AUTH FLIP", h.AUTH_INVALID },
        { "NOOP auth", "250 auth=nil" },
        { "MAIL FROM:<a@example.org>", h.AUTH_REQUIRED },
      },
      stderr_has = { "AUTH failed: mechanism=FLIP client=[127.0.0.1]" },
      stderr_lacks = { "authenticated with" } },
  }
end)
