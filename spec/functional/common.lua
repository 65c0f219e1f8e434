-- Shared pieces of the functional specs: handler sources and dialogue steps
-- that many cases use, and `run`, which turns a list of cases into busted
-- tests. The cases themselves are data (see lua/smtpd/testing.lua,
-- `testing.dialogue` and `testing.run_case`).
local testing = require "smtpd.testing"

local M = {}

M.b64 = testing.b64

--- AUTH PLAIN initial response for authzid/login/password.
function M.plain(login, password, authzid)
  return M.b64((authzid or "") .. "\0" .. login .. "\0" .. password)
end

-- The EHLO reply with default options and no TLS: no AUTH line, since
-- auth_require_tls defaults to true.
M.EHLO_DEFAULT = {
  "250-mx.test",
  "250-SIZE 33554432",
  "250-8BITMIME",
  "250-PIPELINING",
  "250 HELP",
}

-- The EHLO reply with auth_require_tls = false and the built-in mechanisms.
M.EHLO_AUTH = {
  "250-mx.test",
  "250-SIZE 33554432",
  "250-8BITMIME",
  "250-PIPELINING",
  "250-AUTH LOGIN PLAIN",
  "250 HELP",
}

--- A dialogue step: EHLO, accepting any well-formed EHLO reply.
M.ehlo = { "EHLO client.test", match = "^250%-mx%.test\n.*250 HELP$" }
M.helo = { "HELO client.test", "250 mx.test" }

M.AUTH_OK = "235 2.7.0 Authentication successful"
M.AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
M.AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
M.LOCAL_ERROR = "451 4.3.0 Error: local error in processing"
M.AUTH_REQUIRED = "530 5.7.0 Authentication required"
M.BAD_B64 = "501 5.5.2 Can't decode base64"
M.CANT_SPLIT = "501 5.5.2 Can't split auth value"
M.ABORTED = "501 5.7.0 Auth aborted"
M.UNRECOGNIZED_MECH = "504 5.5.4 Unrecognized authentication type"

-- An authenticator for which alice / s3cret is the one valid login.
M.ALICE = [[
local smtpd = require "smtpd"
function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "alice" and auth_data.password == "s3cret" then
    return smtpd.AuthResult{ success = true, auth_data = auth_data }
  end
  return smtpd.AuthResult{ success = false, handled = false }
end
]]
M.ALICE_PLAIN = M.plain("alice", "s3cret")          -- AGFsaWNlAHMzY3JldA==

--- Registers one busted test per case.
-- (busted gives `it` to the spec file's environment, not to _G.)
function M.run(cases)
  local it = getfenv(2).it or _G.it
  for _, case in ipairs(cases) do
    it(case.name, function() testing.run_case(case) end)
  end
end

--- Concatenates step lists (and single steps) into one list.
function M.steps(...)
  local out = {}
  for _, part in ipairs{ ... } do
    if type(part[1]) == "table" then
      for _, s in ipairs(part) do out[#out + 1] = s end
    else
      out[#out + 1] = part
    end
  end
  return out
end

--- `n` copies of a step.
function M.rep(step, n)
  local out = {}
  for i = 1, n do out[i] = step end
  return out
end

return M
