/* session.c — one SMTP connection's lifecycle: creation and the greeting,
 * PROXY and TLS, the state (every transition through session_set_state),
 * the input pump and the line waiter, replies, timers, the hook runner
 * glue (session_hook_done, the hook error reply), secrets and the owned
 * continuation arguments. The verbs themselves are rows of a table in
 * verbs.c, reached through s->verbs. Input is consumed only between
 * commands, so a suspended hook holds back pipelined commands. The session
 * is freed only from a safe point: a close is scheduled, and the conn's
 * on_closed does the freeing. Must not include mbedTLS, nor check or
 * answer a verb itself (verbs.c does). */
#include "session.h"
#include "session_internal.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "log.h"
#include "lua_bind.h"
#include "lua_session.h"
#include "policy.h"
#include "smtp_limits.h"
#include "status_line.h"
#include "tls.h"
#include "proxy.h"

static const char *const reply_hook_error = "451 4.3.0 Error: local error in processing";
static const char *const reply_auth_hook_error = "454 4.7.0 Temporary authentication failure";

static void session_on_input(struct conn *c, void *owner);
static void session_on_closed(struct conn *c, void *owner);
static void session_on_idle(struct ev_loop *loop, ev_timer *w, int revents);
static void session_after_wake(void *owner);
static bool session_sync_hook(void *owner, lua_State *co);
static const struct hook_owner_ops session_hook_ops = {session_after_wake, session_sync_hook};

/* ---------------------------------------------------------------- replies */

void session_reply_len(struct session *s, const char *line, size_t len)
{
    if (s->state == SESSION_CLOSING && s->conn->closing) return;
    if (log_enabled(LOG_DEBUG)) {
        char esc[1024];
        log_msg(LOG_DEBUG, s->sid, "<< %s", log_escape(line, len, esc, sizeof esc));
    }
    conn_write(s->conn, line, len);
    conn_write(s->conn, "\r\n", 2);
    if (len > 0 && (line[0] == '4' || line[0] == '5')) s->errors++;
}

void session_reply(struct session *s, const char *line) { session_reply_len(s, line, strlen(line)); }

