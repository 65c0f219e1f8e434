-- luacheck configuration (`luacheck lua scripts spec`).
std = "luajit"
max_line_length = 120

-- Names a handler script may define at top level (the "globals" form of a
-- handler, see docs/auth-api.md section 1).
local handler_globals = {
  "handle_HELO", "handle_EHLO", "handle_MAIL", "handle_RCPT", "handle_DATA",
  "handle_RSET", "handle_QUIT", "handle_NOOP", "handle_VRFY", "handle_STARTTLS",
  "handle_PROXY", "handle_AUTH", "handle_exception", "authenticator", "options",
  "auth_PLAIN", "auth_LOGIN", "auth_CRAM__MD5", "auth_XOAUTH2", "auth_OAUTHBEARER",
  "auth_SCRAM__SHA__1", "auth_SCRAM__SHA__256", "auth_NTLM", "auth_GSSAPI",
}

files["scripts/"] = {
  globals = handler_globals,
  allow_defined_top = true,
  unused_args = false,
  ignore = { "131" },
}

files["spec/"] = {
  std = "+busted",
}

-- Handler scripts kept as files by the specs.
local handler_files = {
  std = "luajit",
  globals = handler_globals,
  allow_defined_top = true,
  unused_args = false,   -- hooks have fixed signatures
  ignore = { "131" },    -- hooks are "unused" globals: the server calls them
}
files["spec/**/fixtures/"] = handler_files
files["spec/reference/handlers/"] = handler_files
