-- AUTH mechanisms: what a mechanism's result does (auth-api.md 4.4), the
-- built-in PLAIN and LOGIN (4.5), the mechanism registry and
-- server:challenge_auth() (3). Cases are data.
local mime = require "mime"
local h = require "spec.functional.common"

local NO_TLS = { auth_require_tls = false }
local GATED = { auth_require_tls = false, auth_required = true }

-- One mechanism, R, whose result is picked by the initial response; NOOP
-- shows what the session holds afterwards.
local RESULTS = [[
local smtpd = require "smtpd"
local R = {}
R.s = function() return smtpd.AuthResult{ success = true, auth_data = "ad-s" } end
R.sh = function() return smtpd.AuthResult{ success = true, handled = false, auth_data = "ad-sh" } end
R.sm = function()
  return smtpd.AuthResult{ success = true, message = "235 2.7.0 Welcome aboard", auth_data = "ad-sm" }
end
R.shm = function()
  return smtpd.AuthResult{ success = true, handled = false, message = "250 2.7.0 Fine", auth_data = "ad-shm" }
end
R.sl = function() return smtpd.AuthResult{ success = true, auth_data = { login = "bob" } } end
R.fh = function() return smtpd.AuthResult{ success = false } end
R.fhm = function() return smtpd.AuthResult{ success = false, handled = true, message = "535 5.7.8 Ignored" } end
R.fhp = function(server)
  server:push("535 5.7.8 Pushed by the mechanism")
  return smtpd.AuthResult{ success = false, handled = true }
end
R.fhpm = function(server)
  server:push("535 5.7.8 Pushed by the mechanism")
  return smtpd.AuthResult{ success = false, handled = true, message = "535 5.7.8 Ignored" }
end
R.f = function() return smtpd.AuthResult{ success = false, handled = false } end
R.fm = function() return smtpd.AuthResult{ success = false, handled = false, message = "535 5.7.8 Go away" } end
R.fm4 = function() return smtpd.AuthResult{ success = false, handled = false, message = "454 4.7.0 Try later" } end
R.n = function() return nil end
R.np = function(server) server:push("535 5.7.8 Pushed then nil") return nil end
R.npok = function(server) server:push("235 2.7.0 Pushed success then nil") return nil end
R.t = function() return true end
R.F = function() return false end
R.tab = function() return { success = true, auth_data = "ad-tab" } end
R.tabm = function() return { success = true, message = "235 2.7.0 From a table" } end
R.tabf = function() return { success = false, handled = false, message = "535 5.7.8 Table says no" } end
R.tabfh = function() return { success = false } end
-- Invalid results: hook errors (section 5).
R.bad_s = function() return smtpd.AuthResult{ success = true, message = "535 5.7.8 Wrong class" } end
R.bad_f = function() return smtpd.AuthResult{ success = false, handled = false, message = "235 2.7.0 Wrong" } end
R.bad_crlf = function() return smtpd.AuthResult{ success = true, message = "235 2.7.0 a\r\n250 b" } end
R.bad_lf = function() return smtpd.AuthResult{ success = true, message = "235 2.7.0 a\n250 b" } end
R.bad_nul = function() return smtpd.AuthResult{ success = true, message = "235 2.7.0 a\0b" } end
R.bad_nocode = function() return smtpd.AuthResult{ success = true, message = "Welcome" } end
R.bad_num = function() return 42 end
R.bad_str = function() return "235 2.7.0 A string" end
function auth_R(server, args) local f = R[args[2] ]; return f(server) end
function handle_NOOP(server, session, envelope, arg)
  local d = session.auth_data
  if type(d) == "table" then d = "table" end
  return ("250 auth=%s data=%s login=%s"):format(tostring(session.authenticated), tostring(d),
    tostring(session.login_data))
end
]]

local NOT_AUTHED = "250 auth=nil data=nil login=nil"

