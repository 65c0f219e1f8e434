/* pool.c — the process's thread pool (async-api.md 6). Owns the threads,
 * the job queue (bounded by the submitter's config), the completion queue
 * and the one ev_async that drains it on the loop: libev merges wake-ups,
 * so one drain delivers every job finished since the last. The pending
 * count (submitted, not yet delivered) is touched only on the loop thread;
 * the two queues are under one mutex. Pool threads block every signal
 * (the loop's ev_signal must get them) and run only C. Must not know Lua. */
#include "pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

int pool_process_count = 1;

struct job_queue {
    struct pool_job *head, *tail;
};

static struct {
    bool created;
    struct ev_loop *loop;
    ev_async wake;
    pthread_mutex_t lock;
    pthread_cond_t work;
    struct job_queue queued;   /* waiting for a thread */
    struct job_queue finished; /* run, waiting for the loop */
    bool stopping;
    pthread_t threads[POOL_MAX_THREADS];
    int n_threads;
    size_t pending; /* loop thread only: submitted and not yet delivered */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER};

static void queue_push(struct job_queue *q, struct pool_job *j)
{
    j->next = NULL;
    if (q->tail) q->tail->next = j;
    else q->head = j;
    q->tail = j;
}

static struct pool_job *queue_pop(struct job_queue *q)
{
    struct pool_job *j = q->head;
    if (j) {
        q->head = j->next;
        if (!q->head) q->tail = NULL;
        j->next = NULL;
    }
    return j;
}

static struct pool_job *queue_take_all(struct job_queue *q)
{
    struct pool_job *j = q->head;
    q->head = q->tail = NULL;
    return j;
}

int pool_resolve_threads(int threads)
{
    if (threads > 0) return threads > POOL_MAX_THREADS ? POOL_MAX_THREADS : threads;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int procs = pool_process_count > 0 ? pool_process_count : 1;
    long n = cpus > 0 ? cpus / procs : 1;
    if (n < 1) n = 1;
    return n > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)n;
}

static void *pool_thread(void *arg)
{
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.queued.head && !pool.stopping) pthread_cond_wait(&pool.work, &pool.lock);
        /* Stopping: what is still queued is dropped by pool_shutdown; the
         * job this thread runs (below) always completes first. */
        if (pool.stopping) break;
        struct pool_job *j = queue_pop(&pool.queued);
        pthread_mutex_unlock(&pool.lock);
        j->run(j);
        pthread_mutex_lock(&pool.lock);
        queue_push(&pool.finished, j);
        /* Thread-safe; several sends before the loop looks are one wake. */
        ev_async_send(pool.loop, &pool.wake);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* On the loop: deliver every finished job, in the order they finished. */
static void pool_on_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    pthread_mutex_lock(&pool.lock);
    struct pool_job *j = queue_take_all(&pool.finished);
    pthread_mutex_unlock(&pool.lock);
    while (j) {
        struct pool_job *next = j->next;
        pool.pending--;
        j->done(j, true); /* may resume Lua, which may submit more */
        j = next;
    }
}

/* Starts threads until there are `want`. */
static bool pool_grow(int want, char *err, size_t errlen)
{
    /* Threads inherit the mask: block everything so that signals go to the
     * loop's thread, where ev_signal handles them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    while (pool.n_threads < want) {
        rc = pthread_create(&pool.threads[pool.n_threads], NULL, pool_thread, NULL);
        if (rc) break;
        pool.n_threads++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc && pool.n_threads == 0) {
        snprintf(err, errlen, "cannot start a pool thread: %s", strerror(rc));
        return false;
    }
    if (rc)
        log_msg(LOG_WARN, NULL, "thread pool: only %d of %d threads started: %s", pool.n_threads,
                want, strerror(rc));
    return true;
}

static bool pool_create(struct ev_loop *loop, int threads, int queue, char *err, size_t errlen)
{
    pool.loop = loop;
    ev_async_init(&pool.wake, pool_on_wake);
    ev_async_start(loop, &pool.wake);
    /* The wake-up alone must not keep the loop running at shutdown. */
    ev_unref(loop);
    pool.created = true;
    if (!pool_grow(threads, err, errlen)) return false;
    log_msg(LOG_INFO, NULL, "thread pool: %d thread%s, at most %d jobs waiting", pool.n_threads,
            pool.n_threads == 1 ? "" : "s", queue);
    return true;
}

enum pool_status pool_submit(struct ev_loop *loop, const struct pool_config *cfg,
                             struct pool_job *j, char *err, size_t errlen)
{
    int want = pool_resolve_threads(cfg->threads);
    if (!pool.created) {
        if (!pool_create(loop, want, cfg->queue, err, errlen)) return POOL_ERROR;
    } else if (want > pool.n_threads) {
        int had = pool.n_threads;
        if (!pool_grow(want, err, errlen)) return POOL_ERROR;
        if (pool.n_threads > had)
            log_msg(LOG_INFO, NULL, "thread pool: %d threads (was %d)", pool.n_threads, had);
    }
    if (pool.n_threads == 0) {
        snprintf(err, errlen, "the thread pool has no threads");
        return POOL_ERROR;
    }
    size_t queue = cfg->queue > 0 ? (size_t)cfg->queue : 0;
    if (pool.pending >= (size_t)pool.n_threads + queue) return POOL_BUSY;
    pool.pending++;
    pthread_mutex_lock(&pool.lock);
    queue_push(&pool.queued, j);
    pthread_cond_signal(&pool.work);
    pthread_mutex_unlock(&pool.lock);
    return POOL_OK;
}

size_t pool_pending(void) { return pool.pending; }

void pool_shutdown(void)
{
    if (!pool.created) return;
    pthread_mutex_lock(&pool.lock);
    pool.stopping = true;
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.n_threads; i++) pthread_join(pool.threads[i], NULL);
    pool.n_threads = 0;
    /* No thread is left: the queues are ours. */
    struct pool_job *lists[2] = {queue_take_all(&pool.queued), queue_take_all(&pool.finished)};
    for (int k = 0; k < 2; k++) {
        for (struct pool_job *j = lists[k], *next; j; j = next) {
            next = j->next;
            j->done(j, false);
        }
    }
    pool.pending = 0;
    ev_ref(pool.loop);
    ev_async_stop(pool.loop, &pool.wake);
    pool.created = false;
    pool.stopping = false;
}
