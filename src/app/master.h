/* master.h — the process model behind --workers N: a master that reserves
 * the listening ports, runs N worker processes (each a normal luasmtpd with
 * its own event loop and Lua state, accepting on its own SO_REUSEPORT
 * socket), forwards SIGHUP, restarts a worker that dies, stops them
 * gracefully, and kills a worker whose event loop stopped turning (a Lua
 * hook stuck in an endless loop cannot be interrupted once JIT-compiled).
 * Must not load Lua or parse SMTP. */
#ifndef LUASMTPD_MASTER_H
#define LUASMTPD_MASTER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct ev_loop;

/* One worker's slot in the shared memory the watchdog reads. */
struct worker_status {
    double heartbeat;   /* CLOCK_MONOTONIC seconds, written by the worker's loop */
    pid_t pid;
    char hook[112];     /* "hook-name [session]" while a hook runs, else "" */
};

#define MASTER_MAX_WORKERS 256

struct master_config {
    int workers;
    /* The worker command line without listen addresses; the master appends
     * -l / --listen-smtps with the concrete addresses it reserved. */
    char **worker_argv;
    size_t worker_argc;
    const char **listen;        /* specs as given; port 0 resolved once */
    size_t n_listen;
    const char **listen_smtps;
    size_t n_listen_smtps;
    double watchdog;            /* seconds without a loop turn; 0 = off */
    double stop_timeout;
    int ready_fd;               /* -1: none */
    const char *watch_path;     /* --watch: forward a reload when it changes */
    int script_fd;              /* the validated script's store, inherited by workers; -1: none */
    /* UNIX-domain listeners: the master makes each socket once (workers
     * inherit the descriptor: SO_REUSEPORT does not apply to them), with
     * this mode, given to uid:gid when chown_unix is set (root dropping to
     * --user), and removes the files when it stops. */
    unsigned unix_socket_mode;
    bool chown_unix;
    uid_t unix_uid;
    gid_t unix_gid;
    /* SIGHUP / --watch: validates the script and then calls
     * master_signal_workers(SIGHUP), or refuses (the caller loads Lua: this
     * file must not). NULL: forward SIGHUP at once. */
    void (*reload)(struct ev_loop *loop, const char *why);
    /* Runs in each forked worker before exec (what it must inherit beyond
     * the status memory and the script store), or NULL. */
    void (*child_setup)(void);
};

/* Sends sig to every running worker. */
void master_signal_workers(int sig);

/* Runs the master until it is stopped; returns the exit status. */
int master_run(const struct master_config *mc);

/* Worker side (--worker-status-fd F --worker-slot I): maps the slot and
 * starts the heartbeat on the default loop. Returns false on error. */
bool master_worker_attach(int status_fd, int slot);

/* The worker's "running hook" text in the shared memory (the watchdog
 * names it when it kills a stuck worker), or NULL before attach. The caller
 * hands it to the hook layer: this file knows no Lua. */
char *master_worker_hook_slot(size_t *size);

#endif