-- result key, expected reply, expected NOOP afterwards
local RESULT_ROWS = {
  { "s", h.AUTH_OK, "250 auth=true data=ad-s login=nil" },
  { "sh", h.AUTH_OK, "250 auth=true data=ad-sh login=nil" },
  { "sm", "235 2.7.0 Welcome aboard", "250 auth=true data=ad-sm login=nil" },
  { "shm", "250 2.7.0 Fine", "250 auth=true data=ad-shm login=nil" },
  { "sl", h.AUTH_OK, "250 auth=true data=table login=bob" },
  { "fh", h.AUTH_INVALID, NOT_AUTHED },
  { "fhm", h.AUTH_INVALID, NOT_AUTHED },
  { "fhp", "535 5.7.8 Pushed by the mechanism", NOT_AUTHED },
  { "fhpm", "535 5.7.8 Pushed by the mechanism", NOT_AUTHED },
  { "f", h.AUTH_INVALID, NOT_AUTHED },
  { "fm", "535 5.7.8 Go away", NOT_AUTHED },
  { "fm4", "454 4.7.0 Try later", NOT_AUTHED },
  { "n", h.AUTH_INVALID, NOT_AUTHED },
  { "np", "535 5.7.8 Pushed then nil", NOT_AUTHED },
  { "npok", "235 2.7.0 Pushed success then nil", NOT_AUTHED },
  { "t", h.AUTH_OK, "250 auth=true data=nil login=nil" },
  { "F", h.AUTH_INVALID, NOT_AUTHED },
  { "tab", h.AUTH_OK, "250 auth=true data=ad-tab login=nil" },
  { "tabm", "235 2.7.0 From a table", "250 auth=true data=nil login=nil" },
  { "tabf", "535 5.7.8 Table says no", NOT_AUTHED },
  { "tabfh", h.AUTH_INVALID, NOT_AUTHED },
  { "bad_s", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_f", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_crlf", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_lf", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_nul", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_nocode", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_num", h.AUTH_TEMPFAIL, NOT_AUTHED },
  { "bad_str", h.AUTH_TEMPFAIL, NOT_AUTHED },
}

describe("mechanism results (4.4)", function()
  local cases = {}
  for _, row in ipairs(RESULT_ROWS) do
    local key, reply, after = row[1], row[2], row[3]
    local authed = after:find("auth=true", 1, true) ~= nil
    cases[#cases + 1] = {
      name = ("%s -> %s"):format(key, reply),
      source = RESULTS, options = GATED,
      dialogue = {
        h.ehlo,
        { "AUTH R " .. key, reply },
        { "NOOP", after },
        { "MAIL FROM:<a@example.org>", authed and "250 OK" or h.AUTH_REQUIRED },
        { "AUTH R s", authed and "503 Already authenticated" or h.AUTH_OK },
      },
    }
  end
  h.run(cases)
end)

-- PLAIN and LOGIN against an authenticator that accepts alice/s3cret and,
-- with auth_allow_authzid, alice acting as bob. NOOP shows what it saw.
local PLAIN_LOGIN = [[
local smtpd = require "smtpd"
local seen = "none"
function authenticator(server, session, envelope, mechanism, auth_data)
  local z = auth_data.authzid
  if z == nil or z == "" then z = "-" end
  seen = ("%s:%s:%s:%s"):format(mechanism, auth_data.login, auth_data.password, z)
  if auth_data.login == "alice" and auth_data.password == "s3cret" then
    if z == "bob" then
      return smtpd.AuthResult{ success = true, message = "235 2.7.0 alice as bob", auth_data = auth_data }
    end
    return smtpd.AuthResult{ success = true, auth_data = auth_data }
  end
  return smtpd.AuthResult{ success = false, handled = false }
end
function handle_NOOP(server, session, envelope, arg)
  if arg == "login" then return "250 login_data=" .. tostring(session.login_data) end
  return "250 seen=" .. seen
end
]]

local function plain_case(name, dialogue, options)
  return { name = name, source = PLAIN_LOGIN, options = options or NO_TLS,
    dialogue = h.steps(h.ehlo, dialogue) }
end

