--- Differential test cases: raw SMTP dialogues run against aiosmtpd 1.4.3
-- and luasmtpd by spec/reference/compare.lua.
--
-- A case:
--   name        unique; also the `it` name in spec/functional/reference_spec.lua
--   handler     a name from spec/reference/handlers/ (and HANDLERS in
--               ref_server.py); default "plain"
--   options     { name = value } given to both servers as `-o name=value`
--               (auth_require_tls=false is always added unless set here)
--   size        data size limit, given as `-s N`
--   send        client writes, byte-exact, CRLF explicit; each string is one
--               write, so several commands in one string are pipelined
--   expect_diff { { line, "deviation"[, "luasmtpd line"] }, ... }: a line of
--               the normalised transcript (1 = greeting; { from, to } for a
--               range, to = -1 for "to the end") where luasmtpd may differ,
--               the key in `deviations` below saying why, and (for a single
--               line) the exact line auth-api.md prescribes there, checked
--               too. A listed difference that does not occur is reported.
--   normalise   function(lines, side) -> lines, for a documented deviation
--               that changes the number of lines (side: "aiosmtpd"/"luasmtpd")
--
-- The transcript: one line per reply line, CRLF removed; "<closed>" where
-- the server closed the connection, "<no reply>" where a reply did not come
-- within the runner's timeout, "<open>" when the connection was left open.
-- A dialogue that leaves the connection open in command state gets an
-- epilogue "QUIT\r\n" (shown as such), so stray replies are caught.
--
-- Only the deviations listed here may be accepted, and each must be a
-- **(fix)** (README, "Where luasmtpd differs from aiosmtpd"; or the two global ones). Any
-- other difference is a bug in one of the two servers or in the docs: report
-- it, do not add it here.
local mime = require "mime"

local D = {}

--- Normalisations compare.lua applies to every case.
D.global = {
  ident = "the greeting's text after the hostname (`Python SMTP 1.4.3` vs luasmtpd's ident) "
    .. "is replaced by <ident> on both sides",
  pipelining = "luasmtpd's `250-PIPELINING` EHLO line (auth-api.md 4.1, (fix)) is removed; the "
    .. "runner checks that every luasmtpd EHLO reply had one",
}

--- Accepted deviations: key -> where auth-api.md documents it.
D.deviations = {
  ["fix:bogus-421"] = "auth-api.md 7: the fifth unrecognised command gets "
    .. "`421 4.7.0 <hostname> Error: too many unrecognized commands` and close (fix); "
    .. "aiosmtpd sends `502 5.5.1 Too many unrecognized commands, goodbye.`",
  ["fix:auth-mech-case"] = "auth-api.md 4.2 #8: AUTH mechanism names match case-insensitively "
    .. "(fix); aiosmtpd answers 504",
  ["fix:auth-in-transaction"] = "auth-api.md 4.2 #5: AUTH while a mail transaction is open gets "
    .. "`503 5.5.1 Error: MAIL transaction in progress` (fix); aiosmtpd runs it",
  ["fix:authzid"] = "auth-api.md 4.5: a non-empty authzid different from the login fails with "
    .. "535 unless auth_allow_authzid (fix); aiosmtpd ignores the authzid",
  ["fix:auth-line-length"] = "auth-api.md 4.2 and 3.5: an AUTH command with an initial response "
    .. "and a challenge response may be up to 12,288 octets (fix); aiosmtpd stops at 512 "
    .. "(`500 Command line too long`) and 1001 (echoes a ValueError)",
  ["fix:auth-response-too-long"] = "auth-api.md 3.5: a challenge response over 12,288 octets gets "
    .. "`500 5.5.6 Authentication Exchange line is too long` (fix); aiosmtpd echoes a ValueError",
  ["fix:auth-failure-limit"] = "auth-api.md 4.6: after auth_failure_limit (default 5) failed AUTH "
    .. "attempts, `421 4.7.0 <hostname> Error: too many failed authentication attempts` and "
    .. "close (fix); aiosmtpd has no limit",
  ["fix:auth-no-final-reply"] = "auth-api.md 4.3/4.4: a mechanism or handle_AUTH that ends "
    .. "without a final reply is followed by `535 5.7.8 Authentication credentials invalid` "
    .. "(fix); aiosmtpd sends nothing and the client hangs",
  ["fix:old-style-success"] = "auth-api.md 4.4: `true` from a mechanism sets "
    .. "session.authenticated (fix); aiosmtpd's old-style success does not, so it accepts AUTH "
    .. "again",
  ["fix:auth-line-omitted"] = "auth-api.md 4.1: the 250-AUTH line is left out when no "
    .. "mechanism exists (fix); aiosmtpd sends `250-AUTH ` with nothing after it",
  ["fix:hook-error"] = "auth-api.md 5: an error in handler code is never sent to the client: "
    .. "`451 4.3.0 Error: local error in processing`, in AUTH `454 4.7.0 Temporary "
    .. "authentication failure` (fix); aiosmtpd sends `500 Error: (Exception) text`",
  ["fix:mail-auth-param"] = "auth-api.md 7: `MAIL FROM:<...> AUTH=<xtext>` is accepted (fix); "
    .. "aiosmtpd answers 555",
  ["strict:mail-allowance"] = "auth-api.md 4.2 and RFC 1870/6531: a MAIL line may exceed 512 "
    .. "octets by 26 (SIZE) and 10 (SMTPUTF8), once; aiosmtpd adds the allowance again on every "
    .. "EHLO of a connection (its class-level command_size_limits grows), so luasmtpd answers "
    .. "`500 Command line too long` where aiosmtpd, after two EHLOs, accepts",
  ["strict:base64"] = "auth-api.md 4.2: base64 is strict, `=` padding at the end only and "
    .. "nothing after it; Python's b64decode(validate=True) also accepts extra `=` after a "
    .. "complete group",
  ["rfc4954:initial-equals"] = "auth-api.md 4.2 (RFC 4954 4): an initial response of exactly `=` "
    .. "means present and empty; aiosmtpd tries to decode it as base64 and answers 501",
  ["fix:bare-newline"] = "auth-api.md 7: a message holding a bare CR or LF is refused after the "
    .. "final dot with `550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings` "
    .. "(fix: SMTP smuggling; the advice is for clients such as curl that send LF-only files); "
    .. "aiosmtpd accepts it",
}

