/* master.c — supervision of worker processes (--workers N). Workers are
 * started with fork + exec of this same binary, so each begins with a clean
 * event loop and its own Lua state, and loads the script itself. The master
 * never accepts connections: it only holds the ports (bound, not listening,
 * with SO_REUSEPORT, so a port 0 is resolved once and survives worker
 * restarts). Must not load Lua or parse SMTP. */
#include "master.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "server.h"

/* A worker that dies this soon after starting is restarted only after a
 * pause, so a script that crashes at start-up doesn't make a fork storm. */
#define CRASH_LOOP_SECONDS 5.0
#define RESTART_PAUSE_SECONDS 1.0
#define WATCHDOG_CHECK_SECONDS 1.0
#define HEARTBEAT_SECONDS 0.5

struct worker {
    int slot;
    pid_t pid;
    double started;
    ev_child child;
    ev_timer restart;
    bool killed_by_watchdog;
};

static const struct master_config *mc;
static struct server reserved; /* the master's bound-only sockets */
static struct worker workers[MASTER_MAX_WORKERS];
static struct worker_status *status; /* shared with the workers */
static int status_fd = -1;
static int ready_pipe[2] = {-1, -1};
static bool slot_ready[MASTER_MAX_WORKERS]; /* its worker said "ready" and still runs */
static bool ready_sent;
static char ready_partial[128]; /* a ready line cut by a read */
static size_t ready_partial_len;
static bool stopping;
static int running;

static void worker_spawn(struct ev_loop *loop, struct worker *w);

static void on_restart_due(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = t->data;
    if (!stopping) worker_spawn(loop, w);
}

static void on_child(struct ev_loop *loop, ev_child *c, int revents)
{
    struct worker *w = c->data;
    ev_child_stop(loop, c);
    running--;
    int st = c->rstatus;
    char how[64];
    if (WIFSIGNALED(st)) snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(st));
    else snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(st));
    w->pid = 0;
    status[w->slot].pid = 0;
    slot_ready[w->slot] = false;
    if (stopping) {
        log_msg(LOG_INFO, NULL, "worker %d %s", w->slot, how);
        if (running == 0) ev_break(loop, EVBREAK_ALL);
        return;
    }
    double lived = clock_monotonic() - w->started;
    /* A worker the watchdog killed had started fine: replace it at once. */
    double pause = lived < CRASH_LOOP_SECONDS && !w->killed_by_watchdog ? RESTART_PAUSE_SECONDS : 0.;
    w->killed_by_watchdog = false;
    log_msg(LOG_WARN, NULL, "worker %d (pid %d) %s after %.1f s; restarting%s", w->slot,
            (int)c->rpid, how, lived, pause > 0 ? " in 1 s" : "");
    ev_timer_set(&w->restart, pause, 0.);
    ev_timer_start(loop, &w->restart);
}

/* "unix-fd:N:PATH" for each UNIX listener of `reserved`: the descriptor a
 * worker inherits instead of binding its own. */
static char inherited_spec[SERVER_MAX_LISTENERS][SERVER_ADDR_MAX + 24];

/* Stops taking UNIX-domain connections: no worker will accept them now. */
static void close_unix_listeners(void)
{
    server_remove_unix_files(&reserved);
    for (size_t i = 0; i < reserved.n_listeners; i++) {
        struct listener *l = &reserved.listeners[i];
        if (l->is_unix && l->fd >= 0) {
            close(l->fd);
            l->fd = -1;
        }
    }
}

/* The worker's command line: the shared arguments, its slot, the status
 * memory and ready pipe, and the concrete addresses the master reserved. */
