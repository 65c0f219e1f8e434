/* l_timer.c — smtpd.now(), smtpd.update_time() and smtpd.timer.at/every
 * (async-api.md 2 and 3). A timer is its handle's userdata: an ev_timer and
 * a hook state of its own, so each run of the callback is a hook run on a
 * pooled coroutine, outside any session, that may wait like a command hook
 * (hook_timeout bounds every run) and holds its generation while it runs.
 * The generation's timers are one struct vm_resource: made while the
 * script's top level runs (on the builder thread, no loop yet) they start
 * when the generation is attached; its retirement (reload swap, shutdown)
 * runs each pending timer once with premature = true and never again; its
 * close stops everything. Creating or cancelling a timer never yields.
 * Knows no SMTP; must not block the loop. */
#include "l_timer.h"

#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_bind.h"
#include "lua_hook.h"
#include "lua_vm.h"

struct timer_set;

/* A handle (the userdata smtpd.timer.at returns): the timer while it
 * lives, NULL once it ended. Its environment table holds fn and the extra
 * arguments. */
struct timer_box {
    struct timer *t;
    char name[200]; /* "timer t3 (handler.lua:12)": for tostring, and the hook's name in logs */
};

/* One timer, malloc'd, freed when it ends. The registry anchors its handle
 * (ref) from creation until then, so the timer may point at the box. (Kept
 * out of the Lua heap so that what points at a suspended run, e.g. a libev
 * watcher, reaches its generation through ordinary memory: a leak checker
 * at exit sees it, as it sees a suspended session.) A timer is pending
 * while it is armed (its ev_timer runs, or starts at attach) or due (its
 * generation retired and its premature run is still to come). */
struct timer {
    struct hook_state hook; /* its runs */
    ev_timer ev;
    struct timer_set *set; /* NULL once the timer ended */
    struct timer *next, *prev;
    int ref;
    int nargs;       /* extra arguments after fn */
    double delay;    /* seconds until the first run */
    double interval; /* > 0: smtpd.timer.every */
    bool armed;
    bool due;
    bool running;     /* a run is in progress (it may be suspended) */
    char id[24];      /* "t3": the hook's sid */
    const char *name; /* the box's */
    struct timer_box *box;
};

/* The generation's timers, in creation order (premature runs keep it). */
struct timer_set {
    struct vm_resource res; /* first: the vm hands this back */
    struct vm *vm;
    struct timer *head, *tail;
    long n_pending; /* what max_timers limits */
};

/* The kind of the timers' vm_resource: the address matters, not the value. */
static const char timer_kind;

/* Timer numbers for the logs, unique in the process. The builder thread
 * makes the timers of a loading script, so the counter is atomic. */
static unsigned long timer_next_id;

/* Runs in progress in the process, and who is told when none is left.
 * Loop thread only (runs never start on the builder thread). */
static unsigned timer_runs;
static void (*timer_idle_fn)(void *ud);
static void *timer_idle_ud;

unsigned l_timer_runs(void) { return timer_runs; }

void l_timer_on_idle(void (*fn)(void *ud), void *ud)
{
    timer_idle_fn = fn;
    timer_idle_ud = ud;
}

static void timer_start_run(struct timer *t, bool premature);

static void timer_link(struct timer_set *set, struct timer *t)
{
    t->set = set;
    t->next = NULL;
    t->prev = set->tail;
    if (set->tail) set->tail->next = t;
    else set->head = t;
    set->tail = t;
}

static void timer_unlink(struct timer *t)
{
    struct timer_set *set = t->set;
    if (t->prev) t->prev->next = t->next;
    else set->head = t->next;
    if (t->next) t->next->prev = t->prev;
    else set->tail = t->prev;
    t->next = t->prev = NULL;
    t->set = NULL;
}

/* The timer is over: out of its set and freed, its handle left to the
 * collector. Touch t no more after this. */
