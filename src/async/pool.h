/* pool.h — the thread pool of a process (async-api.md 6): a fixed set of
 * threads that run C jobs off the event loop, a bounded queue, and one
 * ev_async that brings finished jobs back to the loop. A job is a C
 * function with a C payload: no Lua ever runs on a pool thread. */
#ifndef LUASMTPD_POOL_H
#define LUASMTPD_POOL_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

/* The most threads a pool may have (thread_pool_size's upper bound). */
#define POOL_MAX_THREADS 256
/* thread_pool_queue's default: jobs that may wait for a thread. */
#define POOL_DEFAULT_QUEUE 1024

/* Embed it in the job's record; the pool only links it. */
struct pool_job {
    struct pool_job *next; /* the pool's queues */
    /* On a pool thread: the work. Must not touch the loop or any Lua
     * state; writes its result into the record. */
    void (*run)(struct pool_job *j);
    /* On the loop thread once run has returned (deliver = true), or at
     * pool_shutdown for a job that never ran or was never delivered
     * (deliver = false: free it, resume nothing). Frees the record. May
     * resume Lua when deliver is true. */
    void (*done)(struct pool_job *j, bool deliver);
};

/* What a submit asks of the pool (from the generation's options). */
struct pool_config {
    int threads; /* thread_pool_size; 0 = max(1, CPUs / pool_process_count) */
    int queue;   /* thread_pool_queue: jobs that may wait for a thread */
};

enum pool_status { POOL_OK, POOL_BUSY, POOL_ERROR };

/* How many processes share the CPUs (--workers; 1 for a single process):
 * the default pool size divides the CPUs among them. Set once by main
 * before the first job. */
extern int pool_process_count;

/* The number of threads `threads` (an option value, 0 = auto) means. */
int pool_resolve_threads(int threads);

/* Queues j to run on a pool thread; its done runs later on loop. Creates
 * the pool on the first call (one per process, bound to that loop); a
 * later config that asks for more threads adds them (a pool never
 * shrinks before the process exits). POOL_BUSY: the pool already holds
 * its threads + cfg->queue jobs; POOL_ERROR: no thread could be started
 * (err says why). Either way j was not taken. */
enum pool_status pool_submit(struct ev_loop *loop, const struct pool_config *cfg,
                             struct pool_job *j, char *err, size_t errlen);

/* Jobs submitted and not yet delivered back to the loop (for logs). */
size_t pool_pending(void);

/* At process exit: waits for the running jobs to finish (join), then
 * drops what is queued or undelivered through done(j, false). No-op when
 * no pool was created. */
void pool_shutdown(void);

#endif