local function b64(s)
  return (mime.b64(s)) or ""
end

-- Credentials of the reference authenticator.
local PLAIN_OK = b64("\0alice\0s3cret")
local PLAIN_BAD = b64("\0alice\0wrong")
local EHLO = "EHLO client.test\r\n"
local HELO = "HELO client.test\r\n"
local QUIT = "QUIT\r\n"
local MAIL = "MAIL FROM:<sender@example.com>\r\n"
-- Replies auth-api.md prescribes where luasmtpd deviates.
local INVALID = "535 5.7.8 Authentication credentials invalid"
local BARE = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings"
local LOCAL_ERROR = "451 4.3.0 Error: local error in processing"
local RCPT = "RCPT TO:<rcpt@example.com>\r\n"

-- A command line of exactly `len` octets before CRLF.
local function noop_of(len)
  return "NOOP " .. string.rep("x", len - 5) .. "\r\n"
end
local function mail_of(len)
  local head = "MAIL FROM:<"
  local tail = "@example.com>"
  return head .. string.rep("a", len - #head - #tail) .. tail .. "\r\n"
end

local cases = {}
D.cases = cases
local function case(c)
  cases[#cases + 1] = c
end

-- Drop one exact line from the aiosmtpd side (for a documented deviation
-- that removes a line in luasmtpd).
local function drop_ref_line(text)
  return function(lines, side)
    if side ~= "aiosmtpd" then
      return lines
    end
    local out = {}
    for _, l in ipairs(lines) do
      if l ~= text then
        out[#out + 1] = l
      end
    end
    return out
  end
end

-- region: connection, framing, unknown commands ---------------------------------

case { name = "quit", send = { QUIT } }
case { name = "quit_lowercase", send = { "quit\r\n" } }
case { name = "quit_with_argument", send = { "QUIT now\r\n", QUIT } }
case { name = "noop", send = { "NOOP\r\n", "NOOP anything at all\r\n", QUIT } }
case { name = "empty_line", send = { "\r\n", "NOOP\r\n", QUIT } }
case { name = "space_only_line", send = { " \r\n", QUIT } }
case { name = "leading_space_command", send = { " NOOP\r\n", QUIT } }
case { name = "tab_separated_argument", send = { "NOOP\tx\r\n", "HELO\tclient.test\r\n", QUIT } }
case { name = "unknown_command", send = { "FOO\r\n", "FOO bar baz\r\n", "foo\r\n", QUIT } }
case { name = "unknown_commands_four_then_valid",
       send = { "FOO\r\n", "BAR\r\n", "BAZ\r\n", "QUX\r\n", "NOOP\r\n", QUIT } }
case { name = "unknown_commands_five",
       send = { "FOO\r\n", "BAR\r\n", "BAZ\r\n", "QUX\r\n", "QUUX\r\n", "NOOP\r\n" },
       expect_diff = { { 6, "fix:bogus-421", "421 4.7.0 mx.test Error: too many unrecognized commands" } } }
case { name = "lowercase_commands",
       send = { "ehlo client.test\r\n", "mail from:<a@example.com>\r\n", "rcpt to:<b@example.com>\r\n",
                "rset\r\n", "noop\r\n", "help\r\n", "quit\r\n" } }
case { name = "mixed_case_commands", send = { "NoOp\r\n", "HeLo client.test\r\n", "QuIt\r\n" } }
case { name = "non_ascii_command", send = { "N\xC3\x96OP\r\n", QUIT } }
case { name = "non_ascii_argument", send = { "NOOP caf\xC3\xA9\r\n", "HELO caf\xC3\xA9.test\r\n", QUIT } }
case { name = "non_ascii_argument_smtputf8", options = { enable_SMTPUTF8 = true },
       send = { "NOOP caf\xC3\xA9\r\n", "EHLO caf\xC3\xA9.test\r\n", QUIT } }
case { name = "bare_lf_command_lines", send = { "NOOP\nNOOP\r\n", "HELO client.test\n", "QUIT\n" } }
case { name = "command_split_across_writes", send = { "NO", "OP\r\nQU", "IT\r\n" } }
case { name = "command_line_512", send = { noop_of(512), QUIT } }
case { name = "command_line_513", send = { noop_of(513), "NOOP\r\n", QUIT } }
case { name = "command_line_1001", send = { noop_of(1001), "NOOP\r\n", QUIT } }
case { name = "command_line_1002", send = { noop_of(1002), "NOOP\r\n", QUIT } }
case { name = "command_line_70000", send = { noop_of(70000), "NOOP\r\n", QUIT } }
case { name = "command_line_long_pipelined", send = { noop_of(3000) .. "NOOP ok\r\n" .. QUIT } }
case { name = "pipelined_after_quit", send = { "QUIT\r\nNOOP\r\n" } }
case { name = "pipelined_simple_batch", send = { "RSET\r\nNOOP\r\nHELP\r\nVRFY a@example.com\r\n" .. QUIT } }

-- endregion

-- region: HELO / EHLO -------------------------------------------------------------

case { name = "helo", send = { HELO, QUIT } }
case { name = "helo_no_argument", send = { "HELO\r\n", "HELO \r\n", QUIT } }
case { name = "helo_extra_spaces", send = { "HELO    client.test   \r\n", "HELO two words\r\n", QUIT } }
case { name = "helo_twice", send = { "HELO a.test\r\n", "HELO b.test\r\n", QUIT } }
case { name = "ehlo", send = { EHLO, QUIT } }
case { name = "ehlo_no_argument", send = { "EHLO\r\n", "EHLO  \r\n", QUIT } }
case { name = "ehlo_twice", send = { EHLO, EHLO, QUIT } }
case { name = "ehlo_size_limit", size = 1000, send = { EHLO, QUIT } }
case { name = "ehlo_no_size_limit", size = 0, send = { EHLO, QUIT } }
case { name = "ehlo_smtputf8", options = { enable_SMTPUTF8 = true }, send = { EHLO, QUIT } }
case { name = "ehlo_auth_require_tls", handler = "auth", options = { auth_require_tls = true },
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH\r\n", QUIT } }
case { name = "helo_resets_transaction", send = { EHLO, MAIL, HELO, RCPT, QUIT } }
case { name = "ehlo_resets_transaction", send = { EHLO, MAIL, RCPT, EHLO, "DATA\r\n", RCPT, QUIT } }

-- endregion

-- region: MAIL ----------------------------------------------------------------------

case { name = "mail_before_helo", send = { MAIL, "mail from:<a@example.com>\r\n", "MAIL\r\n", QUIT } }
case { name = "mail_no_argument_after_helo", send = { HELO, "MAIL\r\n", QUIT } }
case { name = "mail_no_argument_after_ehlo", send = { EHLO, "MAIL\r\n", QUIT } }
case { name = "mail_syntax_errors",
       send = { EHLO, "MAIL TO:<a@example.com>\r\n", "MAIL FROM<a@example.com>\r\n", "MAIL FROM:\r\n",
                "MAIL FROM: \r\n", "MAIL FROMAGE:<a@example.com>\r\n", QUIT } }
case { name = "mail_accepted", send = { EHLO, MAIL, QUIT } }
case { name = "mail_address_forms", handler = "hooks",
       send = { EHLO, "MAIL FROM:<a@example.com>\r\n", "RSET\r\n", "MAIL FROM: <a@example.com>\r\n",
                "RSET\r\n", "MAIL FROM:a@example.com\r\n", "RSET\r\n", "MAIL FROM:   <a@example.com>   \r\n",
                "RSET\r\n", "MAIL  FROM:<a@example.com>\r\n", QUIT } }
case { name = "mail_address_unusual_forms", handler = "hooks",
       send = { EHLO, "MAIL FROM:<a@example.com\r\n", "RSET\r\n",
                "MAIL FROM:<@route.test:a@example.com>\r\n", "RSET\r\n",
                "MAIL FROM:<\"a b\"@example.com>\r\n", "RSET\r\n", "MAIL FROM:<a@[192.0.2.1]>\r\n", "RSET\r\n",
                "MAIL FROM:<local>\r\n", "RSET\r\n", "MAIL FROM:<a b@example.com>\r\n", QUIT } }
case { name = "mail_malformed_addresses",
       send = { EHLO, "MAIL FROM:<a@>\r\n", "MAIL FROM:<@example.com>\r\n", "MAIL FROM:a@b@c\r\n",
                "MAIL FROM:<>>\r\n", QUIT } }
case { name = "mail_null_sender", send = { EHLO, "MAIL FROM:<>\r\n", RCPT, "DATA\r\n", "x\r\n.\r\n", QUIT } }
case { name = "mail_null_sender_hooks", handler = "hooks", send = { EHLO, "MAIL FROM:<>\r\n", QUIT } }
case { name = "mail_lowercase_keyword", send = { EHLO, "mail from:<a@example.com>\r\n", QUIT } }
case { name = "mail_nested", send = { EHLO, MAIL, MAIL, QUIT } }
case { name = "mail_nested_check_order",
       send = { EHLO, MAIL, "MAIL FROM:<a@>\r\n", "MAIL FROM:\r\n", "MAIL\r\n",
                "MAIL FROM:<b@example.com> FOO=BAR\r\n", "MAIL FROM:<b@example.com> SIZE=abc\r\n", QUIT } }
case { name = "mail_params_after_helo", send = { HELO, "MAIL FROM:<a@example.com> SIZE=100\r\n", QUIT } }
case { name = "mail_size_param",
       send = { EHLO, "MAIL FROM:<a@example.com> SIZE=100\r\n", "RSET\r\n",
                "MAIL FROM:<a@example.com> SIZE=abc\r\n", "MAIL FROM:<a@example.com> SIZE\r\n",
                "MAIL FROM:<a@example.com> SIZE=\r\n", "MAIL FROM:<a@example.com> SIZE=0\r\n", QUIT } }
case { name = "mail_size_over_limit", size = 1000,
       send = { EHLO, "MAIL FROM:<a@example.com> SIZE=1001\r\n", "MAIL FROM:<a@example.com> SIZE=1000\r\n", QUIT } }
case { name = "mail_body_param",
       send = { EHLO, "MAIL FROM:<a@example.com> BODY=8BITMIME\r\n", "RSET\r\n",
                "MAIL FROM:<a@example.com> BODY=7BIT\r\n", "RSET\r\n",
                "MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n", "MAIL FROM:<a@example.com> body=8bitmime\r\n",
                "RSET\r\n", "MAIL FROM:<a@example.com> BODY\r\n", QUIT } }
case { name = "mail_smtputf8_disabled",
       send = { EHLO, "MAIL FROM:<a@example.com> SMTPUTF8\r\n", "MAIL FROM:<a@example.com> SMTPUTF8=YES\r\n", QUIT } }
case { name = "mail_smtputf8_enabled", options = { enable_SMTPUTF8 = true },
       send = { EHLO, "MAIL FROM:<a@example.com> SMTPUTF8\r\n", "RSET\r\n",
                "MAIL FROM:<caf\xC3\xA9@example.com> SMTPUTF8\r\n", "RSET\r\n",
                "MAIL FROM:<a@example.com> SMTPUTF8=YES\r\n", QUIT } }
case { name = "mail_unknown_params",
       send = { EHLO, "MAIL FROM:<a@example.com> FOO=BAR\r\n", "MAIL FROM:<a@example.com> FOO\r\n",
                "MAIL FROM:<a@example.com> FOO-BAR=1\r\n", "MAIL FROM:<a@example.com> SIZE=10 FOO=1\r\n",
                "MAIL FROM:<a@example.com> =1\r\n", QUIT } }
case { name = "mail_duplicate_params", handler = "hooks",
       send = { EHLO, "MAIL FROM:<a@example.com> SIZE=100 SIZE=200 BODY=7BIT BODY=8BITMIME\r\n", QUIT } }
case { name = "mail_non_ascii_address", send = { EHLO, "MAIL FROM:<caf\xC3\xA9@example.com>\r\n", QUIT } }
case { name = "mail_auth_param", send = { EHLO, "MAIL FROM:<a@example.com> AUTH=<>\r\n", QUIT },
       expect_diff = { { 7, "fix:mail-auth-param", "250 OK" } } }
case { name = "mail_params_hooks", handler = "hooks",
       send = { EHLO, "MAIL FROM:<a@example.com>SIZE=10\r\n", "RSET\r\n",
                "MAIL FROM:<a@example.com>   size=10    body=8bitmime  \r\n", QUIT } }
case { name = "mail_blocked_by_hook", handler = "hooks",
       send = { EHLO, "MAIL FROM:<blocked@example.com>\r\n", RCPT, MAIL, RCPT, QUIT } }
case { name = "mail_line_length_after_helo", send = { HELO, mail_of(512), "RSET\r\n", mail_of(513), QUIT } }
case { name = "mail_line_length_after_ehlo", send = { EHLO, mail_of(538), "RSET\r\n", mail_of(539), QUIT } }
case { name = "mail_line_length_after_ehlo_no_size", size = 0,
       send = { EHLO, mail_of(512), "RSET\r\n", mail_of(513), QUIT } }
case { name = "mail_line_length_after_ehlo_smtputf8", options = { enable_SMTPUTF8 = true },
       send = { EHLO, mail_of(548), "RSET\r\n", mail_of(549), QUIT } }
case { name = "mail_line_length_after_two_ehlo", send = { EHLO, EHLO, mail_of(560), QUIT },
       expect_diff = { { 12, "strict:mail-allowance", "500 Command line too long" } } }

-- endregion

-- region: RCPT ----------------------------------------------------------------------

case { name = "rcpt_before_helo", send = { RCPT, QUIT } }
case { name = "rcpt_before_mail", send = { EHLO, RCPT, "RCPT\r\n", QUIT } }
case { name = "rcpt_syntax_errors",
       send = { EHLO, MAIL, "RCPT\r\n", "RCPT FROM:<b@example.com>\r\n", "RCPT TO:\r\n", "RCPT TO:<b@>\r\n",
                "RCPT TO:<b@example.com> FOO=1\r\n", "RCPT TO:<b@example.com> =\r\n",
                "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n", QUIT } }
case { name = "rcpt_after_helo",
       send = { HELO, MAIL, "RCPT\r\n", "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n", RCPT, QUIT } }
case { name = "rcpt_forms",
       send = { EHLO, MAIL, "rcpt to: <b@example.com>  \r\n", "RCPT TO:<>\r\n", "RCPT TO:c@example.com\r\n", QUIT } }
case { name = "rcpt_local_part_only", handler = "hooks",
       send = { EHLO, MAIL, "RCPT TO:<postmaster>\r\n", "RCPT TO:<Postmaster@Example.COM>\r\n", QUIT } }
case { name = "rcpt_hooks", handler = "hooks",
       send = { EHLO, MAIL, "RCPT TO:<one@example.com>\r\n", "RCPT TO:<x@nowhere.test>\r\n",
                "RCPT TO:<two@example.com>\r\n", "DATA\r\n", "hi\r\n.\r\n", QUIT } }

-- endregion

-- region: DATA ----------------------------------------------------------------------

case { name = "data_before_helo", send = { "DATA\r\n", QUIT } }
case { name = "data_before_mail", send = { EHLO, "DATA\r\n", QUIT } }
case { name = "data_before_rcpt", send = { EHLO, MAIL, "DATA\r\n", "DATA now\r\n", QUIT } }
case { name = "data_with_argument", send = { EHLO, MAIL, RCPT, "DATA now\r\n", "DATA\r\n", ".\r\n", QUIT } }
case { name = "data_simple", send = { EHLO, MAIL, RCPT, "DATA\r\n", "Subject: hi\r\n\r\nHello.\r\n.\r\n", QUIT } }
case { name = "data_content", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "Subject: hi\r\n\r\nHello, world.\r\n\r\n\tTab.\r\n.\r\n", QUIT } }
case { name = "data_nul_and_8bit_bytes", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "nul:\0 eight:\xC3\xA9\xFF del:\x7F\r\n.\r\n", QUIT } }
case { name = "data_dot_stuffing", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "..one\r\n...two\r\n.x\r\n. \r\n..\r\n.\r\n", QUIT } }
case { name = "data_empty_message", handler = "hooks", send = { EHLO, MAIL, RCPT, "DATA\r\n", ".\r\n", QUIT } }
case { name = "data_two_transactions", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "one\r\n.\r\n", RCPT,
                "MAIL FROM:<second@example.com>\r\n", "RCPT TO:<r2@example.com>\r\n", "DATA\r\n", "two\r\n.\r\n",
                QUIT } }