describe("built-in PLAIN (4.5)", function()
  h.run{
    plain_case("initial response", {
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
      { "NOOP", "250 seen=PLAIN:alice:s3cret:-" } }),
    plain_case("success sets session.login_data to the login", {
      { "NOOP login", "250 login_data=nil" },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK },
      { "NOOP login", "250 login_data=alice" } }),
    plain_case("wrong password -> 535", {
      { "AUTH PLAIN " .. h.plain("alice", "s3creT"), h.AUTH_INVALID },
      { "NOOP", "250 seen=PLAIN:alice:s3creT:-" } }),
    plain_case("'=' is a present but empty initial response -> can't split", {
      { "AUTH PLAIN =", h.CANT_SPLIT },
      { "NOOP", "250 seen=none" } }),
    plain_case("no initial response: '334 ' then the response", {
      { "AUTH PLAIN", "334 " },
      { h.ALICE_PLAIN, h.AUTH_OK } }),
    plain_case("no initial response: '*' aborts", {
      { "AUTH PLAIN", "334 " },
      { "*", h.ABORTED },
      { "NOOP", "250 seen=none" },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK } }),
    plain_case("no initial response: '=' is not valid as a challenge response", {
      { "AUTH PLAIN", "334 " },
      { "=", h.BAD_B64 } }),
    plain_case("no initial response: an empty line is empty data -> can't split", {
      { "AUTH PLAIN", "334 " },
      { "", h.CANT_SPLIT } }),
    plain_case("no initial response: bad base64", {
      { "AUTH PLAIN", "334 " },
      { "!!!!", h.BAD_B64 },
      { "NOOP", "250 seen=none" } }),
    plain_case("no initial response: a response over 12288 octets", {
      { "AUTH PLAIN", "334 " },
      { string.rep("A", 13000), "500 5.5.6 Authentication Exchange line is too long" },
      { "NOOP", "250 seen=none" },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK } }),
    plain_case("bad base64 in the initial response; '*' is no abort there", {
      { "AUTH PLAIN !!!!", h.BAD_B64 },
      { "AUTH PLAIN *", h.BAD_B64 },
      { "NOOP", "250 seen=none" } }),
    -- (At most four failures per session: auth_failure_limit is 5.)
    plain_case("strict base64: padding must be present and correct", {
      { "AUTH PLAIN AGFsaWNlAHMzY3JldA", h.BAD_B64 },
      { "AUTH PLAIN AGFsaWNlAHMzY3JldA=", h.BAD_B64 },
      { "AUTH PLAIN AGFsaWNlAHMzY3JldA===", h.BAD_B64 },
      { "NOOP", "250 seen=none" },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK } }),
    plain_case("strict base64: nothing after the padding, only the alphabet", {
      { "AUTH PLAIN AGFsaWNlAHMzY3JldA==AGFs", h.BAD_B64 },
      { "AUTH PLAIN AGFs=WNlAHMzY3JldA==", h.BAD_B64 },
      { "AUTH PLAIN AGFsaWNl-HMzY3JldA==", h.BAD_B64 },
      { "NOOP", "250 seen=none" },
      { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_OK } }),
    plain_case("can't split: two fields, four fields, no NUL", {
      { "AUTH PLAIN " .. h.b64("alice\0s3cret"), h.CANT_SPLIT },
      { "AUTH PLAIN " .. h.b64("\0alice\0s3cret\0"), h.CANT_SPLIT },
      { "AUTH PLAIN " .. h.b64("alices3cret"), h.CANT_SPLIT },
      { "NOOP", "250 seen=none" } }),
    plain_case("authzid equal to the login is fine", {
      { "AUTH PLAIN " .. h.plain("alice", "s3cret", "alice"), h.AUTH_OK },
      { "NOOP", "250 seen=PLAIN:alice:s3cret:alice" } }),
    plain_case("authzid other than the login -> 535 without asking the authenticator", {
      { "AUTH PLAIN " .. h.plain("alice", "s3cret", "bob"), h.AUTH_INVALID },
      { "NOOP", "250 seen=none" } }),
    plain_case("auth_allow_authzid: the authenticator decides", {
      { "AUTH PLAIN " .. h.plain("alice", "s3cret", "bob"), "235 2.7.0 alice as bob" },
      { "NOOP", "250 seen=PLAIN:alice:s3cret:bob" } },
      { auth_require_tls = false, auth_allow_authzid = true }),
    plain_case("auth_allow_authzid: the authenticator may still refuse", {
      { "AUTH PLAIN " .. h.plain("alice", "wrong", "bob"), h.AUTH_INVALID },
      { "NOOP", "250 seen=PLAIN:alice:wrong:bob" } },
      { auth_require_tls = false, auth_allow_authzid = true }),
    { name = "no authenticator: every PLAIN attempt gets 535",
      source = "-- no authenticator\n", options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "AUTH PLAIN " .. h.ALICE_PLAIN, h.AUTH_INVALID },
        { "AUTH PLAIN", "334 " },
        { h.ALICE_PLAIN, h.AUTH_INVALID },
      } },
  }