void session_replyf(struct session *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    session_reply_len(s, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* ---------------------------------------------------------------- secrets */

/* The slots are out of line, allocated by the first secret and freed when
 * they are cleared: an idle connection holds only what it needs (bench
 * (d)). NULL if memory ran out (the secret is then not remembered, as when
 * strndup fails). */
static char **session_secrets_get(struct session *s)
{
    if (!s->secrets) s->secrets = calloc(SESSION_SECRETS_MAX, sizeof *s->secrets);
    return s->secrets;
}

void session_add_secret(struct session *s, const char *p, size_t n)
{
    /* Scrubbing works on C strings: a NUL would cut the secret short (an
     * empty one would match everywhere), so callers pass NUL-free pieces.
     * Tiny strings are skipped: scrubbing them would mangle every message. */
    if (n < 3 || memchr(p, '\0', n)) return;
    if (!session_secrets_get(s)) return;
    for (int i = 0; i < SESSION_SECRETS_MAX; i++) {
        if (!s->secrets[i]) {
            s->secrets[i] = strndup(p, n);
            return;
        }
    }
}

void session_add_decoded_secret(struct session *s, const char *p, size_t n)
{
    /* SASL text in PLAIN's form, "authzid NUL login NUL password": only the
     * field after the last NUL is a secret. The login is not: it appears in
     * the failure log line anyway, and scrubbing a short login ("str",
     * "err") would blank those letters in every message. Text without a
     * NUL is a challenge response and secret as a whole. */
    const char *nul = memrchr(p, '\0', n);
    if (nul) session_add_secret(s, nul + 1, n - (size_t)(nul + 1 - p));
    else session_add_secret(s, p, n);
}

void session_clear_secrets(struct session *s)
{
    if (!s->secrets) return;
    for (int i = 0; i < SESSION_SECRETS_MAX; i++) {
        if (s->secrets[i]) {
            memset(s->secrets[i], 0, strlen(s->secrets[i]));
            free(s->secrets[i]);
            s->secrets[i] = NULL;
        }
    }
    free(s->secrets); /* the slots held only pointers */
    s->secrets = NULL;
}

void session_scrub(struct session *s, char *msg)
{
    if (!s->secrets) return;
    for (int i = 0; i < SESSION_SECRETS_MAX; i++) {
        const char *secret = s->secrets[i];
        if (!secret) continue;
        size_t n = strlen(secret);
        /* One pass: the search goes on after each hit, never over what was
         * just replaced, so a secret made of '*' cannot match forever. */
        for (char *at = msg; (at = strstr(at, secret)); at += n) memset(at, '*', n);
    }
}

/* ---------------------------------------------------------------- pending arguments */

/* Copies what a continuation needs; false (and a 451) if memory ran out.
 * The three parts are one allocation; a command line is far below 4 GiB,
 * so 32-bit lengths keep every session small. */
bool session_pending_keep(struct session *s, const char *arg, size_t arg_len, const char *addr,
                          size_t addr_len, const char *opts, size_t opts_len)
{
    session_pending_release(s);
    size_t need = arg_len + addr_len + opts_len + 1;
    if (need > s->pending_cap) {
        free(s->pending_buf);
        s->pending_cap = 0;
        if (!(s->pending_buf = malloc(need))) {
            session_reply(s, reply_hook_error);
            return false;
        }
        s->pending_cap = (uint32_t)need;
    }
    char *p = s->pending_buf;
    if (arg_len) memcpy(p, arg, arg_len);
    if (addr_len) memcpy(p + arg_len, addr, addr_len);
    if (opts_len) memcpy(p + arg_len + addr_len, opts, opts_len);
    p[arg_len + addr_len + opts_len] = '\0';
    s->pending = p;
    s->pending_arg_len = (uint32_t)arg_len;
    s->pending_addr_len = (uint32_t)addr_len;
    s->pending_opts_len = (uint32_t)opts_len;
    return true;
}

static void session_pending_free(struct session *s)
{
    free(s->pending_buf);
    s->pending_buf = s->pending = NULL;
    s->pending_cap = 0;
}

/* NULL when nothing was kept (a hook whose continuation needs nothing). */
static const char *session_pending_at(struct session *s, size_t offset)
{
    return s->pending ? s->pending + offset : NULL;
}

const char *session_pending_arg(struct session *s)
{
    return session_pending_at(s, 0);
}

const char *session_pending_addr(struct session *s)
{
    return session_pending_at(s, s->pending_arg_len);
}

const char *session_pending_opts(struct session *s)
{
    return session_pending_at(s, s->pending_arg_len + s->pending_addr_len);
}

/* The command proceeded: nothing of it is needed any more. */
/* Past this, the block goes with the command (an idle connection keeps
 * no more than a short command's bytes: bench (d)). */
#define SESSION_PENDING_KEEP 64

void session_pending_release(struct session *s)
{
    if (s->pending_cap > SESSION_PENDING_KEEP) session_pending_free(s);
    s->pending = NULL;
    s->pending_arg_len = s->pending_addr_len = s->pending_opts_len = 0;
}

/* ---------------------------------------------------------------- lifecycle */

/* Replies queued for a client that doesn't read: past this, stop taking
 * its commands until the output drains to half. */
#define SESSION_OUTPUT_HWM (256 * 1024)

/* Bounds a TLS handshake (never longer than the idle timeout). */
#define TLS_HANDSHAKE_SECONDS 30.0

static void session_on_tls_done(struct conn *c, void *owner, bool ok);

static void session_greet(struct session *s)
{
    s->greeted = true;
    session_replyf(s, "220 %s %s", s->opt->hostname, s->opt->ident);
    conn_flush(s->conn);
}

static double handshake_timeout(const struct session *s)
{
    return s->opt->timeout < TLS_HANDSHAKE_SECONDS ? s->opt->timeout : TLS_HANDSHAKE_SECONDS;
}

static const char *const session_state_names[] = {
    "COMMAND", "DATA", "TLS_HANDSHAKE", "PROXY", "CLOSING",
};

void session_set_state(struct session *s, enum session_state st, const char *why)
{
    if (log_enabled(LOG_TRACE))
        log_msg(LOG_TRACE, s->sid, "state %s -> %s (%s)", session_state_names[s->state],
                session_state_names[st], why ? why : "?");
    s->state = st;
}

void session_start_tls(struct session *s)
{
    /* tls_start flushes the queued 220 in clear text, then discards every
     * byte the client sent after the STARTTLS line (CVE-2011-0411,
     * CVE-2024-34083): the pump must not look at this line or the input
     * again. */
    session_set_state(s, SESSION_TLS_HANDSHAKE, "STARTTLS");
    if (!tls_start(s->conn, s->host->tls, handshake_timeout(s), session_on_tls_done))
        session_close(s, "cannot start TLS");
}

/* The DATA reader is out of line, from DATA's 354 until the message is
 * answered: an idle connection holds only what it needs (bench (d)). False
 * (and a 451) if memory ran out. */
bool session_data_get(struct session *s)
{
    if (!s->data && !(s->data = calloc(1, sizeof *s->data))) {
        session_reply(s, reply_hook_error);
        return false;
    }
    return true;
}

void session_data_end(struct session *s)
{
    if (s->data) data_end(s->data); /* the content, and its charge on the budget */
}

void session_data_free(struct session *s)
{
    session_data_end(s);
    free(s->data);
    s->data = NULL;
}

void session_begin_data(struct session *s)
{
    data_begin(s->data, (size_t)s->opt->data_size_limit, s->opt->bare_newline,
               &s->host->data_budget, (size_t)s->opt->data_memory_limit);
    session_set_state(s, SESSION_DATA, "DATA");
    s->data_window_start = ev_now(s->host->loop);
    s->data_window_bytes = 0;
    if (s->opt->data_rate_min) session_replan_timer(s);
}

/* After the connection (and a PROXY header, if expected): implicit TLS or
 * the greeting. */
static void session_begin_smtp(struct session *s, struct tls_config *implicit_tls)
{
    if (implicit_tls) {
        /* RFC 8314: nothing in clear text; the greeting comes after the handshake. */
        session_set_state(s, SESSION_TLS_HANDSHAKE, "implicit TLS");
        if (!tls_start_implicit(s->conn, implicit_tls, handshake_timeout(s), session_on_tls_done))
            session_close(s, "cannot start TLS");
        return;
    }
    session_set_state(s, SESSION_COMMAND, "greeting");
    session_greet(s);
}

struct session *session_new(struct session_host *host, const struct verb_table *verbs, int fd,
                            const char *peer_host, int peer_port,
                            const struct session_unix_peer *unix_peer,
                            struct tls_config *implicit_tls)
{
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd); /* as conn_new does on failure: the caller owns nothing now */
        return NULL;
    }
    static const struct conn_events events = {session_on_input, session_on_closed};
    s->conn = conn_new(host->loop, fd, &events, s);
    if (!s->conn) {
        free(s);
        return NULL;
    }
    s->id = ++host->next_session_id;
    snprintf(s->sid, sizeof s->sid, "s%lu", s->id);
    s->host = host;
    s->policy = host->policy;
    policy_hold(s->policy);
    s->opt = &s->policy->opt;
    snprintf(s->peer_host, sizeof s->peer_host, "%s", peer_host);
    s->peer_port = peer_port;
    s->peer_unix = unix_peer != NULL;
    /* -1 (unknown) becomes (uid_t)-1 and (gid_t)-1, which no user has. */
    s->peer_pid = unix_peer ? (pid_t)unix_peer->pid : -1;
    s->peer_uid = unix_peer ? (uid_t)unix_peer->uid : (uid_t)-1;
    s->peer_gid = unix_peer ? (gid_t)unix_peer->gid : (gid_t)-1;
    s->state = SESSION_COMMAND; /* the initial state, not a transition */
    s->bogus_budget = SMTP_BOGUS_LIMIT;
    s->verbs = verbs; /* the listener's table: SMTP's, later LMTP's */
    s->verbs->session_init(s);
    hook_init(&s->hook, &s->policy->vm, s->sid, &session_hook_ops);
    s->server_ref = s->session_ref = s->envelope_ref = LUA_NOREF;
    lsession_open(s);

    ev_init(&s->idle, session_on_idle);
    s->idle.data = s;
    s->last_activity = ev_now(host->loop);
    s->idle.repeat = s->opt->timeout;
    ev_timer_again(host->loop, &s->idle);

    host->session_added(host, s);
    if (unix_peer)
        log_msg(LOG_INFO, s->sid, "connection on %s (pid %ld uid %ld gid %ld)%s (policy generation %u)",
                peer_host, unix_peer->pid, unix_peer->uid, unix_peer->gid,
                implicit_tls ? " over implicit TLS" : "", s->policy->generation);
    else
        log_msg(LOG_INFO, s->sid, "connection from %s port %d%s (policy generation %u)", peer_host,
                peer_port, implicit_tls ? " over implicit TLS" : "", s->policy->generation);
    /* max_connections_per_ip: a UNIX socket's clients have no address. */
    long from_ip = unix_peer ? 0 : host->ip_acquire(host, peer_host);
    s->ip_counted = from_ip > 0;
    const struct options *o = s->opt;
    if (o->max_connections && host->n_sessions > (size_t)o->max_connections) {
        session_replyf(s, "421 4.3.2 %s Error: too many connections, try again later",
                       o->hostname);
        session_close(s, "max_connections reached");
        conn_flush(s->conn);
        return s;
    }
    if (o->max_connections_per_ip && from_ip > o->max_connections_per_ip) {
        session_replyf(s, "421 4.7.0 %s Error: too many connections from %s", o->hostname,
                       peer_host);
        session_close(s, "max_connections_per_ip reached");
        conn_flush(s->conn);
        return s;
    }
    if (o->proxy_protocol_timeout > 0) {
        /* The load balancer speaks first; TLS and the greeting wait. */
        session_set_state(s, SESSION_PROXY, "expecting a PROXY header");
        s->pending_implicit_tls = implicit_tls;
        s->proxy_deadline = ev_now(host->loop) + o->proxy_protocol_timeout;
        session_replan_timer(s);
        return s;
    }
    session_begin_smtp(s, implicit_tls);
    return s;
}

