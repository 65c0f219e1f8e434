/* lua_hook.c — runs hooks on pooled coroutines (OpenResty's run-thread
 * pattern): every lua_resume result is sorted into finished, suspended or
 * failed; a finished coroutine goes back to the pool, a failed or abandoned
 * one is dropped. Must not block the loop, and never resumes a coroutine
 * whose owner is gone (hook_abandon clears it first). */
#include "lua_hook.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "policy.h"

char *hook_status_slot;
size_t hook_status_slot_size;

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

lua_State *hook_begin(struct hook_state *h, int func_ref, const char *name)
{
    lua_State *co = policy_coroutine_get(h->policy, &h->co_ref);
    h->co = co;
    h->name = name;
    lua_rawgeti(co, LUA_REGISTRYINDEX, func_ref);
    return co;
}

/* Sorts one lua_resume outcome. */
static bool hook_settle(struct hook_state *h, int status)
{
    lua_State *co = h->co;
    if (status == LUA_YIELD) return false;

    hook_cont_fn cont = h->cont;
    void *owner = h->owner;
    int ref = h->co_ref;
    /* Clear first: the continuation may start the next hook. */
    h->co = NULL;
    h->cont = NULL;
    if (status == 0) {
        cont(owner, true, co, lua_gettop(co));
        policy_coroutine_put(h->policy, co, ref);
        return true;
    }
    /* A hook that hit lua_memory_limit leaves its garbage behind, and LuaJIT
     * has no emergency collection under a refusing allocator: collect now,
     * outside the hook, or every later hook fails too. */
    if (status == LUA_ERRMEM) lua_gc(h->policy->L, LUA_GCCOLLECT, 0);
    /* Keep the error value and add a traceback above it for the log. */
    const char *msg = lua_tostring(co, -1);
    luaL_traceback(co, co, msg ? msg : "(error object is not a string)", 0);
    cont(owner, false, co, 0);
    policy_coroutine_drop(h->policy, ref);
    return true;
}

/* Near the memory limit, collect before a hook runs rather than let it
 * fail for garbage that a collection would free. */
static void hook_make_room(struct policy *p)
{
    if (p->heap_limit && p->heap_bytes > p->heap_limit / 4 * 3) lua_gc(p->L, LUA_GCCOLLECT, 0);
}

bool hook_resume(struct hook_state *h, int nargs)
{
    hook_make_room(h->policy);
    policy_enter_hook(h->policy);
    hook_status_set(h);
    int status = lua_resume(h->co, nargs);
    hook_status_clear();
    policy_leave_hook(h->policy);
    return hook_settle(h, status);
}

bool hook_run(struct hook_state *h, int nargs, hook_cont_fn cont, void *owner)
{
    h->cont = cont;
    h->owner = owner;
    return hook_resume(h, nargs);
}

void hook_abandon(struct hook_state *h)
{
    if (!h->co) return;
    /* A suspended coroutine can't be reused safely; let the GC have it. */
    policy_coroutine_drop(h->policy, h->co_ref);
    h->co = NULL;
    h->cont = NULL;
}
