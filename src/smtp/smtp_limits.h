/* smtp_limits.h — protocol limits, named once, next to where they come from. */
#ifndef LUASMTPD_SMTP_LIMITS_H
#define LUASMTPD_SMTP_LIMITS_H

/* RFC 5321 4.5.3.1.4: a command line is at most 512 octets with CRLF;
 * aiosmtpd compares the line without CRLF against 512. */
#define SMTP_LINE_MAX 512
/* RFC 1870 / RFC 6531: MAIL may grow by " SIZE=..." (26) and " SMTPUTF8"
 * (10) when those extensions are advertised (aiosmtpd's allowance). */
#define SMTP_MAIL_SIZE_EXTRA 26
#define SMTP_MAIL_SMTPUTF8_EXTRA 10
/* RFC 4954 4: an AUTH command with an initial response, and each
 * continuation line, may be up to 12288 octets. */
#define AUTH_LINE_MAX 12288
/* The most of a failed AUTH's login the failure log line keeps (raw bytes;
 * RFC 4954 sets no limit, the log line must stay one line). */
#define AUTH_LOGIN_LOG_MAX 256
/* RFC 5321 4.5.3.1.6: a text line is 998 octets + CRLF, plus one octet for
 * a transparency dot: 1001 with CRLF (aiosmtpd's line_length_limit). */
#define DATA_LINE_MAX 1001
/* aiosmtpd's BOGUS_LIMIT: the fifth unknown command ends the session. */
#define SMTP_BOGUS_LIMIT 5

#endif