end)

local USER, PASS = "334 VXNlciBOYW1lAA==", "334 UGFzc3dvcmQA"

describe("built-in LOGIN (4.5)", function()
  h.run{
    plain_case("three steps", {
      { "AUTH LOGIN", USER },
      { h.b64("alice"), PASS },
      { h.b64("s3cret"), h.AUTH_OK },
      { "NOOP", "250 seen=LOGIN:alice:s3cret:-" } }),
    plain_case("login as the initial response", {
      { "AUTH LOGIN " .. h.b64("alice"), PASS },
      { h.b64("s3cret"), h.AUTH_OK } }),
    plain_case("wrong password -> 535", {
      { "AUTH LOGIN " .. h.b64("alice"), PASS },
      { h.b64("nope"), h.AUTH_INVALID },
      { "NOOP", "250 seen=LOGIN:alice:nope:-" } }),
    plain_case("'*' at the user name aborts", {
      { "AUTH LOGIN", USER },
      { "*", h.ABORTED },
      { "NOOP", "250 seen=none" } }),
    plain_case("'*' with surrounding whitespace aborts", {
      { "AUTH LOGIN", USER },
      { "  *\t", h.ABORTED } }),
    plain_case("'*' at the password aborts", {
      { "AUTH LOGIN " .. h.b64("alice"), PASS },
      { "*", h.ABORTED },
      { "NOOP", "250 seen=none" },
      { "AUTH LOGIN " .. h.b64("alice"), PASS },
      { h.b64("s3cret"), h.AUTH_OK } }),
    plain_case("bad base64 for the user name", {
      { "AUTH LOGIN", USER },
      { "!!!!", h.BAD_B64 },
      { "NOOP", "250 seen=none" } }),
    plain_case("bad base64 for the password", {
      { "AUTH LOGIN", USER },
      { h.b64("alice"), PASS },
      { "YWxpY2U", h.BAD_B64 },
      { "NOOP", "250 seen=none" } }),
    plain_case("'=' as a challenge response is bad base64", {
      { "AUTH LOGIN", USER },
      { "=", h.BAD_B64 } }),
    plain_case("'=' as the initial response is the empty login", {
      { "AUTH LOGIN =", PASS },
      { h.b64("s3cret"), h.AUTH_INVALID },
      { "NOOP", "250 seen=LOGIN::s3cret:-" } }),
    plain_case("bad base64 in the initial response", {
      { "AUTH LOGIN !!!!", h.BAD_B64 },
      { "NOOP", "250 seen=none" } }),
    plain_case("surrounding whitespace of a response is stripped", {
      { "AUTH LOGIN", USER },
      { "  " .. h.b64("alice") .. " ", PASS },
      { "\t" .. h.b64("s3cret"), h.AUTH_OK } }),
    plain_case("an empty user name line is the empty login", {
      { "AUTH LOGIN", USER },
      { "", PASS },
      { h.b64("s3cret"), h.AUTH_INVALID },
      { "NOOP", "250 seen=LOGIN::s3cret:-" } }),
    { name = "no authenticator: LOGIN gets 535",
      source = "-- no authenticator\n", options = NO_TLS,
      dialogue = {
        h.ehlo,
        { "AUTH LOGIN", USER },
        { h.b64("alice"), PASS },
        { h.b64("s3cret"), h.AUTH_INVALID },
      } },
  }
end)

