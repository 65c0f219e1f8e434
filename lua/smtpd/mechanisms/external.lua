--- AUTH EXTERNAL (RFC 4422 appendix A): the identity is the client's TLS
-- certificate, verified against `--tls-client-ca`. Shipped with luasmtpd,
-- offered when `auth_mechanisms` lists it and only on a session with a
-- verified client certificate. The client's message is the authorization
-- identity it asks for (often empty). The authenticator gets an `External`
-- (`authzid`, `peercert` as PEM) whose `verify(stored)` takes a function
-- `(peercert, authzid) -> ok` or the expected certificate's PEM.
-- @module smtpd.mechanisms.external
local smtpd = require "smtpd"
local mech = require "smtpd.mechanisms"

local M = {}

--- The mechanism hook.
-- @param server the server object
-- @tparam table args `{ "EXTERNAL", authzid? }`
-- @return an AuthResult
function M.EXTERNAL(server, args)
  local ssl = server.session.ssl
  local peercert = ssl and ssl.peercert
  if not peercert then return mech.invalid() end
  local authzid = mech.first_message(server, args)
  if authzid == nil then return mech.handled_failure() end
  if authzid:find("%z") then
    server:push("501 5.5.2 Malformed EXTERNAL message")
    return mech.handled_failure()
  end
  if authzid == "" then authzid = nil end
  local auth_data = smtpd.auth_data("External", { authzid = authzid, peercert = peercert },
    function(_, stored)
      if type(stored) == "function" then return stored(peercert, authzid) == true end
      if type(stored) == "string" then return mech.secret_equal(peercert, stored) end
      if stored == nil then return false end
      error("verify: stored must be a function, a PEM string or nil, got " .. type(stored), 2)
    end)
  return mech.authenticate(server, "EXTERNAL", auth_data)
end

return M