void session_close(struct session *s, const char *why)
{
    if (s->state == SESSION_CLOSING) return;
    s->close_reason = why;
    session_set_state(s, SESSION_CLOSING, why);
    /* A suspended hook will never see its event now. */
    if (hook_active(&s->hook))
        log_msg(LOG_INFO, s->sid, "abandoning suspended hook %s", s->hook.name);
    hook_abandon(&s->hook);
    auth_cancel_hold(s);
    ev_timer_stop(s->host->loop, &s->idle);
    conn_close(s->conn);
}

static void session_free(struct session *s)
{
    hook_abandon(&s->hook);
    auth_session_free(s);
    lsession_close(s);
    session_data_free(s);
    free(s->unknown_budget);
    session_pending_free(s);
    free(s->proxy_client);
    ev_timer_stop(s->host->loop, &s->idle);
    s->host->session_removed(s->host, s);
    if (s->ip_counted) s->host->ip_release(s->host, s->peer_host);
    policy_release(s->policy);
    conn_free(s->conn);
    free(s);
}

static void session_on_closed(struct conn *c, void *owner)
{
    struct session *s = owner;
    if (s->state != SESSION_CLOSING) {
        s->close_reason = hook_active(&s->hook) ? "connection lost; abandoned a suspended hook"
                                                 : "connection lost";
        session_set_state(s, SESSION_CLOSING, s->close_reason);
        hook_abandon(&s->hook);
    }
    log_msg(LOG_INFO, s->sid, "closed: %s (%u message%s)",
            s->close_reason ? s->close_reason : "?", s->messages, s->messages == 1 ? "" : "s");
    session_free(s);
}

