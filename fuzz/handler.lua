-- fuzz/handler.lua — the policy of the session fuzz target (fuzz_session.c).
-- A small handler that authenticates one user and accepts mail, plus a hook
-- outcome of every kind (status, smtpd.MISSING, error, stray yield, invalid
-- value, a suspended challenge) behind arguments the seeds spell out, so the
-- fuzzer reaches the C side's handling of each. The harness applies
-- per-configuration overrides on top of `options` and registers the global
-- fuzz_fail(msg), which aborts the process: an invariant broken inside Lua
-- is a finding, not a 451.
local smtpd = require "smtpd"

options = {
  hostname = "fuzz.test",
  auth_require_tls = false,
  data_size_limit = 2048,
  timeout = 5,
  hook_timeout = 5,
  auth_failure_limit = 3,
}

local AuthResult = smtpd.AuthResult

local function fail(msg)
  if fuzz_fail then fuzz_fail(msg) end
  error(msg, 2)
end

-- A server object from an earlier session: using it must raise
-- "session is closed", never reach freed memory.
local stale_server

function authenticator(server, session, envelope, mechanism, auth_data)
  if auth_data.login == "fuzz" and auth_data.password == "secret" then
    return AuthResult { success = true, auth_data = auth_data }
  end
  if auth_data.login == "error" then error("authenticator failed") end
  return AuthResult { success = false, handled = false }
end

-- A custom mechanism with two challenges (one base64-encoded, one raw).
auth_X_FUZZ = smtpd.auth_mechanism("X-FUZZ", function(server, args)
  local first = args[2] and smtpd.b64decode(args[2])
  if first == nil then
    first = server:challenge_auth("step 1")
    if first == nil then return nil end
  end
  if first == "error" then error("mechanism failed") end
  if first == "yield" then coroutine.yield() end
  if first == "bad" then return 42 end
  if first == "handled" then
    server:push("535 5.7.8 handled by the mechanism")
    return AuthResult { success = false, handled = true }
  end
  if first == "message" then
    return AuthResult { success = false, handled = false, message = "535 5.7.8 custom" }
  end
  local second = server:challenge_auth("step 2", false)
  if second == nil then return nil end
  if first == "fuzz" and second == "secret" then
    return AuthResult { success = true, auth_data = { login = first } }
  end
  return false
end)

function handle_EHLO(server, session, envelope, hostname, responses)
  if hostname == "missing" then return smtpd.MISSING end
  if hostname == "bad" then return "250 not a list" end
  if hostname == "error" then error("EHLO failed") end
  session.host_name = hostname
  return responses
end

function handle_RCPT(server, session, envelope, address, rcpt_options)
  if type(address) ~= "string" or type(rcpt_options) ~= "table" then
    fail("handle_RCPT: bad arguments")
  end
  if address:find("^reject") then return "550 5.1.1 rejected" end
  if address:find("^error") then error("RCPT failed") end
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end

function handle_DATA(server, session, envelope)
  local content = envelope.content
  if type(content) ~= "string" then fail("handle_DATA: content is not a string") end
  -- Every line of an accepted message ends with CRLF.
  if #content > 0 and content:sub(-2) ~= "\r\n" then
    fail("handle_DATA: content does not end with CRLF")
  end
  if content:find("X-Fuzz: error", 1, true) then error("DATA failed") end
  stale_server = server
  return "250 2.0.0 Ok: queued"
end

function handle_NOOP(server, session, envelope, arg)
  if arg == "error" then error("NOOP failed") end
  if arg == "yield" then coroutine.yield() end
  if arg == "bad" then return {} end
  if arg == "missing" then return smtpd.MISSING end
  if arg == "push" then
    server:push("250-pushed")
    return "250 OK"
  end
  if arg == "stale" and stale_server ~= nil then
    local ok, err = pcall(function() return stale_server:push("250-from a dead session") end)
    if ok or not tostring(err):find("session is closed", 1, true) then
      -- Only a closed session may answer like this; a live one (the
      -- current session) may push.
      if stale_server ~= server then fail("a stale server object still works") end
    end
  end
  return "250 OK"
end

function handle_VRFY(server, session, envelope, address)
  return "252 2.0.0 " .. (address:gsub("[^%w@.]", "?"))
end

function handle_QUIT(server, session, envelope)
  return "221 2.0.0 fuzz.test closing"
end

-- Only called in the configuration with proxy_protocol_timeout.
function handle_PROXY(server, session, envelope, proxy_data)
  if type(proxy_data) ~= "table" or proxy_data.valid ~= true or
    type(proxy_data.whole_raw) ~= "string" then
    fail("handle_PROXY: malformed proxy_data")
  end
  -- session.peer stays the proxy's address; the client's is in proxy_data.
  if session.peer.host ~= "127.0.0.1" then fail("handle_PROXY: session.peer changed") end
  if proxy_data.src_addr == "192.0.2.66" then return false end
  if proxy_data.src_addr == "192.0.2.99" then error("PROXY failed") end
  return true
end

function handle_exception(err)
  if tostring(err):find("EHLO", 1, true) then return "not a status line" end
  return "451 4.3.0 fuzz: hook failed"
end
