/* lua_hook.h — the hook layer: runs a hook on a pooled coroutine, owns the
 * one wait machinery every kind of wait uses, and sorts every return of
 * lua_resume into finished / suspended / failed (design.md "Waiting").
 *
 * A binding that must wait (server:challenge_auth, smtpd.sleep, ...):
 *   validate its arguments -> hook_wait_begin() (checks the context and
 *   records the wait) -> try at once -> arm its event -> lua_yield.
 * Its event side calls hook_wake_begin(), pushes the results onto the
 * returned coroutine and calls hook_wake_finish(). A stale wake (the wait
 * was cancelled, the hook timed out or moved on) gets NULL and does
 * nothing. hook_timeout, disconnect, reload retirement and shutdown all
 * cancel through the same record. Must not block the loop, and never
 * resumes a coroutine whose owner is gone. */
#ifndef LUASMTPD_LUA_HOOK_H
#define LUASMTPD_LUA_HOOK_H

#include <ev.h>
#include <stdbool.h>

#include <lua.h>

#include "lua_vm.h"

struct vm;
struct hook_state;

/* Called when the hook finishes (ok: results are co's stack 1..nres) or
 * fails (!ok: co's stack top is a log text, just below it the error value;
 * the owner logs it, scrubbing secrets, and replies as for any hook error).
 * The coroutine is recycled after this returns, so copy what you need. */
typedef void (*hook_cont_fn)(void *owner, bool ok, lua_State *co, int nres);

/* What a suspended hook waits for. Lives as long as the wait (the binding
 * owns it); the hook layer only points at it. */
struct hook_wait {
    const char *what; /* for logs: "the client's next line", "a timer" */
    /* Stops the event and releases the record; the hook will not be resumed
     * through it. NULL when there is nothing to stop. */
    void (*cancel)(struct hook_wait *w);
    unsigned serial; /* the hook's serial when the wait began */
};

/* Where a hook may wait. Commands and AUTH may; STARTTLS, PROXY,
 * handle_exception and the script's top level may not. */
#define HOOK_MAY_WAIT 1u
/* The run was started because its generation retired (a timer's premature
 * run): it may stay suspended no longer than vm->drain_timeout either. */
#define HOOK_RETIRING 2u

/* What the owner of a hook state (a session, a timer) is told. */
struct hook_owner_ops {
    /* A wake-up resumed the hook: the session pumps its input and flushes.
     * May be NULL. */
    void (*after_wake)(void *owner);
    /* Where every hook finishes, before its result is read: the owner syncs
     * what it mirrors from Lua (co: the finished coroutine; NULL after a
     * failure, when only the mirrors matter). Returning false fails a hook
     * that had finished, with the error pushed twice onto co. May be NULL. */
    bool (*sync)(void *owner, lua_State *co);
};

/* Something a hook opened that must not outlive its run (a cosocket, a
 * Redis connection): released when the hook finishes, fails or is
 * abandoned, unless its binding removed it first (setkeepalive, close).
 * Embed it; the hook layer only links it. */
struct hook_resource {
    struct hook_resource *next, **pprev;
    void (*release)(struct hook_resource *r);
};

struct hook_state {
    struct vm *vm;   /* the generation the hook belongs to: its Lua state,
                        loop and hook_timeout */
    const char *sid;
    const struct hook_owner_ops *ops;
    lua_State *co;   /* the running or suspended coroutine, or NULL */
    int co_ref;
    unsigned flags;          /* HOOK_MAY_WAIT, HOOK_RETIRING */
    const char *name;
    hook_cont_fn cont;
    void *owner;
    struct hook_wait *wait;  /* what the suspended hook waits for, or NULL */
    struct hook_resource *resources; /* the run's cleanup scope */
    unsigned serial;         /* moves whenever a wait ends: stale wakes see it */
    ev_timer deadline;       /* hook_timeout, armed at the first suspension */
};

/* Sets up a hook state that runs hooks in vm (on vm->loop, bounded by
 * vm->hook_timeout), logging as sid and telling the owner through ops
 * (may be NULL). */
void hook_init(struct hook_state *h, struct vm *vm, const char *sid,
               const struct hook_owner_ops *ops);

/* Takes a coroutine and pushes the function `func_ref` on it; the caller
 * pushes the arguments on the returned state, then calls hook_run. */
lua_State *hook_begin(struct hook_state *h, int func_ref, const char *name);

/* Starts the hook. Returns true if it finished (cont was called), false if
 * it is suspended on a wait. A yield with nothing to wait for fails the
 * hook here (cont gets the error). May resume Lua. */
bool hook_run(struct hook_state *h, int nargs, hook_cont_fn cont, void *owner, unsigned flags);

/* For a binding about to yield on coroutine L: checks that a hook of ours
 * runs on L and may wait here, and records w as its wait. Raises a readable
 * Lua error otherwise ("<binding> cannot wait in handle_exception", ...).
 * Returns the hook. */
struct hook_state *hook_wait_begin(lua_State *L, struct hook_wait *w, const char *binding);

/* The two halves of hook_wait_begin, for a binding that allocates its
 * record: check first (this may raise), then allocate, then set (cannot). */
struct hook_state *hook_wait_check(lua_State *L, const char *binding);
void hook_wait_set(struct hook_state *h, struct hook_wait *w);

/* The event of w happened: returns the coroutine to push the results on,
 * or NULL if w is no longer what the hook waits for (do nothing then). */
lua_State *hook_wake_begin(struct hook_state *h, struct hook_wait *w);
/* Resumes the hook with the nargs values pushed since hook_wake_begin,
 * then tells the owner (after_wake). May resume Lua. */
void hook_wake_finish(struct hook_state *h, int nargs);

/* The hook running on L (a coroutine of ours), or NULL: the owner of what
 * a non-yielding call creates (a socket belongs to its hook). */
struct hook_state *hook_running(lua_State *L);

/* Registers r in the cleanup scope of h's current run. */
void hook_resource_add(struct hook_state *h, struct hook_resource *r);
/* Takes r out of the scope it is in (no-op if none). */
void hook_resource_remove(struct hook_resource *r);

/* The owner is going away (disconnect, shutdown, retirement): cancel the
 * wait and drop the coroutine without resuming it. */
void hook_abandon(struct hook_state *h);

/* Where to write "hook-name [session]" while a hook runs (shared memory
 * the master's watchdog reads), or NULL. */
extern char *hook_status_slot;
extern size_t hook_status_slot_size;

static inline bool hook_active(const struct hook_state *h) { return h->co != NULL; }

#endif