static char **worker_args(struct worker *w, char *bufs[4])
{
    size_t n = mc->worker_argc + 10 + 2 * reserved.n_listeners;
    char **argv = calloc(n, sizeof *argv);
    if (!argv) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < mc->worker_argc; i++) argv[k++] = mc->worker_argv[i];
    asprintf(&bufs[0], "%d", w->slot);
    asprintf(&bufs[1], "%d", status_fd);
    asprintf(&bufs[2], "%d", ready_pipe[1]);
    if (mc->script_fd >= 0) {
        asprintf(&bufs[3], "%d", mc->script_fd);
        argv[k++] = "--script-fd";
        argv[k++] = bufs[3];
    }
    argv[k++] = "--worker-slot";
    argv[k++] = bufs[0];
    argv[k++] = "--worker-status-fd";
    argv[k++] = bufs[1];
    argv[k++] = "--ready-fd";
    argv[k++] = bufs[2];
    for (size_t i = 0; i < reserved.n_listeners; i++) {
        argv[k++] = reserved.listeners[i].implicit_tls ? "--listen-smtps" : "--listen";
        argv[k++] = reserved.listeners[i].is_unix ? inherited_spec[i] : reserved.listeners[i].addr;
    }
    argv[k] = NULL;
    return argv;
}

static void worker_spawn(struct ev_loop *loop, struct worker *w)
{
    char *bufs[4] = {0};
    char **argv = worker_args(w, bufs);
    /* Before the fork: a worker that starts fast writes its first heartbeat
     * before the parent would get to this line. */
    status[w->slot].heartbeat = 0;
    status[w->slot].hook[0] = '\0';
    pid_t pid = argv ? fork() : -1;
    if (pid == 0) {
        /* The child keeps only what the worker needs across exec. */
        fcntl(status_fd, F_SETFD, 0);
        fcntl(ready_pipe[1], F_SETFD, 0);
        if (mc->script_fd >= 0) fcntl(mc->script_fd, F_SETFD, 0);
        for (size_t i = 0; i < reserved.n_listeners; i++)
            if (reserved.listeners[i].is_unix) fcntl(reserved.listeners[i].fd, F_SETFD, 0);
        if (mc->child_setup) mc->child_setup();
        /* Die with the master, even if it is killed outright. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        /* SIGHUP stays blocked until the worker's loop handles it: a reload
         * forwarded while it still loads its script must not kill it. */
        sigset_t hup;
        sigemptyset(&hup);
        sigaddset(&hup, SIGHUP);
        sigprocmask(SIG_SETMASK, &hup, NULL);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    for (int i = 0; i < 4; i++) free(bufs[i]);
    free(argv);
    if (pid < 0) {
        log_msg(LOG_ERROR, NULL, "cannot start worker %d: %s; retrying", w->slot, strerror(errno));
        ev_timer_set(&w->restart, RESTART_PAUSE_SECONDS, 0.);
        ev_timer_start(loop, &w->restart);
        return;
    }
    w->pid = pid;
    w->started = clock_monotonic();
    running++;
    ev_child_set(&w->child, pid, 0);
    ev_child_start(loop, &w->child);
    log_msg(LOG_INFO, NULL, "worker %d started (pid %d)", w->slot, (int)pid);
}

/* One "ready wSLOT ADDR..." line from a worker. */
static void worker_said_ready(const char *line)
{
    int slot;
    if (sscanf(line, "ready w%d", &slot) != 1 || slot < 0 || slot >= mc->workers) return;
    if (workers[slot].pid > 0) slot_ready[slot] = true;
    for (int i = 0; i < mc->workers; i++)
        if (!slot_ready[i]) return;
    if (ready_sent || mc->ready_fd < 0) return;
    /* Every worker is listening at once, not just N ready lines seen. */
    ready_sent = true;
    char out[SERVER_MAX_LISTENERS * (SERVER_ADDR_MAX + 1) + 16] = "ready";
    for (size_t k = 0; k < reserved.n_listeners; k++) {
        strcat(out, " ");
        strcat(out, reserved.listeners[k].addr);
    }
    strcat(out, "\n");
    ssize_t wr = write(mc->ready_fd, out, strlen(out));
    (void)wr;
    close(mc->ready_fd);
}

/* Ready lines from workers: once all have reported, tell our own waiter. */
static void on_ready_pipe(struct ev_loop *loop, ev_io *io, int revents)
{
    char buf[4096];
    ssize_t n = read(ready_pipe[0], buf, sizeof buf);
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] != '\n') {
            if (ready_partial_len < sizeof ready_partial - 1) ready_partial[ready_partial_len++] = buf[i];
            continue;
        }
        ready_partial[ready_partial_len] = '\0';
        worker_said_ready(ready_partial);
        ready_partial_len = 0;
    }
}

