/* status_line.h — the one check of an SMTP reply line that a script hands
 * us (a hook's return, an AuthResult's message, handle_exception's answer,
 * server:push): three digits, then the end, a space or a dash (RFC 5321
 * 4.2), and one line (no CR, LF or NUL, which would let a script or the
 * data it echoes inject replies). */
#ifndef LUASMTPD_STATUS_LINE_H
#define LUASMTPD_STATUS_LINE_H

#include <ctype.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static inline bool status_line_valid(const char *p, size_t n)
{
    return n >= 3 && isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
           isdigit((unsigned char)p[2]) && (n == 3 || p[3] == ' ' || p[3] == '-') &&
           !memchr(p, '\r', n) && !memchr(p, '\n', n) && !memchr(p, '\0', n);
}

#endif