/* libev's "be smart about timeouts": one timer, re-armed lazily from the
 * last activity. */
static void session_on_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct session *s = w->data;
    ev_tstamp now = ev_now(loop);
    const struct options *o = s->opt;
    if (s->state == SESSION_PROXY) {
        if (now >= s->proxy_deadline) { /* aiosmtpd: a late header closes silently */
            session_close(s, "no PROXY header within proxy_protocol_timeout");
            return;
        }
        w->repeat = s->proxy_deadline - now;
        ev_timer_again(loop, w);
        return;
    }
    /* Slowloris: a command line begun must be finished in command_timeout,
     * however slowly its bytes keep coming. */
    if (o->command_timeout && s->line_started && now - s->line_started >= o->command_timeout) {
        session_replyf(s, "421 4.4.2 %s Error: timeout exceeded", o->hostname);
        session_close(s, "command line not completed within command_timeout");
        return;
    }
    /* A DATA transfer must keep data_rate_min over each window of
     * data_rate_grace seconds, not just on average since it began: a burst
     * followed by a trickle would otherwise hold its buffer for hours. */
    if (s->state == SESSION_DATA && o->data_rate_min) {
        double elapsed = now - s->data_window_start;
        if (elapsed >= o->data_rate_grace) {
            size_t got = s->data->num_bytes - s->data_window_bytes;
            if ((double)got / elapsed < (double)o->data_rate_min) {
                session_replyf(s, "421 4.4.2 %s Error: timeout exceeded", o->hostname);
                session_close(s, "DATA slower than data_rate_min");
                return;
            }
            s->data_window_start = now;
            s->data_window_bytes = s->data->num_bytes;
        }
    }
    ev_tstamp after = s->last_activity - now + o->timeout;
    if (after > 0) {
        if (o->command_timeout && s->line_started) {
            ev_tstamp cmd = s->line_started + o->command_timeout - now;
            if (cmd < after) after = cmd;
        }
        if (s->state == SESSION_DATA && o->data_rate_min) {
            ev_tstamp window_end = s->data_window_start + o->data_rate_grace - now;
            if (after > window_end) after = window_end;
        }
        w->repeat = after > 0.001 ? after : 0.001;
        ev_timer_again(loop, w);
        return;
    }
    if (s->state == SESSION_TLS_HANDSHAKE) { /* no channel to reply on */
        session_close(s, "idle timeout during the TLS handshake");
        return;
    }
    session_replyf(s, "421 4.4.2 %s Error: timeout exceeded", s->opt->hostname);
    session_close(s, "idle timeout");
}

void session_touch(struct session *s)
{
    s->last_activity = ev_now(s->host->loop);
}

/* Lets the idle timer recompute its next deadline from the loop (a command
 * line or a DATA transfer began). */
void session_replan_timer(struct session *s)
{
    if (s->state == SESSION_CLOSING) return;
    s->idle.repeat = 0.001;
    ev_timer_again(s->host->loop, &s->idle);
}

void session_shutdown(struct session *s)
{
    s->shutting_down = true;
    if (s->state == SESSION_COMMAND && !hook_active(&s->hook) && !auth_holding(s)) {
        session_replyf(s, "421 4.3.2 %s Error: server shutting down, try again later",
                       s->opt->hostname);
        session_close(s, "server stopping");
        conn_flush(s->conn);
    }
}

