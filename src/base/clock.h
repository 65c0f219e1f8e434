/* clock.h — the one monotonic clock helper (seconds as a double), for
 * deadlines that must not jump with the wall clock: load budgets, worker
 * heartbeats, restart pauses. The event loop's own time is ev_now(). */
#ifndef LUASMTPD_CLOCK_H
#define LUASMTPD_CLOCK_H

#include <time.h>

static inline double clock_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#endif
