/* l_job.h — the wait kind of the thread pool (async-api.md 6): a hook
 * yields until a C job has run on a pool thread. The bindings that use it
 * (smtpd.crypt, smtpd.sqlite) embed a struct l_job in their job record and
 * give it three functions: what runs on the thread (C only: no Lua there),
 * how the result is pushed onto the hook's coroutine, and how the record
 * is freed. Knows no SMTP. */
#ifndef LUASMTPD_L_JOB_H
#define LUASMTPD_L_JOB_H

#include <stdbool.h>

#include <lua.h>

#include "lua_hook.h"
#include "pool.h"

struct l_job {
    struct hook_wait wait; /* first: the hook layer hands this back */
    struct pool_job pool;
    struct hook_state *hook; /* NULL once the waiter went away: the result is dropped */
    char sid[48];            /* for the log line of a dropped result */
    /* On a pool thread: the work, from the record's C payload to its C result. */
    void (*run)(struct l_job *j);
    /* On the loop: push the result onto co (value, or nil and err); returns how many. */
    int (*push)(struct l_job *j, lua_State *co);
    /* Frees the record and its payload (wiping secrets). */
    void (*free)(struct l_job *j);
};

/* Fills j's machinery; `what` names the wait in logs ("smtpd.crypt.verify"). */
void l_job_init(struct l_job *j, const char *what, void (*run)(struct l_job *),
                int (*push)(struct l_job *, lua_State *), void (*free_fn)(struct l_job *));

/* Submits j for the hook h (from hook_wait_check, called before j was
 * allocated) and yields until its result is pushed. When the pool is full
 * (thread_pool_queue) frees j and returns nil, "busy" without yielding; when
 * no thread can be started, nil and the reason. Yields. */
int l_job_yield(lua_State *L, struct hook_state *h, struct l_job *j);

#endif