static void timer_end(struct timer *t)
{
    lua_State *L = t->set->vm->L;
    int ref = t->ref;
    timer_unlink(t);
    t->box->t = NULL;
    free(t);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

static void timer_arm(struct timer *t, struct ev_loop *loop)
{
    ev_timer_set(&t->ev, t->delay, t->interval);
    ev_timer_start(loop, &t->ev);
}

/* A run finished, failed or was cut by its deadline (never abandoned: a run
 * holds its generation, so the state cannot close under it). */
static void timer_run_ended(struct timer *t)
{
    struct vm *vm = t->hook.vm;
    t->running = false;
    if (t->due) {
        /* The generation retired while this run waited (an `every`): its
         * premature run comes now. */
        t->due = false;
        t->set->n_pending--;
        timer_start_run(t, true);
    } else if (!t->armed) {
        timer_end(t);
    }
    vm_release(vm); /* it may close the state, and t with it */
    if (--timer_runs == 0 && timer_idle_fn) timer_idle_fn(timer_idle_ud);
}

/* The hook layer's continuation: a result is ignored; an error (or a run
 * cut by hook_timeout) is logged with the traceback. */
static void timer_cont(void *owner, bool ok, lua_State *co, int nres)
{
    struct timer *t = owner;
    (void)nres;
    if (ok) return;
    char esc[4096];
    size_t n = 0;
    const char *tb = lua_tolstring(co, -1, &n);
    log_msg(LOG_ERROR, NULL, "%s failed: %s", t->name,
            tb ? log_escape(tb, n, esc, sizeof esc) : "(error object is not a string)");
}

/* A wake-up resumed the run (or its deadline cut it): if it is over, the
 * timer goes on or ends. The hook layer touches the hook state no more
 * after this returns. */
static void timer_after_wake(void *owner)
{
    struct timer *t = owner;
    if (t->running && !hook_active(&t->hook)) timer_run_ended(t);
}

static const struct hook_owner_ops timer_ops = {.after_wake = timer_after_wake};

/* Runs fn(premature, ...) on a coroutine of its own. */
static void timer_start_run(struct timer *t, bool premature)
{
    struct vm *vm = t->hook.vm;
    /* hook_begin pushes the registry's value, here the handle: replace it
     * by fn and push the arguments from the handle's environment. */
    lua_State *co = hook_begin(&t->hook, t->ref, t->name);
    if (!lua_checkstack(co, t->nargs + 3)) {
        log_msg(LOG_ERROR, NULL, "%s: no stack for %d arguments; run skipped", t->name, t->nargs);
        hook_abandon(&t->hook);
        if (!t->armed) timer_end(t);
        return;
    }
    lua_getfenv(co, 1);
    lua_rawgeti(co, 2, 1);
    lua_replace(co, 1); /* fn, env */
    lua_pushboolean(co, premature);
    for (int i = 1; i <= t->nargs; i++) lua_rawgeti(co, 2, i + 1);
    lua_remove(co, 2); /* fn, premature, ... */
    t->running = true;
    timer_runs++;
    vm_hold(vm);
    unsigned flags = HOOK_MAY_WAIT | (premature ? HOOK_RETIRING : 0u);
    if (hook_run(&t->hook, 1 + t->nargs, timer_cont, t, flags)) timer_run_ended(t);
}

static void timer_on_ev(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct timer *t = w->data;
    (void)loop;
    (void)revents;
    if (t->interval <= 0) {
        /* smtpd.timer.at: libev stopped it; it is no longer pending. */
        t->armed = false;
        t->set->n_pending--;
    } else if (t->running) {
        /* smtpd.timer.every: fn is not re-entered while a run still waits. */
        if (log_enabled(LOG_DEBUG))
            log_msg(LOG_DEBUG, NULL, "%s: previous run still in progress; this tick skipped",
                    t->name);
        return;
    }
    timer_start_run(t, false);
}

/* ------------------------------------------------ the vm resource */

static void timer_set_attach(struct vm_resource *r, struct vm *vm)
{
    struct timer_set *set = (struct timer_set *)r;
    for (struct timer *t = set->head; t; t = t->next)
        if (t->armed) timer_arm(t, vm->loop);
}

/* Every pending timer runs once with premature = true, in creation order,
 * and never again. A run may cancel or end other timers, so the list is
 * searched again after each. */
static void timer_set_retire(struct vm_resource *r, struct vm *vm)
{
    struct timer_set *set = (struct timer_set *)r;
    for (struct timer *t = set->head; t; t = t->next) {
        if (!t->armed) continue;
        if (vm->loop) ev_timer_stop(vm->loop, &t->ev);
        t->armed = false;
        t->due = true;
    }
    for (;;) {
        struct timer *t = set->head;
        while (t && !(t->due && !t->running)) t = t->next;
        if (!t) break;
        t->due = false;
        set->n_pending--;
        if (!vm->loop) { /* never went live: nothing of it may run */
            timer_end(t);
            continue;
        }
        log_msg(LOG_INFO, NULL, "%s: generation retired, running it once with premature = true",
                t->name);
        timer_start_run(t, true);
    }
}

static void timer_set_close(struct vm_resource *r, struct vm *vm)
{
    struct timer_set *set = (struct timer_set *)r;
    while (set->head) {
        struct timer *t = set->head;
        if (vm->loop) ev_timer_stop(vm->loop, &t->ev);
        if (t->running) hook_abandon(&t->hook); /* not expected: a run holds the state */
        timer_unlink(t);
        t->box->t = NULL;
        free(t);
    }
    free(set);
}

static struct timer_set *timer_set_of(lua_State *L, struct vm *vm)
{
    struct timer_set *set = (struct timer_set *)vm_resource_find(vm, &timer_kind);
    if (set) return set;
    set = calloc(1, sizeof *set);
    if (!set) luaL_error(L, "smtpd.timer: out of memory");
    set->res.kind = &timer_kind;
    set->res.attach = timer_set_attach;
    set->res.retire = timer_set_retire;
    set->res.close = timer_set_close;
    set->vm = vm;
    vm_resource_add(vm, &set->res);
    return set;
}

/* ------------------------------------------------ the Lua functions */

/* smtpd.timer.at(delay, fn, ...) / smtpd.timer.every(interval, fn, ...):
 * a handle, or nil, err. */
static int timer_new(lua_State *L, bool every)
{
    lua_Number delay = luaL_checknumber(L, 1);
    if (every ? !(delay > 0) || isinf(delay) : !(delay >= 0) || isinf(delay))
        return luaL_argerror(L, 1, every ? "expected a number of seconds > 0"
                                         : "expected a number of seconds >= 0");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    struct vm *vm = vm_of(L);
    if (vm->retired) {
        /* It would never run: its generation runs no timer any more. */
        lua_pushnil(L);
        lua_pushliteral(L, "generation retired");
        return 2;
    }
    struct timer_set *set = timer_set_of(L, vm);
    if (vm->max_timers > 0 && set->n_pending >= vm->max_timers) {
        lua_pushnil(L);
        lua_pushliteral(L, "too many pending timers");
        return 2;
    }
    int nargs = lua_gettop(L) - 2;
    /* Where it was made, for its log lines. */
    char where[160] = "?";
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(where, sizeof where, "%s:%d", ar.short_src, ar.currentline);

    /* Everything that may raise (allocation) comes before the timer is
     * linked anywhere: a failure leaves only garbage, which the handle's
     * __gc frees. */
    struct timer_box *box = lua_newuserdata(L, sizeof *box);
    box->t = NULL;
    box->name[0] = '\0';
    luaL_getmetatable(L, TIMER_MT);
    lua_setmetatable(L, -2);
    struct timer *t = calloc(1, sizeof *t);
    if (!t) return luaL_error(L, "smtpd.timer: out of memory");
    box->t = t;
    t->box = box;
    t->ref = LUA_NOREF;
    lua_createtable(L, nargs + 1, 0);
    for (int i = 0; i <= nargs; i++) {
        lua_pushvalue(L, 2 + i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfenv(L, -2);
    unsigned long id = __atomic_add_fetch(&timer_next_id, 1, __ATOMIC_RELAXED);
    snprintf(t->id, sizeof t->id, "t%lu", id);
    snprintf(box->name, sizeof box->name, "timer %s (%s)", t->id, where);
    t->name = box->name;
    t->nargs = nargs;
    t->delay = delay;
    t->interval = every ? delay : 0.;
    hook_init(&t->hook, vm, t->id, &timer_ops);
    ev_init(&t->ev, timer_on_ev);
    t->ev.data = t;
    lua_pushvalue(L, -1);
    t->ref = luaL_ref(L, LUA_REGISTRYINDEX);

    timer_link(set, t);
    t->armed = true;
    set->n_pending++;
    if (vm->loop) timer_arm(t, vm->loop); /* else at attach */
    return 1;
}

static int l_timer_at(lua_State *L) { return timer_new(L, false); }
static int l_timer_every(lua_State *L) { return timer_new(L, true); }

/* handle:cancel() -> true if the timer was pending. A run in progress is
 * not stopped; an `every` timer runs no more after it. */
static int l_timer_cancel(lua_State *L)
{
    struct timer *t = ((struct timer_box *)luaL_checkudata(L, 1, TIMER_MT))->t;
    struct timer_set *set = t ? t->set : NULL;
    if (!set || !(t->armed || t->due)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (t->armed && set->vm->loop) ev_timer_stop(set->vm->loop, &t->ev);
    t->armed = t->due = false;
    set->n_pending--;
    if (!t->running) timer_end(t); /* the handle on our stack keeps t alive */
    lua_pushboolean(L, 1);
    return 1;
}

static int l_timer_tostring(lua_State *L)
{
    struct timer_box *box = luaL_checkudata(L, 1, TIMER_MT);
    lua_pushfstring(L, "smtpd.%s", box->name[0] ? box->name : "timer");
    return 1;
}

/* The handle is collected. Its timer ended (and was freed) unless making it
 * raised before the timer was linked. */
static int l_timer_gc(lua_State *L)
{
    struct timer_box *box = luaL_checkudata(L, 1, TIMER_MT);
    free(box->t);
    box->t = NULL;
    return 0;
}

/* smtpd.now(): the loop's cached time (the time now while the script's top
 * level runs: no loop yet). */
static int l_now(lua_State *L)
{
    struct vm *vm = vm_of(L);
    lua_pushnumber(L, vm->loop ? ev_now(vm->loop) : ev_time());
    return 1;
}

/* smtpd.update_time(): refreshes the loop's cached time. */
static int l_update_time(lua_State *L)
{
    struct vm *vm = vm_of(L);
    if (vm->loop) ev_now_update(vm->loop);
    return 0;
}

static const luaL_Reg timer_functions[] = {
    {"at", l_timer_at},
    {"every", l_timer_every},
    {NULL, NULL},
};

static const luaL_Reg timer_methods[] = {
    {"cancel", l_timer_cancel},
    {NULL, NULL},
};

/* The handles' metatable. */
static void timer_handle_class(lua_State *L)
{
    luaL_newmetatable(L, TIMER_MT);
    lua_newtable(L);
    luaL_register(L, NULL, timer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_timer_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, l_timer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, TIMER_MT);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

void l_timer_register(lua_State *L)
{
    timer_handle_class(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_pushcfunction(L, l_now);
    lua_setfield(L, -2, "now");
    lua_pushcfunction(L, l_update_time);
    lua_setfield(L, -2, "update_time");
    lua_newtable(L);
    luaL_register(L, NULL, timer_functions);
    lua_setfield(L, -2, "timer");
    lua_pop(L, 1);
}