case { name = "data_line_1001_octets", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", string.rep("a", 999) .. "\r\n.\r\n", QUIT } }
case { name = "data_line_1002_octets",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", string.rep("a", 1000) .. "\r\n.\r\n", QUIT } }
case { name = "data_line_too_long_then_continue",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "ok\r\n" .. string.rep("b", 1002) .. "\r\nok\r\n.\r\n",
                MAIL, RCPT, "DATA\r\n", "short\r\n.\r\n", QUIT } }
case { name = "data_line_100002_octets",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", string.rep("c", 100000) .. "\r\n.\r\n", QUIT } }
case { name = "data_dot_stuffed_line_1001", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "." .. string.rep("d", 999) .. "\r\n.\r\n", QUIT } }
case { name = "data_size_limit_exceeded", size = 100,
       send = { EHLO, MAIL, RCPT, "DATA\r\n", string.rep("0123456789\r\n", 10) .. ".\r\n", MAIL, RCPT, "DATA\r\n",
                "short\r\n.\r\n", QUIT } }
case { name = "data_size_limit_exact", size = 100, handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", string.rep("012345678\r\n", 8) .. "0123456789\r\n.\r\n", QUIT } }
case { name = "data_size_limit_exceeded_by_one", size = 100,
       send = { EHLO, MAIL, RCPT, "DATA\r\n", string.rep("012345678\r\n", 8) .. "01234567890\r\n.\r\n", QUIT } }
case { name = "data_size_limit_dot_stuffed", size = 20, handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "..........\r\n........\r\n.\r\n", QUIT } }
case { name = "data_bare_lf", send = { EHLO, MAIL, RCPT, "DATA\r\n", "line one\nline two\r\n.\r\n", QUIT },
       expect_diff = { { 10, "fix:bare-newline", BARE } } }
case { name = "data_bare_cr", send = { EHLO, MAIL, RCPT, "DATA\r\n", "line one\rline two\r\n.\r\n", QUIT },
       expect_diff = { { 10, "fix:bare-newline", BARE } } }
case { name = "data_lf_dot_lf_is_not_the_end",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "text\n.\nMAIL FROM:<smuggled@example.com>\r\n", ".\r\n", QUIT },
       expect_diff = { { 10, "fix:bare-newline", BARE } } }
