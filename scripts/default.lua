-- The default handler, compiled into luasmtpd and used when no --handler is
-- given: aiosmtpd's Debugging handler (smtpd.handlers.debugging), which
-- prints every message to stdout and rejects every AUTH attempt.
--
-- `luasmtpd -c NAME ARGS...` runs this script with `...` = "-c", NAME,
-- ARGS: it then returns the shipped handler NAME instead.
if select(1, ...) == "-c" then
  return require("smtpd.handlers").from_args(select(2, ...))
end
return require("smtpd.handlers.debugging")()
