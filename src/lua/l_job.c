/* l_job.c — a hook waiting on a thread-pool job, on the hook layer's one
 * wait machinery (the shape of l_sleep.c: validate -> hook_wait_check ->
 * arm -> yield; the completion wakes through hook_wake_begin/finish). A
 * job cannot be stopped once a thread runs it, so cancel (hook_timeout,
 * disconnect, shutdown, retirement) only detaches: it marks the record
 * abandoned and the completion frees it without resuming anything. Knows
 * no SMTP. */
#include "l_job.h"

#include <lauxlib.h>
#include <stddef.h>
#include <stdio.h>

#include "log.h"
#include "lua_vm.h"

#define JOB_OF(pj) ((struct l_job *)((char *)(pj) - offsetof(struct l_job, pool)))

static void job_run(struct pool_job *pj)
{
    struct l_job *j = JOB_OF(pj);
    j->run(j);
}

static void job_done(struct pool_job *pj, bool deliver)
{
    struct l_job *j = JOB_OF(pj);
    struct hook_state *h = j->hook;
    if (!deliver || !h) {
        if (deliver)
            log_msg(LOG_INFO, j->sid[0] ? j->sid : NULL,
                    "%s finished after its hook went away: result dropped", j->wait.what);
        j->free(j);
        return;
    }
    lua_State *co = hook_wake_begin(h, &j->wait);
    if (!co) {
        j->free(j);
        return;
    }
    int n = j->push(j, co);
    j->free(j);
    hook_wake_finish(h, n);
}

/* The hook stopped waiting (hook_timeout, disconnect, shutdown): the thread
 * keeps the record until the job has run; done frees it. */
static void job_cancel(struct hook_wait *w)
{
    struct l_job *j = (struct l_job *)w;
    j->hook = NULL;
}

void l_job_init(struct l_job *j, const char *what, void (*run)(struct l_job *),
                int (*push)(struct l_job *, lua_State *), void (*free_fn)(struct l_job *))
{
    j->wait.what = what;
    j->wait.cancel = job_cancel;
    j->pool.run = job_run;
    j->pool.done = job_done;
    j->run = run;
    j->push = push;
    j->free = free_fn;
}

int l_job_yield(lua_State *L, struct hook_state *h, struct l_job *j)
{
    char err[160];
    j->hook = h;
    snprintf(j->sid, sizeof j->sid, "%s", h->sid ? h->sid : "");
    switch (pool_submit(h->vm->loop, &h->vm->thread_pool, &j->pool, err, sizeof err)) {
    case POOL_OK:
        hook_wait_set(h, &j->wait);
        return lua_yield(L, 0);
    case POOL_BUSY:
        j->free(j);
        lua_pushnil(L);
        lua_pushliteral(L, "busy");
        return 2;
    case POOL_ERROR:
    default:
        j->free(j);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
}