case { name = "data_dot_lf_is_not_the_end",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "body\r\n.\nNOOP\r\n", ".\r\n", QUIT },
       expect_diff = { { 10, "fix:bare-newline", BARE } } }
case { name = "data_message_split_across_writes", handler = "hooks",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "Subj", "ect: x\r\n\r\nbo", "dy\r\n.", "\r\n", QUIT } }
case { name = "data_pipelined_whole_transaction", handler = "hooks",
       send = { EHLO .. MAIL .. RCPT .. "RCPT TO:<second@example.com>\r\nDATA\r\n"
                .. "Subject: x\r\n\r\nbody\r\n.\r\n" .. QUIT } }
case { name = "data_pipelined_rejected_data",
       send = { EHLO, MAIL .. "DATA\r\nSubject: x\r\n.\r\n" .. QUIT } }
case { name = "data_pipelined_with_errors",
       send = { EHLO .. MAIL .. "RCPT TO:<b@>\r\n" .. RCPT .. "DATA\r\n", "x\r\n.\r\n", QUIT } }
case { name = "data_then_rcpt_needs_mail",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "x\r\n.\r\n", RCPT, "DATA\r\n", QUIT } }

-- endregion

-- region: RSET, NOOP, VRFY, EXPN, HELP, STARTTLS --------------------------------------

