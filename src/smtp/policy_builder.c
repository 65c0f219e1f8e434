/* policy_builder.c — one worker thread per build: it creates and loads a
 * fresh lua_State (touched by this thread only until the loop takes it),
 * then wakes the loop with ev_async; the loop joins the thread, which
 * orders everything the thread wrote before the callback reads it. Must not
 * touch sessions or the current generation, and logs nothing from the
 * thread (the callback does). */
#include "policy_builder.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct build {
    bool running;
    pthread_t thread;
    ev_async done_signal;
    bool async_ready;
    struct ev_loop *loop;
    /* In: */
    const char *path;
    char *src;
    size_t len;
    const struct policy_inputs *in;
    policy_built_fn done;
    void *ud;
    /* Out (written by the thread, read after pthread_join): */
    struct policy *result;
    char err[2048];
} b;

static void *build_thread(void *arg)
{
    (void)arg;
    if (b.path && !b.src) b.src = policy_read_script(b.path, &b.len, b.err, sizeof b.err);
    if (b.src || !b.path)
        b.result = policy_load_source(b.path, b.src, b.len, b.in, b.err, sizeof b.err);
    ev_async_send(b.loop, &b.done_signal);
    return NULL;
}

static void on_build_done(struct ev_loop *loop, ev_async *w, int revents)
{
    if (!b.running) return;
    pthread_join(b.thread, NULL);
    b.running = false;
    ev_now_update(loop); /* the loop may have slept through a long build */
    char *src = b.src;
    struct policy *p = b.result;
    b.src = NULL;
    b.result = NULL;
    b.done(p, src, b.len, p ? NULL : b.err, b.ud);
    free(src);
}

bool policy_builder_busy(void) { return b.running; }

bool policy_builder_start(struct ev_loop *loop, const char *path, char *src, size_t len,
                          const struct policy_inputs *in, policy_built_fn done, void *ud,
                          char *err, size_t errlen)
{
    if (b.running) {
        free(src);
        snprintf(err, errlen, "a reload is already being built");
        return false;
    }
    if (!b.async_ready) {
        ev_async_init(&b.done_signal, on_build_done);
        ev_async_start(loop, &b.done_signal);
        ev_unref(loop); /* an idle builder must not keep the loop alive */
        b.async_ready = true;
    }
    b.loop = loop;
    b.path = path;
    b.src = src;
    b.len = len;
    b.in = in;
    b.done = done;
    b.ud = ud;
    b.result = NULL;
    b.err[0] = '\0';
    b.running = true;
    /* Lua's parser and a deep top level want more than a small default stack. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 8u << 20);
    int rc = pthread_create(&b.thread, &attr, build_thread, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        b.running = false;
        free(b.src);
        b.src = NULL;
        snprintf(err, errlen, "cannot start the reload thread: %s", strerror(rc));
        return false;
    }
    return true;
}
