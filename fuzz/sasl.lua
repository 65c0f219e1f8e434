-- fuzz/sasl.lua — the check behind fuzz_sasl.c. Runs one shipped mechanism
-- (as the server embeds it) against a scripted server whose client says
-- the fuzzer's messages, and checks what must hold for any input: no Lua
-- error; the result is an AuthResult; every final reply pushed is one 501
-- line naming the mechanism; the authenticator runs at most once and only
-- for a message that parsed; a success needs the authenticator's yes; a
-- 501 and a success never come together; tostring(auth_data) never shows
-- the token. Returns check(input, flags).
local smtpd = require "smtpd"
local mechs = {
  { "CRAM-MD5", require "smtpd.mechanisms.cram_md5" },
  { "SCRAM-SHA-1", require "smtpd.mechanisms.scram" },
  { "SCRAM-SHA-256", require "smtpd.mechanisms.scram" },
  { "SCRAM-SHA-256-PLUS", require "smtpd.mechanisms.scram" },
  { "XOAUTH2", require "smtpd.mechanisms.oauth" },
  { "OAUTHBEARER", require "smtpd.mechanisms.oauth" },
  { "EXTERNAL", require "smtpd.mechanisms.external" },
  { "SCRAM-SHA-1-PLUS", require "smtpd.mechanisms.scram" },
}
local scram = require "smtpd.mechanisms.scram"
local SECRET256 = (function()
  local k = scram.derive("sha256", "pencil", "saltsaltsalt", 4096)
  return ("SCRAM-SHA-256$4096:%s$%s:%s"):format(smtpd.b64encode("saltsaltsalt"),
    smtpd.b64encode(k.stored_key), smtpd.b64encode(k.server_key))
end)()

local function check(cond, what)
  if not cond then error("fuzz_sasl: " .. what, 2) end
end

return function(input, flags)
  local m = mechs[flags % 8 + 1]
  local name, mod = m[1], m[2]
  local stored_kind = math.floor(flags / 8) % 4
  local msgs = {}
  for line in (input .. "\n"):gmatch("([^\n]*)\n") do msgs[#msgs + 1] = line end
  local pushed, calls, ok_given = {}, 0, false
  local server = {
    hostname = "mx.test", session = { ssl = { peercert = "PEM" } }, envelope = {},
    mechanisms = { name, name .. "-PLUS" }, auth_allow_authzid = false,
    push = function(_, line) pushed[#pushed + 1] = line end,
    channel_binding = function(_, t) return t == "tls-unique" and ("\7"):rep(12) or nil end,
    challenge_auth = function()
      local r = table.remove(msgs, 1)
      if r == nil or r == "*" then
        pushed[#pushed + 1] = "501 5.7.0 Auth aborted"
        return nil
      end
      return r
    end,
    authenticator = function(_, _, _, mechanism, auth_data)
      calls = calls + 1
      check(mechanism == name, "wrong mechanism name")
      local s, token = tostring(auth_data), name:match("OAUTH") and auth_data.token
      if token and #token >= 6 and not (auth_data.login or ""):find(token, 1, true)
        and not ("OAuthToken(login=, ...)"):find(token, 1, true) then
        check(not s:find(token, 1, true), "tostring shows the token")
      end
      local stored = ({ nil, "pencil", SECRET256, function() return true end })[stored_kind + 1]
      if name:match("^SCRAM%-SHA%-1") and stored == SECRET256 then stored = "pencil" end
      -- functions are for OAuth and EXTERNAL; the others raise on them by design
      if type(stored) == "function" and not name:match("OAUTH") and name ~= "EXTERNAL" then
        stored = "pencil"
      end
      local ok, verdict = pcall(auth_data.verify, auth_data, stored)
      check(ok, "verify raised: " .. tostring(verdict))
      check(verdict == true or verdict == false, "verify returned " .. tostring(verdict))
      ok_given = verdict
      return smtpd.AuthResult { success = verdict, handled = false, auth_data = auth_data }
    end,
  }
  -- The first message is the initial response (base64, as on the AUTH line).
  local first = table.remove(msgs, 1)
  local args = { name }
  if first ~= "" then args[2] = smtpd.b64encode(first) end
  if first == "" and #msgs == 0 then msgs[1] = "" end
  local ok, result = pcall(mod[name], server, args)
  check(ok, name .. " raised: " .. tostring(result))
  check(result ~= nil and (type(result) == "userdata" or type(result) == "table"), "no AuthResult")
  check(calls <= 1, "the authenticator ran twice")
  for _, line in ipairs(pushed) do
    check(line == "501 5.7.0 Auth aborted" or line == ("501 5.5.2 Malformed %s message"):format(name),
      "unexpected reply: " .. line)
  end
  if result.success then
    check(calls == 1 and ok_given, "a success without the authenticator's yes")
    check(#pushed == 0, "a success after a 501")
  end
  if #pushed > 0 then check(not result.success and result.handled, "a 501 but not a handled failure") end
end
