/* session_internal.h — what session.c lends to verbs.c (and only to it):
 * state transitions, the hook runner glue, the owned continuation
 * arguments and the few lifecycle steps a verb starts (TLS, DATA). Must not
 * be included by anything outside the SMTP session (session.c, verbs.c). */
#ifndef LUASMTPD_SESSION_INTERNAL_H
#define LUASMTPD_SESSION_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "policy.h"
#include "session.h"

/* What a command hook produced, read once in session_hook_done. */
enum hook_outcome {
    HOOK_MISSING, /* no hook, or it returned smtpd.MISSING: the default */
    HOOK_STATUS,  /* one valid status line */
    HOOK_LINES,   /* HOOK_RETURNS_LINES: a non-empty list of valid status lines */
    HOOK_TABLE,   /* HOOK_RETURNS_STATUS_OR_TABLE: a table (its entries unchecked) */
    HOOK_FAILED,  /* raised, or returned something else (already answered) */
};

/* What a hook is expected to return. */
enum hook_returns {
    HOOK_RETURNS_STATUS, /* a status line or smtpd.MISSING */
    HOOK_RETURNS_LINES,  /* a list of reply lines or smtpd.MISSING (handle_EHLO) */
    /* a status line, a table (LMTP's handle_DATA: a status per recipient,
     * which the verb checks), or smtpd.MISSING */
    HOOK_RETURNS_STATUS_OR_TABLE,
};

struct hook_result {
    enum hook_outcome outcome;
    const char *status; /* HOOK_STATUS: valid while the continuation runs */
    size_t len;
    lua_State *co; /* HOOK_LINES, HOOK_TABLE: the table is at index 1, valid likewise */
};

/* Proceeds with a hook's result; runs inside the hook's completion. */
typedef void (*command_after_fn)(struct session *s, const struct hook_result *r);

/* The one way to change s->state; logs the transition at LOG_TRACE. */
void session_set_state(struct session *s, enum session_state st, const char *why);

/* The client did something: the idle timeout starts again. */
void session_touch(struct session *s);

/* Pushes hook h's function and (server, session, envelope) on a pooled
 * coroutine and returns it; the caller pushes its extra arguments and calls
 * session_hook_run. */
lua_State *session_hook_begin(struct session *s, enum hook_id h);

/* Runs the hook begun by session_hook_begin with nextra extra arguments; it
 * may wait. When it finishes, session_hook_done syncs the Lua tables back
 * to C, reads the result as `returns` says and calls after. May resume Lua. */
void session_hook_run(struct session *s, int nextra, enum hook_returns returns,
                      command_after_fn after);

/* Copies what a continuation needs into the session (the argument, a
 * parsed address, parameters): a suspended hook outlives the input buffer
 * and the dispatcher's stack. False (451 sent) if memory ran out. */
bool session_pending_keep(struct session *s, const char *arg, size_t arg_len, const char *addr,
                          size_t addr_len, const char *opts, size_t opts_len);
/* The kept bytes (NULL when nothing was kept); valid until
 * session_pending_release. */
const char *session_pending_arg(struct session *s);
const char *session_pending_addr(struct session *s);
const char *session_pending_opts(struct session *s);
/* The command proceeded: nothing of it is needed any more. */
void session_pending_release(struct session *s);

/* Lets the idle timer recompute its next deadline (a DATA transfer began). */
void session_replan_timer(struct session *s);

/* STARTTLS accepted (its 220 queued): hands the connection to TLS. */
void session_start_tls(struct session *s);

/* The DATA reader (s->data), allocated by the session's first DATA before
 * its 354: false (and a 451 sent) if memory ran out. session_data_end drops
 * the message once it is answered; the reader stays for the session's next
 * message (a calloc and free per message made glibc consolidate its heap on
 * the next large allocation) and goes with session_data_free at teardown. */
bool session_data_get(struct session *s);
void session_data_end(struct session *s);
void session_data_free(struct session *s);

/* DATA accepted (session_data_get succeeded, its 354 queued): the pump
 * reads message text from now. */
void session_begin_data(struct session *s);

#endif