void session_reset_envelope(struct session *s)
{
    lsession_new_envelope(s);
    s->has_mail_from = false;
    s->rcpt_count = 0;
}

/* ---------------------------------------------------------------- hooks */

/* The one hook-error logger: the log text at co's top (error and
 * traceback), secrets scrubbed, client bytes escaped so it stays one line,
 * after "hook <name> failed<what>: ". */
void session_log_hook_error(struct session *s, lua_State *co, const char *name, const char *what)
{
    char msg[2048], esc[4096];
    const char *tb = lua_tostring(co, -1);
    snprintf(msg, sizeof msg, "%s", tb ? tb : "(no message)");
    session_scrub(s, msg);
    log_msg(LOG_ERROR, s->sid, "hook %s failed%s: %s", name ? name : "?", what ? what : "",
            log_escape(msg, strlen(msg), esc, sizeof esc));
}

/* How many times a hook error's reply goes out (LMTP: once per recipient). */
static unsigned reply_copies(const struct session *s)
{
    return s->reply_copies ? s->reply_copies : 1;
}

struct exception_call {
    struct session *s;
    bool replied;
};

/* handle_exception finished: a valid status line is the reply. */
static void exception_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct exception_call *call = owner;
    if (!ok) {
        session_log_hook_error(call->s, co, "handle_exception", NULL);
        return;
    }
    size_t n = 0;
    const char *status = nres >= 1 && lua_type(co, 1) == LUA_TSTRING ? lua_tolstring(co, 1, &n) : NULL;
    if (status && status_line_valid(status, n)) {
        for (unsigned i = 0; i < reply_copies(call->s); i++)
            session_reply_len(call->s, status, n);
        call->replied = true;
    }
}

/* Logs a failed hook (scrubbing secrets) and sends the reply for it:
 * handle_exception's status if it gives a valid one, else 451 (454 in AUTH). */
void session_reply_hook_error(struct session *s, lua_State *co, bool in_auth)
{
    session_log_hook_error(s, co, s->hook.name, NULL);

    const char *fallback = in_auth ? reply_auth_hook_error : reply_hook_error;
    if (!policy_has_hook(s->policy, HOOK_EXCEPTION)) {
        for (unsigned i = 0; i < reply_copies(s); i++)
            session_reply(s, fallback);
        return;
    }
    /* handle_exception(err) picks the status line. It runs through the hook
     * runner like every hook (memory limit, the watchdog's "running" slot)
     * on a hook state of its own, since the failed hook's may still be in
     * use; it may not wait, so a yield fails it. */
    struct exception_call call = {s, false};
    struct hook_state eh;
    hook_init(&eh, &s->policy->vm, s->sid, NULL);
    lua_State *eco = hook_begin(&eh, s->policy->hook_ref[HOOK_EXCEPTION], "handle_exception");
    lua_pushvalue(co, -2); /* the error value */
    lua_xmove(co, eco, 1);
    hook_run(&eh, 1, exception_done, &call, 0); /* may not wait: always finishes */
    if (!call.replied) {
        log_msg(LOG_ERROR, s->sid, "handle_exception did not return a status line");
        for (unsigned i = 0; i < reply_copies(s); i++)
            session_reply(s, fallback);
    }
}

/* Reads a hook's result as `returns` says, after the tables were synced;
 * HOOK_FAILED once the error reply went out. */
