/* l_timer.h — smtpd.now, smtpd.update_time and smtpd.timer.at/every
 * (async-api.md 2 and 3): time from the loop, and callbacks that run on a
 * coroutine of their own, outside any session, through the hook layer. */
#ifndef LUASMTPD_L_TIMER_H
#define LUASMTPD_L_TIMER_H

#include <lua.h>

/* Adds now, update_time and the timer table to the state's smtpd module
 * (the server side only: timers need a generation, struct vm). The
 * generation's timers are one struct vm_resource: made while the script
 * loads they start when it is attached to the loop; its retirement runs
 * each pending one once with premature = true; its close frees them. */
void l_timer_register(lua_State *L);

/* Timer runs in progress in this process, over every generation (a
 * graceful stop waits for them as for sessions). */
unsigned l_timer_runs(void);
/* fn(ud) is called whenever the last run in progress ends (a stopping
 * server exits then, if no session is left). One watcher per process. */
void l_timer_on_idle(void (*fn)(void *ud), void *ud);

#endif