void master_signal_workers(int sig)
{
    for (int i = 0; i < mc->workers; i++)
        if (workers[i].pid > 0) kill(workers[i].pid, sig);
}

static void on_watchdog(struct ev_loop *loop, ev_timer *t, int revents)
{
    double now = clock_monotonic();
    for (int i = 0; i < mc->workers; i++) {
        struct worker *w = &workers[i];
        double beat = status[i].heartbeat;
        if (w->pid <= 0 || beat == 0) continue; /* not up yet */
        if (now - beat < mc->watchdog) continue;
        log_msg(LOG_ERROR, NULL,
                "watchdog: worker %d (pid %d) has not turned its event loop for %.1f s "
                "(running: %s); killing it",
                i, (int)w->pid, now - beat, status[i].hook[0] ? status[i].hook : "no hook");
        kill(w->pid, SIGKILL);
        w->killed_by_watchdog = true;
        status[i].heartbeat = 0; /* one kill per stall */
    }
}

static ev_timer stop_timer;

static void on_stop_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    log_msg(LOG_WARN, NULL, "workers did not stop in time: killing them");
    master_signal_workers(SIGKILL);
}

static void on_stop(struct ev_loop *loop, ev_signal *s, int revents)
{
    if (stopping) {
        master_signal_workers(SIGKILL);
        return;
    }
    stopping = true;
    log_msg(LOG_INFO, NULL, "%s received: stopping %d workers",
            s->signum == SIGTERM ? "SIGTERM" : "SIGINT", running);
    for (int i = 0; i < mc->workers; i++) ev_timer_stop(loop, &workers[i].restart);
    close_unix_listeners();
    master_signal_workers(SIGTERM);
    if (running == 0) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    ev_timer_init(&stop_timer, on_stop_timeout, mc->stop_timeout + 5., 0.);
    ev_timer_start(loop, &stop_timer);
}

static void on_reload(struct ev_loop *loop, ev_signal *s, int revents)
{
    if (mc->reload) {
        mc->reload(loop, "SIGHUP received");
        return;
    }
    log_msg(LOG_INFO, NULL, "SIGHUP received: reloading every worker");
    master_signal_workers(SIGHUP);
}

static ev_timer watch_settle;

static void on_watch_settled(struct ev_loop *loop, ev_timer *t, int revents)
{
    if (mc->reload) {
        mc->reload(loop, "the script changed");
        return;
    }
    log_msg(LOG_INFO, NULL, "%s changed: reloading every worker", mc->watch_path);
    master_signal_workers(SIGHUP);
}

static void on_script_changed(struct ev_loop *loop, ev_stat *w, int revents)
{
    if (!w->attr.st_nlink) return;
    ev_timer_stop(loop, &watch_settle);
    ev_timer_set(&watch_settle, 0.3, 0.);
    ev_timer_start(loop, &watch_settle);
}

