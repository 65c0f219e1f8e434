/* lua_hook.h — the coroutine run loop: starting a hook on a pooled
 * coroutine, resuming it when what it waits for arrives, and sorting every
 * return of lua_resume into finished / suspended / failed. Must not block
 * the loop, and must never resume a coroutine whose session is gone. */
#ifndef LUASMTPD_LUA_HOOK_H
#define LUASMTPD_LUA_HOOK_H

#include <stdbool.h>

#include <lua.h>

struct policy;

/* Called when the hook finishes (ok: results are co's stack 1..nres) or
 * fails (!ok: co's stack top is a traceback string, just below it the
 * error value; the owner logs it, scrubbing secrets). The
 * coroutine is recycled after this returns, so copy what you need. */
typedef void (*hook_cont_fn)(void *owner, bool ok, lua_State *co, int nres);

struct hook_state {
    struct policy *policy;
    const char *sid;
    lua_State *co;   /* the running or suspended coroutine, or NULL */
    int co_ref;
    const char *name;
    hook_cont_fn cont;
    void *owner;
};

/* Takes a coroutine and pushes the function `func_ref` on it; the caller
 * pushes the arguments on the returned state, then calls hook_run. */
lua_State *hook_begin(struct hook_state *h, int func_ref, const char *name);

/* Starts the hook. Returns true if it finished (cont was called), false if
 * it suspended. May resume Lua. */
bool hook_run(struct hook_state *h, int nargs, hook_cont_fn cont, void *owner);

/* Resumes the suspended hook with nargs values pushed on h->co. Same return
 * as hook_run. */
bool hook_resume(struct hook_state *h, int nargs);

/* The session is gone: drop the suspended coroutine without resuming it. */
void hook_abandon(struct hook_state *h);

/* Where to write "hook-name [session]" while a hook runs (shared memory
 * the master's watchdog reads), or NULL. */
extern char *hook_status_slot;
extern size_t hook_status_slot_size;

static inline bool hook_active(const struct hook_state *h) { return h->co != NULL; }

#endif
