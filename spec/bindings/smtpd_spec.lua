-- The `smtpd` module's C classes loaded straight into LuaJIT (build/lua/smtpd.so):
-- AuthResult and LoginPassword redaction, equality, auth_mechanism name
-- validation, strict base64 and MISSING.
local build_lua = os.getenv("LUASMTPD_CPATH") or "build/lua/?.so"
package.cpath = build_lua .. ";" .. package.cpath
local smtpd = require "smtpd"

describe("smtpd.AuthResult", function()
  it("reads its fields by name and defaults handled to true", function()
    local data = { login = "alice" }
    local r = smtpd.AuthResult { success = false, message = "535 no", auth_data = data }
    assert.is_false(r.success)
    assert.is_true(r.handled)
    assert.are.equal("535 no", r.message)
    assert.are.equal(data, r.auth_data)
    assert.is_false(smtpd.AuthResult { success = true, handled = false }.handled)
  end)

  it("never shows auth_data in tostring", function()
    local r = smtpd.AuthResult { success = true, auth_data = "hunter2-secret" }
    assert.are.equal("AuthResult(success=true, handled=true, message=nil, auth_data=...)",
      tostring(r))
    local lp = smtpd.LoginPassword("alice", "hunter2-secret")
    local r2 = smtpd.AuthResult { success = false, handled = false, message = "535 x", auth_data = lp }
    assert.are.equal('AuthResult(success=false, handled=false, message="535 x", auth_data=...)',
      tostring(r2))
    assert.is_nil(tostring(r2):find("hunter2", 1, true))
  end)

  it("rejects a non-boolean success with a readable error", function()
    local ok, err = pcall(smtpd.AuthResult, { success = "yes" })
    assert.is_false(ok)
    assert.matches("success must be a boolean, got string", err)
    ok, err = pcall(smtpd.AuthResult, { success = true, message = 235 })
    assert.is_false(ok)
    assert.matches("message must be a string", err)
  end)
end)

describe("smtpd.LoginPassword", function()
  it("holds raw bytes and hides the password", function()
    local lp = smtpd.LoginPassword("al\0ice", "SECRET\r\nPW", "admin")
    assert.are.equal("al\0ice", lp.login)
    assert.are.equal("SECRET\r\nPW", lp.password)
    assert.are.equal("admin", lp.authzid)
    assert.are.equal('LoginPassword(login="al\\x00ice", password=...)', tostring(lp))
    assert.is_nil(tostring(lp):find("SECRET", 1, true))
  end)

  it("compares login and password with ==", function()
    assert.is_true(smtpd.LoginPassword("a", "b") == smtpd.LoginPassword("a", "b"))
    assert.is_true(smtpd.LoginPassword("a", "b", "x") == smtpd.LoginPassword("a", "b"))
    assert.is_false(smtpd.LoginPassword("a", "b") == smtpd.LoginPassword("a", "c"))
    assert.is_false(smtpd.LoginPassword("a", "b") == smtpd.LoginPassword("z", "b"))
  end)

  it("requires strings", function()
    assert.has_error(function() smtpd.LoginPassword("a") end)
    assert.has_error(function() smtpd.LoginPassword(1, {}) end)
  end)
end)

describe("smtpd.auth_mechanism", function()
  it("returns the function it marks, in both call forms", function()
    local f = function() end
    assert.are.equal(f, smtpd.auth_mechanism("x-token", f))
    assert.are.equal(f, smtpd.auth_mechanism("CRAM-MD5")(f))
  end)

  it("upper-cases, then rejects names outside [A-Z0-9_-]", function()
    for _, bad in ipairs { "bad name", "", "a.b", "é", ("X"):rep(80) } do
      local ok, err = pcall(smtpd.auth_mechanism, bad, function() end)
      assert.is_false(ok, bad)
      assert.matches("Invalid AUTH mechanism name:", err)
    end
    local _, err = pcall(smtpd.auth_mechanism, "bad name", function() end)
    assert.matches("Invalid AUTH mechanism name: BAD NAME", err, 1, true)
  end)
end)

describe("smtpd base64", function()
  it("round-trips every byte value", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for n = 0, 7 do
      local s = all:sub(1, 250 + n)
      assert.are.equal(s, smtpd.b64decode(smtpd.b64encode(s)))
    end
  end)

  it("is strict", function()
    assert.are.equal("", smtpd.b64decode(""))
    assert.are.equal("A", smtpd.b64decode("QQ=="))
    for _, bad in ipairs { "QQ", "QQ=", "Q===", "=", "QQ==QQ==", "Q Q=", "QQ==\n", "QUJD*" } do
      assert.is_nil(smtpd.b64decode(bad), bad)
    end
  end)
end)

describe("smtpd.MISSING", function()
  it("is one sentinel that prints as MISSING", function()
    assert.are.equal("MISSING", tostring(smtpd.MISSING))
    assert.are.equal(smtpd.MISSING, require("smtpd").MISSING)
  end)
end)