static struct hook_result session_hook_result(struct session *s, lua_State *co, int nres,
                                              enum hook_returns returns)
{
    struct hook_result r = {HOOK_FAILED, NULL, 0, NULL};
    if (nres >= 1 && lbind_is_missing(co, 1)) {
        r.outcome = HOOK_MISSING;
        return r;
    }
    if (returns == HOOK_RETURNS_LINES) {
        /* A list of lines replacing the default ones (handle_EHLO). */
        bool valid = nres >= 1 && lua_type(co, 1) == LUA_TTABLE && lua_objlen(co, 1) > 0;
        for (int i = 1; valid && i <= (int)lua_objlen(co, 1); i++) {
            lua_rawgeti(co, 1, i);
            size_t n;
            const char *line = lua_tolstring(co, -1, &n);
            valid = lua_type(co, -1) == LUA_TSTRING && status_line_valid(line, n);
            lua_pop(co, 1);
        }
        if (valid) {
            r.outcome = HOOK_LINES;
            r.co = co;
            return r;
        }
        lua_pushfstring(co, "%s returned %s; expected a list of reply lines", s->hook.name,
                        nres >= 1 ? luaL_typename(co, 1) : "nothing");
        lua_pushvalue(co, -1);
        session_reply_hook_error(s, co, false);
        return r;
    }
    bool table_ok = returns == HOOK_RETURNS_STATUS_OR_TABLE;
    if (table_ok && nres >= 1 && lua_type(co, 1) == LUA_TTABLE) {
        r.outcome = HOOK_TABLE;
        r.co = co;
        return r;
    }
    if (nres >= 1 && lua_type(co, 1) == LUA_TSTRING) {
        r.status = lua_tolstring(co, 1, &r.len);
        if (status_line_valid(r.status, r.len)) {
            r.outcome = HOOK_STATUS;
            return r;
        }
    }
    lua_settop(co, nres >= 1 ? 1 : 0);
    const char *what = nres >= 1 ? luaL_typename(co, 1) : "nothing";
    if (lua_type(co, 1) == LUA_TSTRING) what = "a string that is not one status line";
    /* Returning nothing after storing the message is the easy mistake:
     * the 451 makes the client send it again, so say what follows. */
    bool data = s->hook.name && !strcmp(s->hook.name, "handle_DATA");
    lua_pushfstring(co, "%s returned %s; expected a status line%s or smtpd.MISSING%s",
                    s->hook.name, what, table_ok ? ", a table of them by recipient," : "",
                    data ? " (the client gets 451 and will send the message again: "
                           "return \"250 OK\" once it is stored)"
                         : "");
    lua_pushvalue(co, -1);
    session_reply_hook_error(s, co, false);
    r.status = NULL;
    r.len = 0;
    return r;
}

/* The one place a command hook finishes: the Lua tables are synced back to
 * C before anything reads the result, then the command proceeds. */
static void session_hook_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    command_after_fn after = (command_after_fn)s->hook_after;
    s->hook_after = NULL;
    struct hook_result r = {HOOK_FAILED, NULL, 0, NULL};
    /* A failed hook's own error is what gets reported, not the tables'. */
    if (!ok) { /* the hook layer synced the mirrors already (session_sync_hook) */
        session_reply_hook_error(s, co, false);
        after(s, &r);
        return;
    }
    r = session_hook_result(s, co, nres, s->hook_returns);
    after(s, &r);
}

/* Pushes the hook function and (server, session, envelope) on a coroutine;
 * the caller pushes its extra arguments and calls session_hook_run. */
lua_State *session_hook_begin(struct session *s, enum hook_id h)
{
    lua_State *co = hook_begin(&s->hook, s->policy->hook_ref[h], policy_hook_names[h]);
    lsession_push_args(s, co);
    return co;
}

void session_hook_run(struct session *s, int nextra, enum hook_returns returns,
                      command_after_fn after)
{
    s->hook_after = (void *)after;
    s->hook_returns = returns;
    hook_run(&s->hook, 3 + nextra, session_hook_done, s, HOOK_MAY_WAIT);
}

/* handle_STARTTLS returned: anything but true refuses every later command
 * but QUIT (aiosmtpd's _tls_handshake_okay). */
static void starttls_hook_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    if (!ok) {
        session_log_hook_error(s, co, "handle_STARTTLS", " (session refused)");
        s->tls_refused = true;
        return;
    }
    s->tls_refused = !(nres >= 1 && lua_toboolean(co, 1));
    if (s->tls_refused) log_msg(LOG_INFO, s->sid, "handle_STARTTLS refused the session");
}

static void session_on_tls_done(struct conn *c, void *owner, bool ok)
{
    struct session *s = owner;
    if (!ok) {
        log_msg(LOG_INFO, s->sid, "TLS handshake failed: %s", tls_error(c));
        session_close(s, "TLS handshake failed");
        return;
    }
    bool implicit = !s->greeted; /* implicit TLS: the greeting is still to come */
    char version[32], cipher[96];
    char *pem = NULL;
    tls_info(c, version, sizeof version, cipher, sizeof cipher, &pem);
    bool resumed = tls_resumed(c);
    log_msg(LOG_INFO, s->sid, "TLS established: %s %s%s%s", version, cipher,
            resumed ? ", resumed" : "", pem ? ", client certificate verified" : "");
    s->tls_active = true;
    s->tls_peer_verified = pem != NULL;
    session_set_state(s, SESSION_COMMAND, "TLS established");
    if (!implicit) {
        /* RFC 3207 4.2: forget everything learnt before TLS (but not what
         * the PROXY header said about the connection). */
        s->has_host_name = s->extended_smtp = s->authenticated = false;
        lsession_new_session(s);
        session_reset_envelope(s);
    }
    lsession_set_ssl(s, version, cipher, pem, resumed);
    free(pem);
    session_touch(s);
    if (implicit) session_greet(s);
    else if (policy_has_hook(s->policy, HOOK_STARTTLS)) {
        lua_State *co = session_hook_begin(s, HOOK_STARTTLS);
        (void)co;
        s->hook_after = NULL;
        /* It may not wait: a binding raises, a bare yield fails the hook. */
        hook_run(&s->hook, 3, starttls_hook_done, s, 0);
    }
    session_pump(s);
}

