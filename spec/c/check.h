/* check.h — the few lines of test harness the C unit tests share: named
 * cases, CHECK() inside them, and the closing "N passed, N failed" line.
 * Header-only on purpose (each test is one .c file); it must not grow into
 * a framework or know anything about the code under test. */
#ifndef LUASMTPD_SPEC_CHECK_H
#define LUASMTPD_SPEC_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static struct {
    int passed, failed;
    int case_failed;
    char name[160];
} check_state;

/* Starts a named case; everything CHECKed until case_end() belongs to it. */
static void case_begin(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(check_state.name, sizeof check_state.name, fmt, ap);
    va_end(ap);
    check_state.case_failed = 0;
}

static void case_end(void)
{
    if (check_state.case_failed)
        check_state.failed++;
    else
        check_state.passed++;
}

static void check_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s:%d: [%s] CHECK(%s) failed", file, line, check_state.name, expr);
    if (fmt && *fmt) {
        fputs(": ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fputc('\n', stderr);
    check_state.case_failed = 1;
}

/* CHECK(cond, "printf format", args...) — the message says what was seen. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) check_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                           \
    } while (0)

/* Prints the line the build's test runner reads and gives main's status. */
static int check_report(void)
{
    printf("%d passed, %d failed\n", check_state.passed, check_state.failed);
    return check_state.failed ? 1 : 0;
}

#endif