case { name = "rset", send = { "RSET\r\n", "RSET x\r\n", EHLO, MAIL, RCPT, "RSET\r\n", RCPT, "DATA\r\n", QUIT } }
case { name = "rset_keeps_helo", send = { HELO, "RSET\r\n", MAIL, QUIT } }
case { name = "command_hooks", handler = "hooks",
       send = { HELO, EHLO, "RSET\r\n", "NOOP\r\n", "NOOP  x  y \r\n", "NOOP   \r\n", "VRFY <v@example.com>\r\n",
                "VRFY v@example.com\r\n", "QUIT\r\n" } }
case { name = "vrfy",
       send = { "VRFY\r\n", "VRFY alice@example.com\r\n", "VRFY <alice@example.com>\r\n", "VRFY alice\r\n",
                "VRFY <a@>\r\n", "VRFY   spaced@example.com   \r\n", QUIT } }
case { name = "expn", send = { "EXPN\r\n", "EXPN list@example.com\r\n", QUIT } }
case { name = "help", send = { "HELP\r\n", EHLO, "HELP\r\n", QUIT } }
case { name = "help_commands",
       send = { "HELP MAIL\r\n", "HELP RCPT\r\n", "HELP AUTH\r\n", "HELP NOOP\r\n", "HELP quit\r\n", "HELP DATA\r\n",
                "HELP VRFY\r\n", "HELP RSET\r\n", "HELP HELO\r\n", "HELP EHLO\r\n", "HELP HELP\r\n", QUIT } }
