/* lua_hook.c — runs hooks on pooled coroutines (OpenResty's run-thread
 * pattern): every lua_resume result is sorted into finished, suspended or
 * failed; a finished coroutine goes back to the pool, a failed or abandoned
 * one is dropped. Owns waiting: the wait record of a suspended hook, the
 * serial that makes stale wakes harmless, the one hook_timeout deadline,
 * and the failure of a hook that yields with nothing to wait for. Must not
 * block the loop, and never resumes a coroutine whose owner is gone
 * (hook_abandon clears it first). Knows no SMTP. */
#include "lua_hook.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "lua_vm.h"

char *hook_status_slot;
size_t hook_status_slot_size;

/* The hook whose coroutine is being resumed right now (one at a time per
 * process): how a binding finds the hook it runs in. */
static struct hook_state *hook_current;

/* Tells the watchdog (worker processes) which hook runs, so a worker killed
 * for a stuck loop can be blamed on the right hook. */
static void hook_status_set(const struct hook_state *h)
{
    if (hook_status_slot)
        snprintf(hook_status_slot, hook_status_slot_size, "%s [%s]", h->name ? h->name : "?",
                 h->sid ? h->sid : "-");
}

static void hook_status_clear(void)
{
    if (hook_status_slot) hook_status_slot[0] = '\0';
}

static void hook_on_deadline(struct ev_loop *loop, ev_timer *w, int revents);

/* Seconds the run may stay suspended (0 = no limit): hook_timeout, or
 * --drain-timeout when that is tighter for a run its generation's
 * retirement started. *which names the one that applies, for the log. */
static double hook_deadline_seconds(const struct hook_state *h, const char **which)
{
    double timeout = h->vm->hook_timeout, drain = h->vm->drain_timeout;
    if (which) *which = "hook_timeout";
    if ((h->flags & HOOK_RETIRING) && drain > 0 && (timeout <= 0 || drain < timeout)) {
        if (which) *which = "--drain-timeout";
        return drain;
    }
    return timeout;
}

static const struct hook_owner_ops no_ops;

void hook_init(struct hook_state *h, struct vm *vm, const char *sid,
               const struct hook_owner_ops *ops)
{
    memset(h, 0, sizeof *h);
    h->vm = vm;
    h->sid = sid;
    h->ops = ops ? ops : &no_ops;
    ev_init(&h->deadline, hook_on_deadline);
    h->deadline.data = h;
}

void hook_resource_add(struct hook_state *h, struct hook_resource *r)
{
    r->next = h->resources;
    if (r->next) r->next->pprev = &r->next;
    r->pprev = &h->resources;
    h->resources = r;
}

void hook_resource_remove(struct hook_resource *r)
{
    if (!r->pprev) return;
    *r->pprev = r->next;
    if (r->next) r->next->pprev = r->pprev;
    r->next = NULL;
    r->pprev = NULL;
}

/* The run is over: close what it left open, newest first. */
static void hook_release_resources(struct hook_state *h)
{
    while (h->resources) {
        struct hook_resource *r = h->resources;
        hook_resource_remove(r);
        r->release(r);
    }
}

/* The run ended (finished, failed or abandoned): no deadline, no scope. */
static void hook_end_run(struct hook_state *h)
{
    if (h->vm->loop) ev_timer_stop(h->vm->loop, &h->deadline);
    hook_release_resources(h);
}

lua_State *hook_begin(struct hook_state *h, int func_ref, const char *name)
{
    lua_State *co = vm_coroutine_get(h->vm, &h->co_ref);
    h->co = co;
    h->name = name;
    h->wait = NULL;
    lua_rawgeti(co, LUA_REGISTRYINDEX, func_ref);
    return co;
}

/* Ends the wait, if any: the event will not resume the hook. */
static void hook_end_wait(struct hook_state *h)
{
    struct hook_wait *w = h->wait;
    h->wait = NULL;
    h->serial++;
    if (w && w->cancel) w->cancel(w);
}

/* The hook failed; co's top is the log text, below it the error value. */
static void hook_fail(struct hook_state *h)
{
    lua_State *co = h->co;
    hook_cont_fn cont = h->cont;
    void *owner = h->owner;
    int ref = h->co_ref;
    /* Clear first: the continuation may start the next hook. */
    h->co = NULL;
    h->cont = NULL;
    hook_end_run(h);
    if (h->ops->sync) h->ops->sync(owner, NULL);
    cont(owner, false, co, 0);
    vm_coroutine_drop(h->vm, ref);
}

/* Pushes msg twice (error value and log text) and fails the hook. */
static void hook_fail_with(struct hook_state *h, const char *msg)
{
    lua_pushstring(h->co, msg);
    lua_pushvalue(h->co, -1);
    hook_fail(h);
}