int master_run(const struct master_config *config)
{
    mc = config;
    struct ev_loop *loop = EV_DEFAULT;
    char err[512];
    reserved.unix_socket_mode = mc->unix_socket_mode;
    for (size_t i = 0; i < mc->n_listen; i++)
        if (!server_listen(&reserved, mc->listen[i], NULL, LISTEN_REUSEPORT | LISTEN_BIND_ONLY, err,
                           sizeof err))
            goto fail;
    /* A marker, not a config: workers get --listen-smtps for these. */
    static struct tls_config *implicit_marker;
    for (size_t i = 0; i < mc->n_listen_smtps; i++)
        if (!server_listen(&reserved, mc->listen_smtps[i], &implicit_marker,
                           LISTEN_REUSEPORT | LISTEN_BIND_ONLY, err, sizeof err))
            goto fail;

    if (mc->chown_unix &&
        !server_chown_unix_files(&reserved, mc->unix_uid, mc->unix_gid, err, sizeof err))
        goto fail;
    for (size_t i = 0; i < reserved.n_listeners; i++)
        if (reserved.listeners[i].is_unix)
            snprintf(inherited_spec[i], sizeof inherited_spec[i], "unix-fd:%d:%s",
                     reserved.listeners[i].fd, reserved.listeners[i].file.path);

    size_t size = sizeof(struct worker_status) * (size_t)mc->workers;
    status_fd = memfd_create("luasmtpd-workers", MFD_CLOEXEC);
    if (status_fd < 0 || ftruncate(status_fd, (off_t)size) ||
        (status = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, status_fd, 0)) ==
            MAP_FAILED) {
        snprintf(err, sizeof err, "cannot create the worker status memory: %s", strerror(errno));
        goto fail;
    }
    if (pipe2(ready_pipe, O_CLOEXEC)) {
        snprintf(err, sizeof err, "pipe: %s", strerror(errno));
        goto fail;
    }
    signal(SIGPIPE, SIG_IGN);
    ev_io ready_io;
    ev_io_init(&ready_io, on_ready_pipe, ready_pipe[0], EV_READ);
    ev_io_start(loop, &ready_io);
    ev_signal sigterm, sigint, sighup;
    ev_signal_init(&sigterm, on_stop, SIGTERM);
    ev_signal_init(&sigint, on_stop, SIGINT);
    ev_signal_init(&sighup, on_reload, SIGHUP);
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    ev_signal_start(loop, &sighup);
    sigset_t hup; /* main() held SIGHUP until a handler was in place */
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    sigprocmask(SIG_UNBLOCK, &hup, NULL);
    ev_timer watchdog;
    if (mc->watchdog > 0) {
        ev_timer_init(&watchdog, on_watchdog, WATCHDOG_CHECK_SECONDS, WATCHDOG_CHECK_SECONDS);
        ev_timer_start(loop, &watchdog);
    }
    ev_stat watch;
    if (mc->watch_path) {
        ev_timer_init(&watch_settle, on_watch_settled, 0.3, 0.);
        ev_stat_init(&watch, on_script_changed, mc->watch_path, 1.0);
        ev_stat_start(loop, &watch);
    }
    log_msg(LOG_INFO, NULL, "master (pid %d) starting %d workers; watchdog %s", (int)getpid(),
            mc->workers, mc->watchdog > 0 ? "on" : "off");
    for (int i = 0; i < mc->workers; i++) {
        struct worker *w = &workers[i];
        w->slot = i;
        ev_child_init(&w->child, on_child, 0, 0);
        w->child.data = w;
        ev_timer_init(&w->restart, on_restart_due, 0., 0.);
        w->restart.data = w;
        worker_spawn(loop, w);
    }
    ev_run(loop, 0);
    close_unix_listeners();
    log_msg(LOG_INFO, NULL, "master stopped");
    return 0;

fail:
    close_unix_listeners();
    log_msg(LOG_ERROR, NULL, "%s", err);
    return 1;
}

/* ---------------------------------------------------------------- worker side */

static struct worker_status *my_status;
static ev_timer heartbeat;

static void on_heartbeat(struct ev_loop *loop, ev_timer *t, int revents)
{
    my_status->heartbeat = clock_monotonic();
}

char *master_worker_hook_slot(size_t *size)
{
    if (!my_status) return NULL;
    *size = sizeof my_status->hook;
    return my_status->hook;
}

bool master_worker_attach(int fd, int slot)
{
    if (slot < 0 || slot >= MASTER_MAX_WORKERS) return false;
    size_t size = sizeof(struct worker_status) * (size_t)(slot + 1);
    struct worker_status *all = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (all == MAP_FAILED) return false;
    my_status = &all[slot];
    my_status->pid = getpid();
    my_status->heartbeat = clock_monotonic();
    ev_timer_init(&heartbeat, on_heartbeat, HEARTBEAT_SECONDS, HEARTBEAT_SECONDS);
    ev_timer_start(EV_DEFAULT, &heartbeat);
    /* Don't let the heartbeat alone keep the loop alive at shutdown. */
    ev_unref(EV_DEFAULT);
    return true;
}