case { name = "help_extended", send = { EHLO, "HELP MAIL\r\n", "HELP RCPT\r\n", "HELP DATA\r\n", QUIT } }
case { name = "help_unknown",
       send = { "HELP FOO\r\n", "HELP EXPN\r\n", "HELP STARTTLS\r\n", "HELP MAIL RCPT\r\n", QUIT } }
case { name = "starttls_not_available", send = { "STARTTLS\r\n", "STARTTLS x\r\n", EHLO, "STARTTLS\r\n", QUIT } }
case { name = "command_call_limit", options = { command_call_limit = 3 },
       send = { "NOOP\r\n", "NOOP\r\n", "RSET\r\n", "RSET\r\n", "NOOP\r\n", "NOOP\r\n", QUIT } }
case { name = "command_call_limit_unknown_command", options = { command_call_limit = 3 },
       send = { "FOO\r\n", "FOO\r\n", "FOO\r\n", "FOO\r\n", QUIT } }

-- endregion

-- region: AUTH: checks in order -------------------------------------------------------

case { name = "auth_before_ehlo", handler = "auth",
       send = { "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH\r\n", QUIT } }
case { name = "auth_after_helo", handler = "auth",
       send = { HELO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH\r\n", "AUTH FOO\r\n", QUIT } }
case { name = "auth_no_argument", handler = "auth", send = { EHLO, "AUTH\r\n", "AUTH \r\n", QUIT } }
case { name = "auth_too_many_values", handler = "auth",
       send = { EHLO, "AUTH PLAIN a b\r\n", "AUTH FOO a b\r\n", QUIT } }
case { name = "auth_unknown_mechanism", handler = "auth",
       send = { EHLO, "AUTH CRAM-MD5\r\n", "AUTH FOO xyz\r\n", "AUTH PLAIN-X\r\n", QUIT } }
case { name = "auth_mechanism_lowercase", handler = "auth",
       send = { EHLO, "AUTH plain " .. PLAIN_OK .. "\r\n", QUIT },
       expect_diff = { { 7, "fix:auth-mech-case", "235 2.7.0 Authentication successful" } } }
case { name = "auth_extra_spaces", handler = "auth", send = { EHLO, "AUTH   PLAIN   " .. PLAIN_OK .. "   \r\n", QUIT } }
case { name = "auth_plain_trailing_space", handler = "auth",
       send = { EHLO, "AUTH PLAIN \r\n", PLAIN_OK .. "\r\n", QUIT } }
case { name = "auth_non_ascii_argument", handler = "auth",
       send = { EHLO, "AUTH PLAIN caf\xC3\xA9\r\n", "AUTH \xC3\xA9\r\n", QUIT } }
case { name = "auth_without_authenticator", handler = "plain",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH LOGIN\r\n", b64("alice") .. "\r\n",
                b64("s3cret") .. "\r\n", QUIT } }
case { name = "auth_no_mechanisms", handler = "no_mechanisms",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH LOGIN\r\n", QUIT },
       normalise = drop_ref_line("250-AUTH ") }

-- endregion

-- region: AUTH PLAIN -------------------------------------------------------------------

case { name = "auth_plain_success", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", MAIL, RCPT, "DATA\r\n", "x\r\n.\r\n", QUIT } }
case { name = "auth_plain_wrong_password", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", QUIT } }
case { name = "auth_plain_unknown_user", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("\0mallory\0s3cret") .. "\r\n", QUIT } }
case { name = "auth_plain_bad_base64", handler = "auth",
       send = { EHLO, "AUTH PLAIN !!!!\r\n", "AUTH PLAIN YWxpY2U\r\n", "AUTH PLAIN *\r\n", QUIT } }
case { name = "auth_plain_base64_excess_padding", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("alice\0alice\0s3cret") .. "=\r\n", QUIT },
       expect_diff = { { 7, "strict:base64", "501 5.5.2 Can't decode base64" } } }
case { name = "auth_plain_base64_data_after_padding", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "QQ==\r\n", QUIT } }
case { name = "auth_plain_cant_split", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("alice\0s3cret") .. "\r\n",
                "AUTH PLAIN " .. b64("\0alice\0s3cret\0x") .. "\r\n",
                "AUTH PLAIN " .. b64("no nul at all") .. "\r\n", QUIT } }
case { name = "auth_plain_empty_fields", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("\0\0") .. "\r\n", QUIT } }
case { name = "auth_plain_initial_equals", handler = "auth", send = { EHLO, "AUTH PLAIN =\r\n", QUIT },
       expect_diff = { { 7, "rfc4954:initial-equals", "501 5.5.2 Can't split auth value" } } }