/* One command line: a retired generation's session is sent away first. */
static void session_command(struct session *s, const char *line, size_t len)
{
    /* A reload retired this session's generation long enough ago: make the
     * client come back on the new one rather than hold the old one open. */
    if (s->policy->retired_at > 0 &&
        ev_now(s->host->loop) - s->policy->retired_at > s->host->drain_timeout) {
        session_replyf(s, "421 4.3.2 %s Error: policy reloaded, try again later",
                       s->opt->hostname);
        session_close(s, "drain timeout of a retired policy generation");
        return;
    }
    s->verbs->dispatch(s, line, len);
}

/* The message text is in (or refused): back to commands, then the table's
 * end-of-DATA row. */
static void session_data_finished(struct session *s)
{
    session_set_state(s, SESSION_COMMAND, "end of DATA");
    session_touch(s);
    s->verbs->message_done(s);
}

/* Takes one LF-terminated line from the input. Returns false when no whole
 * line is buffered. Lines longer than `max` are discarded up to their LF and
 * reported with *too_long. */
static bool session_next_line(struct session *s, size_t max, const char **line, size_t *len,
                              bool *too_long, size_t *consumed)
{
    struct buf *in = &s->conn->in;
    const char *p = buf_head(in);
    size_t n = buf_len(in);
    /* An idle conn may have released its buffer: p is NULL then. */
    const char *lf = n ? memchr(p, '\n', n) : NULL;
    if (s->discard_line) {
        if (!lf) {
            buf_consume(in, n);
            return false;
        }
        s->discard_line = false;
        *line = p;
        *len = 0;
        *too_long = true;
        *consumed = (size_t)(lf - p) + 1;
        return true;
    }
    if (!lf) {
        if (n > max + 2) { /* can't be a valid line any more: start discarding */
            s->discard_line = true;
            buf_consume(in, n);
        }
        return false;
    }
    size_t l = (size_t)(lf - p);
    *consumed = l + 1;
    while (l > 0 && (p[l - 1] == '\r' || p[l - 1] == '\n')) l--;
    *line = p;
    *len = l;
    *too_long = l > max;
    return true;
}

/* error_limit: after the reply that reached it, 421 and close at once. */
static void session_check_error_limit(struct session *s)
{
    if (s->opt->error_limit && s->errors >= s->opt->error_limit && s->state != SESSION_CLOSING) {
        session_replyf(s, "421 4.7.0 %s Error: too many errors", s->opt->hostname);
        session_close(s, "error_limit reached");
    }
}

void session_await_line(struct session *s,
                        void (*deliver)(struct session *s, const char *line, size_t len,
                                        bool too_long))
{
    s->line_wait.wait.what = "the client's next line";
    s->line_wait.wait.cancel = NULL; /* nothing to stop: the pump just stops delivering */
    s->line_wait.deliver = deliver;
}

/* Where every hook of this session finishes (the hook layer calls it before
 * the result is read): the C mirrors are re-read from the Lua tables. */
static bool session_sync_hook(void *owner, lua_State *co) { return lsession_sync(owner, co); }

/* A wake-up resumed this session's hook (from a timer, a line, a socket):
 * go on with what the client sent meanwhile, and send the replies. */
static void session_after_wake(void *owner)
{
    struct session *s = owner;
    if (s->state == SESSION_CLOSING) {
        conn_flush(s->conn);
        return;
    }
    session_pump(s);
}

void session_pump(struct session *s)
{
    if (s->pumping) return;
    s->pumping = true;
    struct buf *in = &s->conn->in;
    while (s->state != SESSION_CLOSING && s->state != SESSION_TLS_HANDSHAKE) {
        if (auth_holding(s)) break; /* an AUTH penalty: input waits (auth.c) */
        if (hook_active(&s->hook)) {
            /* A suspended hook: input waits, unless the hook waits for it. */
            if (s->hook.wait != &s->line_wait.wait) break;
            const char *line;
            size_t len, consumed;
            bool too_long;
            if (!session_next_line(s, AUTH_LINE_MAX, &line, &len, &too_long, &consumed)) break;
            /* The line is used in place and consumed afterwards: nothing
             * reads into `in` while the pump runs. */
            session_touch(s);
            s->line_wait.deliver(s, line, len, too_long);
            buf_consume(in, consumed);
            session_check_error_limit(s);
            continue;
        }
        if (s->state == SESSION_DATA) {
            if (!data_feed(s->data, in)) {
                session_touch(s);
                break;
            }
            session_data_finished(s);
            session_check_error_limit(s);
            continue;
        }
        if (s->shutting_down) {
            session_replyf(s, "421 4.3.2 %s Error: server shutting down, try again later",
                           s->opt->hostname);
            session_close(s, "server stopping");
            break;
        }
        /* A client that doesn't read its replies gets no more of them: send
         * what the socket takes now, and pause only if it stays full (the
         * conn calls on_input again once the output drains). */
        if (buf_len(&s->conn->out) > SESSION_OUTPUT_HWM) {
            conn_flush(s->conn);
            if (buf_len(&s->conn->out) > SESSION_OUTPUT_HWM / 2) {
                s->conn->out_resume = SESSION_OUTPUT_HWM / 2;
                break;
            }
        }
        const char *line;
        size_t len, consumed;
        bool too_long;
        if (!session_next_line(s, AUTH_LINE_MAX, &line, &len, &too_long, &consumed)) {
            if ((buf_len(in) > 0 || s->discard_line) && !s->line_started) {
                s->line_started = ev_now(s->host->loop);
                session_replan_timer(s);
            }
            break;
        }
        s->line_started = 0;
        if (too_long) {
            buf_consume(in, consumed);
            session_reply(s, "500 Command line too long");
            session_check_error_limit(s);
            continue;
        }
        session_command(s, line, len);
        buf_consume(in, consumed);
        session_check_error_limit(s);
    }
    s->pumping = false;
    conn_input_consumed(s->conn);
    conn_flush(s->conn);
}

