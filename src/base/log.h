/* log.h — one line per event on stderr, with a level and (when there is one)
 * a session id. Owns the escaping of client bytes: every byte a client sent
 * goes through log_escape() so CR, LF and other control bytes can never forge
 * a log line. Must not see secrets: callers redact before logging. */
#ifndef LUASMTPD_LOG_H
#define LUASMTPD_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3, LOG_TRACE = 4 };

/* Messages above this level are dropped; -d raises it. */
extern int log_max_level;

/* Printed before the session id when set ("w0" in worker 0), so the lines of
 * several worker processes can be told apart. */
extern char log_process_tag[16];

#define log_enabled(level) ((int)(level) <= log_max_level)

/* Logs one line. sid may be NULL for server-wide events. */
void log_msg(enum log_level level, const char *sid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *sid, const char *fmt, va_list ap);

/* Writes an escaped, NUL-terminated copy of in[0..n) into out (out_cap
 * bytes, at least 5): printable ASCII stays, backslash and everything else
 * become \\, \r, \n, \t or \xHH. Truncates with "..." when out is too small.
 * Returns out. */
char *log_escape(const char *in, size_t n, char *out, size_t out_cap);

#endif