case { name = "auth_plain_challenge_success", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", PLAIN_OK .. "\r\n", MAIL, QUIT } }
case { name = "auth_plain_challenge_failure", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", PLAIN_BAD .. "\r\n", QUIT } }
case { name = "auth_plain_challenge_abort", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", "*\r\n", "NOOP\r\n", QUIT } }
case { name = "auth_plain_challenge_abort_spaces", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", "  *  \r\n", QUIT } }
case { name = "auth_plain_challenge_bad_base64", handler = "auth", send = { EHLO, "AUTH PLAIN\r\n", "@@@@\r\n", QUIT } }
case { name = "auth_plain_challenge_empty_line", handler = "auth", send = { EHLO, "AUTH PLAIN\r\n", "\r\n", QUIT } }
case { name = "auth_plain_challenge_equals", handler = "auth", send = { EHLO, "AUTH PLAIN\r\n", "=\r\n", QUIT } }
case { name = "auth_plain_challenge_whitespace", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", "   " .. PLAIN_OK .. "  \r\n", QUIT } }
case { name = "auth_plain_challenge_response_is_not_a_command", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", "QUIT\r\n", QUIT } }
case { name = "auth_plain_authzid_same_as_login", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("alice\0alice\0s3cret") .. "\r\n", QUIT } }
case { name = "auth_plain_authzid_other", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("bob\0alice\0s3cret") .. "\r\n", MAIL, QUIT },
       expect_diff = { { 7, "fix:authzid", INVALID } } }
case { name = "auth_plain_pipelined", handler = "auth",
       send = { EHLO .. "AUTH PLAIN " .. PLAIN_OK .. "\r\n" .. MAIL .. RCPT .. "DATA\r\n", "x\r\n.\r\n" .. QUIT } }
case { name = "auth_plain_challenge_pipelined", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n" .. PLAIN_OK .. "\r\nNOOP\r\n" .. MAIL .. QUIT } }
case { name = "auth_initial_response_600_octets", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("\0alice\0" .. string.rep("p", 440)) .. "\r\n", QUIT },
       expect_diff = { { 7, "fix:auth-line-length", INVALID } } }
case { name = "auth_challenge_response_2000_octets", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", b64("\0alice\0" .. string.rep("p", 1490)) .. "\r\n", "NOOP\r\n", QUIT },
       expect_diff = { { 8, "fix:auth-line-length", INVALID } } }
case { name = "auth_challenge_response_13000_octets", handler = "auth",
       send = { EHLO, "AUTH PLAIN\r\n", string.rep("A", 13000) .. "\r\n", "NOOP\r\n", QUIT },
       -- aiosmtpd also answers the rest of the line as a command: one more line
       expect_diff = { { 8, "fix:auth-response-too-long", "500 5.5.6 Authentication Exchange line is too long" },
                       { { 9, -1 }, "fix:auth-response-too-long" } } }

-- endregion

-- region: AUTH LOGIN -------------------------------------------------------------------

case { name = "auth_login_success", handler = "auth",
       send = { EHLO, "AUTH LOGIN\r\n", b64("alice") .. "\r\n", b64("s3cret") .. "\r\n", MAIL, QUIT } }
case { name = "auth_login_initial_response", handler = "auth",
       send = { EHLO, "AUTH LOGIN " .. b64("alice") .. "\r\n", b64("s3cret") .. "\r\n", QUIT } }
case { name = "auth_login_initial_equals", handler = "auth",
       send = { EHLO, "AUTH LOGIN =\r\n", b64("s3cret") .. "\r\n", QUIT },
       expect_diff = { { 7, "rfc4954:initial-equals", "334 UGFzc3dvcmQA" },
                       { 8, "rfc4954:initial-equals", "535 5.7.8 Authentication credentials invalid" } } }
case { name = "auth_login_wrong_password", handler = "auth",
       send = { EHLO, "AUTH LOGIN\r\n", b64("alice") .. "\r\n", b64("nope") .. "\r\n", QUIT } }
case { name = "auth_login_abort_at_user", handler = "auth",
       send = { EHLO, "AUTH LOGIN\r\n", "*\r\n", "NOOP\r\n", QUIT } }
case { name = "auth_login_abort_at_password", handler = "auth",
       send = { EHLO, "AUTH LOGIN\r\n", b64("alice") .. "\r\n", "*\r\n", "NOOP\r\n", QUIT } }
case { name = "auth_login_bad_base64", handler = "auth",
       send = { EHLO, "AUTH LOGIN\r\n", "%%%\r\n", "AUTH LOGIN\r\n", b64("alice") .. "\r\n", "not base64!\r\n",
                "AUTH LOGIN ***\r\n", QUIT } }
case { name = "auth_login_empty_responses", handler = "auth", send = { EHLO, "AUTH LOGIN\r\n", "\r\n", "\r\n", QUIT } }
case { name = "auth_login_pipelined", handler = "auth",
       send = { EHLO, "AUTH LOGIN\r\n" .. b64("alice") .. "\r\n" .. b64("s3cret") .. "\r\n" .. MAIL .. QUIT } }

-- endregion

-- region: AUTH: state ------------------------------------------------------------------

case { name = "auth_twice", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH\r\n",
                "AUTH FOO\r\n", "AUTH LOGIN\r\n", QUIT } }
case { name = "auth_failure_then_success", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", "AUTH PLAIN " .. PLAIN_OK .. "\r\n", QUIT } }
case { name = "auth_during_transaction", handler = "auth",
       send = { EHLO, MAIL, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", RCPT, QUIT },
       expect_diff = { { 8, "fix:auth-in-transaction", "503 5.5.1 Error: MAIL transaction in progress" } } }
case { name = "auth_after_rset", handler = "auth",
       send = { EHLO, MAIL, "RSET\r\n", "AUTH PLAIN " .. PLAIN_OK .. "\r\n", QUIT } }
case { name = "auth_after_data", handler = "auth",
       send = { EHLO, MAIL, RCPT, "DATA\r\n", "x\r\n.\r\n", "AUTH PLAIN " .. PLAIN_OK .. "\r\n", QUIT } }
case { name = "auth_kept_across_ehlo_and_rset", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "RSET\r\n",
                "AUTH LOGIN\r\n", QUIT } }
case { name = "auth_after_helo_following_auth", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", HELO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", EHLO,
                "AUTH PLAIN " .. PLAIN_OK .. "\r\n", QUIT } }
case { name = "auth_four_failures", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", "AUTH PLAIN " .. PLAIN_BAD .. "\r\n",
                "AUTH LOGIN\r\n", b64("alice") .. "\r\n", b64("bad") .. "\r\n", "AUTH PLAIN " .. PLAIN_BAD .. "\r\n",
                "AUTH PLAIN " .. PLAIN_OK .. "\r\n", QUIT } }
-- luasmtpd sends its 421 straight after the fifth 535; the runner shows it
-- as the reply to the next command.
case { name = "auth_five_failures", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", "AUTH PLAIN " .. PLAIN_BAD .. "\r\n",
                "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", "AUTH PLAIN " .. PLAIN_BAD .. "\r\n",
                "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", "NOOP\r\n", QUIT },
       expect_diff = { { 12, "fix:auth-failure-limit",
                         "421 4.7.0 mx.test Error: too many failed authentication attempts" },
                       { { 13, -1 }, "fix:auth-failure-limit" } } }
case { name = "auth_authenticator_error", handler = "auth",
       send = { EHLO, "AUTH PLAIN " .. b64("\0crash\0x") .. "\r\n", "NOOP\r\n", QUIT },
       expect_diff = { { 7, "fix:hook-error", "454 4.7.0 Temporary authentication failure" } } }

-- endregion

-- region: auth_required ----------------------------------------------------------------

case { name = "auth_required_gates", handler = "auth_required",
       send = { "HELP\r\n", "VRFY a@example.com\r\n", MAIL, RCPT, "DATA\r\n", EHLO, MAIL, RCPT, "DATA\r\n",
                "NOOP\r\n", "RSET\r\n", "EXPN x\r\n", QUIT } }
case { name = "auth_required_after_auth", handler = "auth_required",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "HELP\r\n", "VRFY a@example.com\r\n", MAIL, RCPT,
                "DATA\r\n", "x\r\n.\r\n", QUIT } }