/* Sorts one lua_resume outcome. Returns true when the hook is over. */
static bool hook_settle(struct hook_state *h, int status)
{
    lua_State *co = h->co;
    if (status == LUA_YIELD) {
        if (h->wait) {
            /* One deadline for the whole run, from its first suspension. */
            double timeout = hook_deadline_seconds(h, NULL);
            if (timeout > 0 && !ev_is_active(&h->deadline)) {
                ev_timer_set(&h->deadline, timeout, 0.);
                ev_timer_start(h->vm->loop, &h->deadline);
            }
            return false;
        }
        /* The script called coroutine.yield itself: nothing would ever
         * resume it. */
        char msg[256];
        snprintf(msg, sizeof msg, "%s yielded without waiting for anything", h->name);
        lua_settop(co, 0);
        hook_fail_with(h, msg);
        return true;
    }
    /* The one place every hook finishes: the owner syncs its mirrors before
     * anything reads the result; a failing sync fails the hook. */
    if (status == 0 && h->ops->sync && !h->ops->sync(h->owner, co)) {
        hook_fail(h);
        return true;
    }
    if (status == 0) {
        hook_cont_fn cont = h->cont;
        void *owner = h->owner;
        int ref = h->co_ref;
        h->co = NULL;
        h->cont = NULL;
        hook_end_run(h);
        cont(owner, true, co, lua_gettop(co));
        vm_coroutine_put(h->vm, co, ref);
        return true;
    }
    /* A hook that hit lua_memory_limit leaves its garbage behind, and LuaJIT
     * has no emergency collection under a refusing allocator: collect now,
     * outside the hook, or every later hook fails too. */
    if (status == LUA_ERRMEM) lua_gc(h->vm->L, LUA_GCCOLLECT, 0);
    /* Keep the error value and add a traceback above it for the log. */
    const char *msg = lua_tostring(co, -1);
    luaL_traceback(co, co, msg ? msg : "(error object is not a string)", 0);
    hook_fail(h);
    return true;
}

static bool hook_resume(struct hook_state *h, int nargs)
{
    vm_make_room(h->vm);
    vm_enter_hook(h->vm);
    hook_status_set(h);
    struct hook_state *outer = hook_current;
    hook_current = h;
    int status = lua_resume(h->co, nargs);
    hook_current = outer;
    hook_status_clear();
    vm_leave_hook(h->vm);
    return hook_settle(h, status);
}

bool hook_run(struct hook_state *h, int nargs, hook_cont_fn cont, void *owner, unsigned flags)
{
    h->cont = cont;
    h->owner = owner;
    h->flags = flags;
    return hook_resume(h, nargs);
}

struct hook_state *hook_running(lua_State *L)
{
    return hook_current && hook_current->co == L ? hook_current : NULL;
}

struct hook_state *hook_wait_check(lua_State *L, const char *binding)
{
    struct hook_state *h = hook_current;
    if (!h && vm_of(L)->loading)
        luaL_error(L, "%s: cannot wait while the script loads", binding);
    if (!h)
        luaL_error(L, "%s: cannot wait here (no hook is running: metamethods the server calls "
                      "cannot wait)",
                   binding);
    if (h->co != L)
        luaL_error(L, "%s: cannot wait inside a coroutine the script created; call it from "
                      "the hook itself",
                   binding);
    if (!(h->flags & HOOK_MAY_WAIT)) luaL_error(L, "%s: cannot wait here (%s)", binding, h->name);
    if (h->wait) luaL_error(L, "%s: the hook is already waiting", binding);
    return h;
}

void hook_wait_set(struct hook_state *h, struct hook_wait *w)
{
    h->wait = w;
    w->serial = h->serial;
}

struct hook_state *hook_wait_begin(lua_State *L, struct hook_wait *w, const char *binding)
{
    struct hook_state *h = hook_wait_check(L, binding);
    hook_wait_set(h, w);
    return h;
}

lua_State *hook_wake_begin(struct hook_state *h, struct hook_wait *w)
{
    if (!h->co || h->wait != w || w->serial != h->serial) return NULL;
    h->wait = NULL;
    h->serial++;
    return h->co;
}

void hook_wake_finish(struct hook_state *h, int nargs)
{
    void *owner = h->owner;
    hook_resume(h, nargs);
    if (h->ops->after_wake) h->ops->after_wake(owner);
}

static void hook_on_deadline(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct hook_state *h = t->data;
    if (!h->co) return;
    char msg[256];
    const char *which;
    double seconds = hook_deadline_seconds(h, &which);
    snprintf(msg, sizeof msg, "%s still waiting for %s after %s (%.0f s)", h->name,
             h->wait && h->wait->what ? h->wait->what : "something", which, seconds);
    hook_end_wait(h);
    void *owner = h->owner;
    hook_fail_with(h, msg);
    if (h->ops->after_wake) h->ops->after_wake(owner);
}

void hook_abandon(struct hook_state *h)
{
    if (!h->co) return;
    hook_end_wait(h);
    hook_end_run(h);
    /* A suspended coroutine can't be reused safely; let the GC have it. */
    vm_coroutine_drop(h->vm, h->co_ref);
    h->co = NULL;
    h->cont = NULL;
}
