/* log.c — writes log lines to stderr. Owns the line format:
 *   2026-11-27T22:39:27.123Z INFO [s12] message
 * Must not buffer across events (one write per line, so lines from several
 * worker processes never interleave mid-line). */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_max_level = LOG_INFO;
char log_process_tag[16];

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

void log_vmsg(enum log_level level, const char *sid, const char *fmt, va_list ap)
{
    if (!log_enabled(level)) return;
    char line[4096];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    /* The date part changes once a second; format it only then. */
    static __thread time_t cached_sec = -1; /* per thread: a reload builds on its own */
    static __thread char cached[32];
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = tv.tv_sec;
    }
    int n = snprintf(line, sizeof line, "%s.%03dZ %s ", cached, (int)(tv.tv_usec / 1000),
                     level_names[level]);
    if (log_process_tag[0]) n += snprintf(line + n, sizeof line - n, "%s ", log_process_tag);
    if (sid) n += snprintf(line + n, sizeof line - n, "[%s] ", sid);
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    if (m < 0) m = 0;
    n += m;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

void log_msg(enum log_level level, const char *sid, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, sid, fmt, ap);
    va_end(ap);
}

char *log_escape(const char *in, size_t n, char *out, size_t out_cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        char tmp[4];
        size_t k = 0;
        if (c == '\\') { tmp[k++] = '\\'; tmp[k++] = '\\'; }
        else if (c == '\r') { tmp[k++] = '\\'; tmp[k++] = 'r'; }
        else if (c == '\n') { tmp[k++] = '\\'; tmp[k++] = 'n'; }
        else if (c == '\t') { tmp[k++] = '\\'; tmp[k++] = 't'; }
        else if (c < 0x20 || c >= 0x7f) {
            tmp[k++] = '\\'; tmp[k++] = 'x'; tmp[k++] = hex[c >> 4]; tmp[k++] = hex[c & 15];
        } else tmp[k++] = (char)c;
        if (o + k + 4 > out_cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, tmp, k);
        o += k;
    }
    out[o] = '\0';
    return out;
}