case { name = "auth_required_failed_auth", handler = "auth_required",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_BAD .. "\r\n", MAIL, QUIT } }

-- endregion

-- region: handler-defined mechanisms and handle_AUTH -------------------------------------

case { name = "mechanisms_ehlo", handler = "mechanisms", send = { EHLO, QUIT } }
case { name = "mechanism_null", handler = "mechanisms", send = { EHLO, "AUTH NULL\r\n", "AUTH NULL\r\n", QUIT } }
case { name = "mechanism_deny", handler = "mechanisms", send = { EHLO, "AUTH DENY\r\n", "AUTH DENY x\r\n", QUIT } }
case { name = "mechanism_silent_failure", handler = "mechanisms",
       send = { EHLO, "AUTH SILENT\r\n", "NOOP\r\n", QUIT },
       expect_diff = { { 7, "fix:auth-no-final-reply", INVALID } } }
case { name = "mechanism_old_style_success", handler = "mechanisms",
       send = { EHLO, "AUTH OLD\r\n", "AUTH OLD\r\n", QUIT },
       expect_diff = { { 8, "fix:old-style-success", "503 Already authenticated" } } }
case { name = "mechanism_challenge_success", handler = "mechanisms",
       send = { EHLO, "AUTH ECHO\r\n", b64("open sesame") .. "\r\n", MAIL, QUIT } }
case { name = "mechanism_challenge_wrong", handler = "mechanisms",
       send = { EHLO, "AUTH ECHO\r\n", b64("close sesame") .. "\r\n", QUIT } }
case { name = "mechanism_challenge_abort", handler = "mechanisms",
       send = { EHLO, "AUTH ECHO\r\n", "*\r\n", "NOOP\r\n", QUIT } }
case { name = "mechanism_dashed_name", handler = "mechanisms",
       send = { EHLO, "AUTH X-TOKEN bad\r\n", "AUTH X_TOKEN dG9rZW4=\r\n", "AUTH X-TOKEN dG9rZW4=\r\n", QUIT } }
case { name = "mechanism_dashed_name_lowercase", handler = "mechanisms",
       send = { EHLO, "AUTH x-token dG9rZW4=\r\n", QUIT },
       expect_diff = { { 7, "fix:auth-mech-case", "235 2.7.0 Token accepted" } } }
case { name = "mechanism_builtin_next_to_custom", handler = "mechanisms",
       send = { EHLO, "AUTH LOGIN " .. b64("alice") .. "\r\n", b64("s3cret") .. "\r\n", QUIT } }
case { name = "handle_auth_refuses_login", handler = "handle_auth",
       send = { EHLO, "AUTH LOGIN\r\n", "NOOP\r\n", QUIT } }
case { name = "handle_auth_no_final_reply", handler = "handle_auth",
       send = { EHLO, "AUTH LOGIN " .. b64("alice") .. "\r\n", "NOOP\r\n", QUIT },
       expect_diff = { { 7, "fix:auth-no-final-reply", INVALID } } }
case { name = "handle_auth_pushes_reply", handler = "handle_auth", send = { EHLO, "AUTH PLAIN\r\n", "NOOP\r\n", QUIT } }
case { name = "handle_auth_default_mechanism", handler = "handle_auth",
       send = { EHLO, "AUTH PLAIN " .. PLAIN_OK .. "\r\n", "AUTH PLAIN " .. PLAIN_OK .. "\r\n", QUIT } }
case { name = "handle_auth_after_checks", handler = "handle_auth",
       send = { "AUTH LOGIN\r\n", EHLO, "AUTH\r\n", "AUTH FOO\r\n", "AUTH LOGIN a b\r\n", QUIT } }

-- endregion

-- region: hook errors ------------------------------------------------------------------

case { name = "hook_error_in_rcpt", handler = "broken", send = { EHLO, MAIL, RCPT, "RSET\r\n", QUIT },
       expect_diff = { { 8, "fix:hook-error", LOCAL_ERROR } } }
case { name = "hook_wrong_return_type", handler = "broken",
       send = { EHLO, "MAIL FROM:<number@example.com>\r\n", MAIL, QUIT },
       expect_diff = { { 7, "fix:hook-error", LOCAL_ERROR } } }

-- endregion

return D
