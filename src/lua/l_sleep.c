/* l_sleep.c — smtpd.sleep(seconds): the smallest wait kind, and the model
 * for every other one (async-api.md 2). It follows the suspend sequence of
 * a yielding binding: validate the argument -> check the context
 * (hook_wait_check raises where a hook may not wait) -> arm an ev_timer with the wait record
 * -> lua_yield. The timer calls the hook layer's wake; cancel (hook_timeout,
 * disconnect, shutdown) stops the timer and frees the record. Knows no
 * SMTP. */
#include "l_sleep.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>

#include "lua_hook.h"

struct sleep_wait {
    struct hook_wait wait; /* first: the hook layer hands this back */
    ev_timer timer;
    struct hook_state *hook;
};

static void sleep_free(struct sleep_wait *sw)
{
    ev_timer_stop(sw->hook->vm->loop, &sw->timer);
    free(sw);
}

static void sleep_cancel(struct hook_wait *w) { sleep_free((struct sleep_wait *)w); }

static void sleep_on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sleep_wait *sw = t->data;
    struct hook_state *h = sw->hook;
    lua_State *co = hook_wake_begin(h, &sw->wait);
    sleep_free(sw); /* the wait is over either way */
    if (co) {
        lua_pushboolean(co, 1);
        hook_wake_finish(h, 1);
    }
}

static int l_sleep(lua_State *L)
{
    lua_Number seconds = luaL_checknumber(L, 1);
    if (!(seconds >= 0) || isinf(seconds))
        return luaL_argerror(L, 1, "expected a number of seconds >= 0");
    struct hook_state *h = hook_wait_check(L, "smtpd.sleep");
    /* 0 still yields once: the hook resumes on the next loop iteration,
     * after whatever else is ready (async-api.md 2). */
    struct sleep_wait *sw = calloc(1, sizeof *sw);
    if (!sw) return luaL_error(L, "smtpd.sleep: out of memory");
    sw->wait.what = "smtpd.sleep";
    sw->wait.cancel = sleep_cancel;
    sw->hook = h;
    ev_timer_init(&sw->timer, sleep_on_timer, seconds, 0.);
    sw->timer.data = sw;
    ev_timer_start(h->vm->loop, &sw->timer);
    hook_wait_set(h, &sw->wait);
    return lua_yield(L, 0);
}

void l_sleep_register(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_pushcfunction(L, l_sleep);
    lua_setfield(L, -2, "sleep");
    lua_pop(L, 1);
}