/* handle_PROXY returned: anything truthy lets the session go on; nothing,
 * MISSING (no hook, as in aiosmtpd), false or an error closes it silently. */
static void proxy_hook_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    bool accept = ok && nres >= 1 && lua_toboolean(co, 1) && !lbind_is_missing(co, 1);
    if (!ok) {
        session_log_hook_error(s, co, "handle_PROXY", NULL);
    }
    if (!accept) {
        session_close(s, "rejected by handle_PROXY");
        return;
    }
    session_begin_smtp(s, s->pending_implicit_tls);
}

/* Reads the PROXY header (design: before the greeting). */
static void session_read_proxy(struct session *s)
{
    struct buf *in = &s->conn->in;
    struct proxy_info pi;
    enum proxy_status st = proxy_parse((const uint8_t *)buf_head(in), buf_len(in), &pi);
    if (st == PROXY_NEED_MORE) {
        if (s->conn->eof || s->conn->failed) session_close(s, "closed before the PROXY header");
        return;
    }
    if (st == PROXY_INVALID) {
        log_msg(LOG_WARN, s->sid, "invalid PROXY header: %s", pi.error);
        session_close(s, "invalid PROXY header");
        return;
    }
    if (pi.has_addr && (pi.family == PROXY_AF_INET || pi.family == PROXY_AF_INET6)) {
        free(s->proxy_client);
        s->proxy_client = strdup(pi.src_addr); /* NULL if out of memory: the TCP peer counts */
    }
    if (pi.has_addr) {
        char esc[512]; /* a UNIX path is raw bytes from the proxy */
        log_msg(LOG_INFO, s->sid, "PROXY v%d %s from %s port %d", pi.version,
                proxy_family_name(pi.family),
                log_escape(pi.src_addr, pi.src_addr_len, esc, sizeof esc), pi.src_port);
    }
    else log_msg(LOG_INFO, s->sid, "PROXY v%d %s", pi.version, pi.local ? "LOCAL" : "UNKNOWN");
    lua_State *co = NULL;
    if (policy_has_hook(s->policy, HOOK_PROXY)) {
        co = session_hook_begin(s, HOOK_PROXY);
        lsession_set_proxy_data(s, co, &pi, buf_head(in), pi.header_len);
    } else {
        lsession_set_proxy_data(s, s->policy->vm.L, &pi, buf_head(in), pi.header_len);
        lua_pop(s->policy->vm.L, 1);
    }
    buf_consume(in, pi.header_len); /* pointers in pi are dead from here */
    if (!co) {
        log_msg(LOG_WARN, s->sid, "no handle_PROXY hook: closing (define one returning true)");
        session_close(s, "no handle_PROXY to accept the connection");
        return;
    }
    s->hook_after = NULL;
    hook_run(&s->hook, 4, proxy_hook_done, s, 0); /* may not wait */
}

static void session_on_input(struct conn *c, void *owner)
{
    struct session *s = owner;
    if (s->state == SESSION_CLOSING) return;
    if (s->state == SESSION_PROXY) {
        session_read_proxy(s);
        if (s->state == SESSION_PROXY || s->state == SESSION_CLOSING) return;
        if (s->state == SESSION_TLS_HANDSHAKE) return;
    }
    session_pump(s);
    if (s->state == SESSION_CLOSING) return;
    if (c->failed || c->eof) {
        if (c->eof && s->state == SESSION_DATA)
            log_msg(LOG_INFO, s->sid, "client closed the connection during DATA");
        session_close(s, c->failed ? "connection error" : "client closed the connection");
    }
}