-- A mechanism that shows what challenge_auth returned.
local ECHO = [[
local smtpd = require "smtpd"
function auth_ECHO(server, args)
  local mode = args[2] or "b64"
  local r
  if mode == "raw" then
    r = server:challenge_auth("Raw challenge text", false)
  elseif mode == "empty" then
    r = server:challenge_auth("")
  elseif mode == "two" then
    local a = server:challenge_auth("first")
    if a == nil then return nil end
    r = server:challenge_auth("second")
    if r ~= nil then r = a .. "+" .. r end
  elseif mode == "pcall" then
    local ok
    ok, r = pcall(function() return server:challenge_auth("inside pcall") end)
    if not ok then r = "pcall failed" end
  elseif mode == "len" then
    r = server:challenge_auth("")
    if r == nil then return nil end
    return smtpd.AuthResult{ success = false, handled = false, message = "535 5.7.8 len=" .. #r }
  else
    r = server:challenge_auth("hi")
  end
  if r == nil then return nil end
  return smtpd.AuthResult{ success = false, handled = false,
    message = "535 5.7.8 got [" .. r .. "] len=" .. #r }
end
function handle_NOOP(server, session, envelope, arg)
  if arg == "challenge" then server:challenge_auth("outside") end
  return "250 OK"
end
]]

local function echo_case(name, dialogue)
  return { name = name, source = ECHO, options = NO_TLS, dialogue = h.steps(h.ehlo, dialogue) }
end

describe("server:challenge_auth (3)", function()
  h.run{
    echo_case("sends 334 + base64 of the challenge and returns the decoded response", {
      { "AUTH ECHO", "334 aGk=" },
      { "aGVsbG8=", "535 5.7.8 got [hello] len=5" } }),
    echo_case("encode_to_b64 = false sends the challenge as it is", {
      { "AUTH ECHO raw", "334 Raw challenge text" },
      { "aGVsbG8=", "535 5.7.8 got [hello] len=5" } }),
    echo_case("an empty challenge is exactly '334 ' with the space", {
      { "AUTH ECHO empty", "334 " },
      { "aGVsbG8=", "535 5.7.8 got [hello] len=5" } }),
    echo_case("'*' -> 501 Auth aborted and nil; nothing more is sent", {
      { "AUTH ECHO", "334 aGk=" },
      { "*", h.ABORTED },
      { "NOOP", "250 OK" } }),
    echo_case("' * ' with whitespace also aborts", {
      { "AUTH ECHO", "334 aGk=" },
      { " * ", h.ABORTED },
      { "NOOP", "250 OK" } }),
    echo_case("'=' -> 501 Can't decode base64 and nil", {
      { "AUTH ECHO", "334 aGk=" },
      { "=", h.BAD_B64 },
      { "NOOP", "250 OK" } }),
    echo_case("an empty line returns ''", {
      { "AUTH ECHO", "334 aGk=" },
      { "", "535 5.7.8 got [] len=0" } }),
    echo_case("surrounding whitespace is stripped", {
      { "AUTH ECHO", "334 aGk=" },
      { " \taGVsbG8=  ", "535 5.7.8 got [hello] len=5" } }),
    echo_case("a line over 12288 octets -> 500 5.5.6 and nil", {
      { "AUTH ECHO", "334 aGk=" },
      { string.rep("A", 13000), "500 5.5.6 Authentication Exchange line is too long" },
      { "NOOP", "250 OK" } }),
    echo_case("a 12000-octet response is fine", {
      { "AUTH ECHO len", "334 " },
      { h.b64(string.rep("x", 9000)), "535 5.7.8 len=9000" } }),
    echo_case("two rounds in one mechanism", {
      { "AUTH ECHO two", "334 Zmlyc3Q=" },
      { "YQ==", "334 c2Vjb25k" },
      { "Yg==", "535 5.7.8 got [a+b] len=3" } }),
    echo_case("challenge_auth works inside pcall", {
      { "AUTH ECHO pcall", "334 " .. h.b64("inside pcall") },
      { "aGVsbG8=", "535 5.7.8 got [hello] len=5" } }),
    echo_case("the response line is not parsed as a command", {
      { "AUTH ECHO", "334 aGk=" },
      { "NOOP", "535 5.7.8 got [" .. mime.unb64("NOOP") .. "] len=3" } }),
    echo_case("pipelined: the response and the next command arrive with AUTH", {
      { send = "AUTH ECHO\r\naGVsbG8=\r\nNOOP\r\n" },
      { expect = "334 aGk=" },
      { expect = "535 5.7.8 got [hello] len=5" },
      { expect = "250 OK" } }),
    echo_case("outside an AUTH hook it raises (a hook error)", {
      { "NOOP challenge", h.LOCAL_ERROR },
      { "NOOP", "250 OK" } }),
  }
end)

describe("the mechanism registry (4.4)", function()
  h.run{
    { name = "auth_mechanism names a mechanism whatever its key",
      source = [[
local smtpd = require "smtpd"
auth_anything = smtpd.auth_mechanism("x-mine", function(server, args)
  return smtpd.AuthResult{ success = true, message = "235 2.7.0 mine" }
end)
]],
      options = NO_TLS,
      dialogue = {
        { "EHLO client.test", match = "\n250%-AUTH LOGIN PLAIN X%-MINE\n" },
        { "AUTH ANYTHING", h.UNRECOGNIZED_MECH },
        { "AUTH x-MINE", "235 2.7.0 mine" },
      } },

    { name = "auth_CRAM__MD5 is CRAM-MD5",
      source = [[
local smtpd = require "smtpd"
function auth_CRAM__MD5(server, args)
  return smtpd.AuthResult{ success = true, message = "235 2.7.0 cram" }
end
]],
      options = NO_TLS,
      dialogue = {
        { "EHLO client.test", match = "\n250%-AUTH CRAM%-MD5 LOGIN PLAIN\n" },
        { "AUTH CRAM__MD5", h.UNRECOGNIZED_MECH },
        { "AUTH cram-md5", "235 2.7.0 cram" },
      } },

    { name = "a handler entry replaces the built-in PLAIN; LOGIN stays",
      source = h.ALICE .. [[
function auth_PLAIN(server, args)
  return smtpd.AuthResult{ success = false, handled = false, message = "535 5.7.8 custom PLAIN " .. #args }
end
]],
      options = NO_TLS,
      dialogue = {
        { "EHLO client.test", h.EHLO_AUTH },
        { "AUTH PLAIN " .. h.ALICE_PLAIN, "535 5.7.8 custom PLAIN 2" },
        { "AUTH PLAIN", "535 5.7.8 custom PLAIN 1" },
        { "AUTH LOGIN " .. h.b64("alice"), PASS },
        { h.b64("s3cret"), h.AUTH_OK },
      } },

    { name = "an auth_ entry in a returned table, with args",
      source = [[
local smtpd = require "smtpd"
local handler = { options = { auth_require_tls = false } }
function handler.auth_XTEST(server, args)
  return smtpd.AuthResult{ success = true, message = "235 2.7.0 " .. table.concat(args, "|") }
end
return handler
]],
      dialogue = {
        { "EHLO client.test", match = "\n250%-AUTH LOGIN PLAIN XTEST\n" },
        { "AUTH xtest Zm9v", "235 2.7.0 XTEST|Zm9v" },
      } },
  }

  it("an invalid mechanism name is a load error", function()
    local testing = require "smtpd.testing"
    local source = [[
local smtpd = require "smtpd"
auth_bad = smtpd.auth_mechanism("bad name", function() return true end)
]]
    local ok, err = pcall(testing.start, { source = source })
    assert.is_false(ok, "the server must refuse the script")
    assert.matches("Invalid AUTH mechanism name: BAD NAME", err, 1, true)
    local status, out = testing.check{ source = source }
    assert.equal(1, status)
    assert.matches("Invalid AUTH mechanism name: BAD NAME", out, 1, true)
  end)

  it("an auth_ entry that is not a function is a load error naming it", function()
    local testing = require "smtpd.testing"
    local status, out = testing.check{ source = "auth_FOO = 5\n" }
    assert.equal(1, status)
    assert.matches("auth_FOO", out, 1, true)
  end)
end)
