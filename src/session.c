/* session.c — the SMTP state machine for one connection, following
 * aiosmtpd 1.4's replies and order of checks (auth-api.md 7) with the
 * documented fixes. Each verb is handled as check → policy (a Lua hook,
 * which may suspend) → proceed; the "proceed" half is a continuation called
 * when the hook finishes. Input is consumed only between commands, so a
 * suspended hook holds back pipelined commands. The session is freed only
 * from a safe point: a close is scheduled, and the conn's on_closed does
 * the freeing. Must not include mbedTLS. */
#include "session.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "addr.h"
#include "auth.h"
#include "conn.h"
#include "log.h"
#include "lua_bind.h"
#include "lua_session.h"
#include "policy.h"
#include "server.h"
#include "smtp_limits.h"
#include "status_line.h"
#include "tls.h"
#include "proxy.h"

/* The commands aiosmtpd implements (its smtp_* methods); the index is also
 * the slot of the command's command_call_limit budget. */
enum command {
    CMD_AUTH, CMD_DATA, CMD_EHLO, CMD_EXPN, CMD_HELO, CMD_HELP, CMD_MAIL,
    CMD_NOOP, CMD_QUIT, CMD_RCPT, CMD_RSET, CMD_STARTTLS, CMD_VRFY, CMD_COUNT
};

static const char *const command_names[CMD_COUNT] = {
    "AUTH", "DATA", "EHLO", "EXPN", "HELO", "HELP", "MAIL",
    "NOOP", "QUIT", "RCPT", "RSET", "STARTTLS", "VRFY",
};

/* HELP texts (aiosmtpd's @syntax decorators); NULL: not listed by HELP. */
static const char *const command_syntax[CMD_COUNT] = {
    "AUTH <mechanism>", "DATA", "EHLO hostname", NULL, "HELO hostname", "HELP [command]",
    "MAIL FROM: <address>", "NOOP [ignored]", "QUIT", "RCPT TO: <address>", "RSET",
    "STARTTLS", "VRFY <address>",
};

static const char *const reply_hook_error = "451 4.3.0 Error: local error in processing";
static const char *const reply_auth_hook_error = "454 4.7.0 Temporary authentication failure";

/* What a status-returning hook produced. */
enum hook_outcome { HOOK_MISSING, HOOK_STATUS, HOOK_FAILED };

struct hook_result {
    enum hook_outcome outcome;
    const char *status; /* HOOK_STATUS: valid while the continuation runs */
    size_t len;
};

typedef void (*command_after_fn)(struct session *s, const struct hook_result *r);

static void session_on_input(struct conn *c, void *owner);
static void session_on_closed(struct conn *c, void *owner);
static void session_on_idle(struct ev_loop *loop, ev_timer *w, int revents);
static void session_after_wake(void *owner);

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

void session_add_secret(struct session *s, const char *p, size_t n)
{
    /* Scrubbing works on C strings: a NUL would cut the secret short (an
     * empty one would match everywhere), so callers pass NUL-free pieces.
     * Tiny strings are skipped: scrubbing them would mangle every message. */
    if (n < 3 || memchr(p, '\0', n)) return;
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
    for (int i = 0; i < SESSION_SECRETS_MAX; i++) {
        if (s->secrets[i]) {
            memset(s->secrets[i], 0, strlen(s->secrets[i]));
            free(s->secrets[i]);
            s->secrets[i] = NULL;
        }
    }
}

void session_scrub(struct session *s, char *msg)
{
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

/* Copies what a continuation needs; false (and a 451) if memory ran out. */
static bool session_pending_keep(struct session *s, const char *arg, size_t arg_len,
                                 const char *addr, size_t addr_len, const char *opts,
                                 size_t opts_len)
{
    buf_clear(&s->pending);
    if (!buf_reserve(&s->pending, arg_len + addr_len + opts_len + 1)) {
        session_reply(s, reply_hook_error);
        return false;
    }
    buf_append(&s->pending, arg, arg_len);
    buf_append(&s->pending, addr, addr_len);
    buf_append(&s->pending, opts, opts_len);
    s->pending_arg_len = arg_len;
    s->pending_addr_len = addr_len;
    s->pending_opts_len = opts_len;
    return true;
}

static const char *pending_arg(struct session *s) { return buf_head(&s->pending); }
static const char *pending_addr(struct session *s) { return buf_head(&s->pending) + s->pending_arg_len; }
static const char *pending_opts(struct session *s)
{
    return buf_head(&s->pending) + s->pending_arg_len + s->pending_addr_len;
}

/* The command proceeded: nothing of it is needed any more. */
static void session_pending_release(struct session *s)
{
    buf_free(&s->pending);
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

static void session_replan_timer(struct session *s);

/* After the connection (and a PROXY header, if expected): implicit TLS or
 * the greeting. */
static void session_begin_smtp(struct session *s, struct tls_config *implicit_tls)
{
    if (implicit_tls) {
        /* RFC 8314: nothing in clear text; the greeting comes after the handshake. */
        s->state = SESSION_TLS_HANDSHAKE;
        if (!tls_start_implicit(s->conn, implicit_tls, handshake_timeout(s), session_on_tls_done))
            session_close(s, "cannot start TLS");
        return;
    }
    s->state = SESSION_COMMAND;
    session_greet(s);
}

struct session *session_new(struct server *srv, int fd, const char *peer_host, int peer_port,
                            struct tls_config *implicit_tls)
{
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd); /* as conn_new does on failure: the caller owns nothing now */
        return NULL;
    }
    static const struct conn_events events = {session_on_input, session_on_closed};
    s->conn = conn_new(srv->loop, fd, &events, s);
    if (!s->conn) {
        free(s);
        return NULL;
    }
    s->id = ++srv->next_session_id;
    snprintf(s->sid, sizeof s->sid, "s%lu", s->id);
    s->srv = srv;
    s->policy = srv->policy;
    policy_hold(s->policy);
    s->opt = &s->policy->opt;
    snprintf(s->peer_host, sizeof s->peer_host, "%s", peer_host);
    s->peer_port = peer_port;
    s->state = SESSION_COMMAND;
    s->bogus_budget = SMTP_BOGUS_LIMIT;
    for (int i = 0; i < CMD_COUNT; i++)
        s->call_budget[i] = options_call_limit(s->opt, command_names[i]);
    hook_init(&s->hook, srv->loop, &s->policy->vm, s->sid, s->opt->hook_timeout, session_after_wake);
    s->server_ref = s->session_ref = s->envelope_ref = LUA_NOREF;
    lsession_open(s);

    ev_init(&s->idle, session_on_idle);
    s->idle.data = s;
    s->last_activity = ev_now(srv->loop);
    s->idle.repeat = s->opt->timeout;
    ev_timer_again(srv->loop, &s->idle);

    server_add_session(srv, s);
    log_msg(LOG_INFO, s->sid, "connection from %s port %d%s (policy generation %u)", peer_host,
            peer_port, implicit_tls ? " over implicit TLS" : "", s->policy->generation);
    long from_ip = server_ip_acquire(srv, peer_host);
    s->ip_counted = from_ip > 0;
    const struct options *o = s->opt;
    if (o->max_connections && srv->n_sessions > (size_t)o->max_connections) {
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
        s->state = SESSION_PROXY;
        s->pending_implicit_tls = implicit_tls;
        s->proxy_deadline = ev_now(srv->loop) + o->proxy_protocol_timeout;
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
    s->state = SESSION_CLOSING;
    /* A suspended hook will never see its event now. */
    if (hook_active(&s->hook))
        log_msg(LOG_INFO, s->sid, "abandoning suspended hook %s", s->hook.name);
    hook_abandon(&s->hook);
    ev_timer_stop(s->srv->loop, &s->idle);
    conn_close(s->conn);
}

static void session_free(struct session *s)
{
    hook_abandon(&s->hook);
    lsession_close(s);
    auth_forget(s);
    data_end(&s->data);
    buf_free(&s->pending);
    ev_timer_stop(s->srv->loop, &s->idle);
    server_remove_session(s->srv, s);
    if (s->ip_counted) server_ip_release(s->srv, s->peer_host);
    policy_release(s->policy);
    conn_free(s->conn);
    free(s);
}

static void session_on_closed(struct conn *c, void *owner)
{
    struct session *s = owner;
    if (s->state != SESSION_CLOSING) {
        s->state = SESSION_CLOSING;
        s->close_reason = hook_active(&s->hook) ? "connection lost; abandoned a suspended hook"
                                                 : "connection lost";
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
            size_t got = s->data.num_bytes - s->data_window_bytes;
            if ((double)got / elapsed < (double)o->data_rate_min) {
                session_replyf(s, "421 4.4.2 %s Error: timeout exceeded", o->hostname);
                session_close(s, "DATA slower than data_rate_min");
                return;
            }
            s->data_window_start = now;
            s->data_window_bytes = s->data.num_bytes;
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

static void session_touch(struct session *s) { s->last_activity = ev_now(s->srv->loop); }

/* Lets the idle timer recompute its next deadline from the loop (a command
 * line or a DATA transfer began). */
static void session_replan_timer(struct session *s)
{
    if (s->state == SESSION_CLOSING) return;
    s->idle.repeat = 0.001;
    ev_timer_again(s->srv->loop, &s->idle);
}

void session_shutdown(struct session *s)
{
    s->shutting_down = true;
    if (s->state == SESSION_COMMAND && !hook_active(&s->hook)) {
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

struct exception_call {
    struct session *s;
    bool replied;
};

/* handle_exception finished: a valid status line is the reply. */
static void exception_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct exception_call *call = owner;
    if (!ok) {
        char msg[2048], esc[4096];
        const char *tb = lua_tostring(co, -1);
        snprintf(msg, sizeof msg, "%s", tb ? tb : "(no message)");
        session_scrub(call->s, msg);
        log_msg(LOG_ERROR, call->s->sid, "hook handle_exception failed: %s",
                log_escape(msg, strlen(msg), esc, sizeof esc));
        return;
    }
    size_t n = 0;
    const char *status = nres >= 1 && lua_type(co, 1) == LUA_TSTRING ? lua_tolstring(co, 1, &n) : NULL;
    if (status && status_line_valid(status, n)) {
        session_reply_len(call->s, status, n);
        call->replied = true;
    }
}

/* Logs a failed hook (scrubbing secrets) and sends the reply for it:
 * handle_exception's status if it gives a valid one, else 451 (454 in AUTH). */
void session_reply_hook_error(struct session *s, lua_State *co, bool in_auth)
{
    char msg[2048], esc[4096];
    const char *tb = lua_tostring(co, -1);
    snprintf(msg, sizeof msg, "%s", tb ? tb : "(no message)");
    session_scrub(s, msg);
    /* Error text often quotes client bytes: escaped, it stays one line. */
    log_msg(LOG_ERROR, s->sid, "hook %s failed: %s", s->hook.name ? s->hook.name : "?",
            log_escape(msg, strlen(msg), esc, sizeof esc));

    const char *fallback = in_auth ? reply_auth_hook_error : reply_hook_error;
    if (!policy_has_hook(s->policy, HOOK_EXCEPTION)) {
        session_reply(s, fallback);
        return;
    }
    /* handle_exception(err) picks the status line. It runs through the hook
     * runner like every hook (memory limit, the watchdog's "running" slot)
     * on a hook state of its own, since the failed hook's may still be in
     * use; it may not wait, so a yield fails it. */
    struct exception_call call = {s, false};
    struct hook_state eh;
    hook_init(&eh, s->srv->loop, &s->policy->vm, s->sid, 0, NULL);
    lua_State *eco = hook_begin(&eh, s->policy->hook_ref[HOOK_EXCEPTION], "handle_exception");
    lua_pushvalue(co, -2); /* the error value */
    lua_xmove(co, eco, 1);
    hook_run(&eh, 1, exception_done, &call, 0); /* may not wait: always finishes */
    if (!call.replied) {
        log_msg(LOG_ERROR, s->sid, "handle_exception did not return a status line");
        session_reply(s, fallback);
    }
}

static void session_hook_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    command_after_fn after = (command_after_fn)s->hook_after;
    struct hook_result r = {HOOK_FAILED, NULL, 0};
    /* A failed hook's own error is what gets reported, not the tables'. */
    if (!ok || !lsession_sync(s, co)) {
        if (!ok) lsession_sync(s, NULL);
        session_reply_hook_error(s, co, false);
        after(s, &r);
        return;
    }
    if (nres >= 1 && lua_smtpd_is_missing(co, 1)) r.outcome = HOOK_MISSING;
    else if (nres >= 1 && lua_type(co, 1) == LUA_TSTRING) {
        r.status = lua_tolstring(co, 1, &r.len);
        if (status_line_valid(r.status, r.len)) r.outcome = HOOK_STATUS;
    }
    if (r.outcome == HOOK_FAILED) {
        lua_settop(co, nres >= 1 ? 1 : 0);
        const char *what = nres >= 1 ? luaL_typename(co, 1) : "nothing";
        if (lua_type(co, 1) == LUA_TSTRING) what = "a string that is not one status line";
        /* Returning nothing after storing the message is the easy mistake:
         * the 451 makes the client send it again, so say what follows. */
        bool data = s->hook.name && !strcmp(s->hook.name, "handle_DATA");
        lua_pushfstring(co, "%s returned %s; expected a status line or smtpd.MISSING%s",
                        s->hook.name, what,
                        data ? " (the client gets 451 and will send the message again: "
                               "return \"250 OK\" once it is stored)"
                             : "");
        lua_pushvalue(co, -1);
        session_reply_hook_error(s, co, false);
    }
    after(s, &r);
}

/* Pushes the hook function and (server, session, envelope) on a coroutine;
 * the caller pushes its extra arguments and calls session_hook_run. */
static lua_State *session_hook_begin(struct session *s, enum hook_id h)
{
    lua_State *co = hook_begin(&s->hook, s->policy->hook_ref[h], policy_hook_names[h]);
    lsession_push_args(s, co);
    return co;
}

static void session_hook_run(struct session *s, int nextra, command_after_fn after)
{
    s->hook_after = (void *)after;
    hook_run(&s->hook, 3 + nextra, session_hook_done, s, HOOK_MAY_WAIT);
}

/* Runs hook h with no extra arguments, or the default when undefined. */
static void session_hook0(struct session *s, enum hook_id h, command_after_fn after)
{
    if (!policy_has_hook(s->policy, h)) {
        struct hook_result r = {HOOK_MISSING, NULL, 0};
        after(s, &r);
        return;
    }
    session_hook_begin(s, h);
    session_hook_run(s, 0, after);
}

/* Sends the hook's status, or `fallback` when it asked for the default. */
static void reply_status_or(struct session *s, const struct hook_result *r, const char *fallback)
{
    if (r->outcome == HOOK_STATUS) session_reply_len(s, r->status, r->len);
    else if (r->outcome == HOOK_MISSING && fallback) session_reply(s, fallback);
}

/* ---------------------------------------------------------------- checks */

static bool arg_given(const char *arg, size_t len) { return arg && len > 0; }

/* aiosmtpd's check_helo_needed. */
static bool need_helo(struct session *s, const char *helo)
{
    if (s->has_host_name) return false;
    session_replyf(s, "503 Error: send %s first", helo);
    return true;
}

/* aiosmtpd's check_auth_needed. */
static bool need_auth(struct session *s, const char *cmd)
{
    if (!s->opt->auth_required || s->authenticated) return false;
    log_msg(LOG_INFO, s->sid, "%s: Authentication required", cmd);
    session_reply(s, "530 5.7.0 Authentication required");
    return true;
}

/* ---------------------------------------------------------------- HELO, EHLO */

static void helo_proceed(struct session *s, const struct hook_result *r, const char *arg,
                         size_t len)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_set_string(s, LS_SESSION, "host_name", arg, len);
        s->has_host_name = len > 0;
        session_replyf(s, "250 %s", s->opt->hostname);
    } else if (r->outcome == HOOK_STATUS) session_reply_len(s, r->status, r->len);
}

static void helo_after(struct session *s, const struct hook_result *r)
{
    helo_proceed(s, r, pending_arg(s), s->pending_arg_len);
    session_pending_release(s);
}

static void cmd_helo(struct session *s, const char *arg, size_t len)
{
    if (!arg_given(arg, len)) {
        session_reply(s, "501 Syntax: HELO hostname");
        return;
    }
    session_reset_envelope(s);
    s->extended_smtp = false;
    lsession_set_bool(s, LS_SESSION, "extended_smtp", false);
    if (!policy_has_hook(s->policy, HOOK_HELO)) {
        struct hook_result r = {HOOK_MISSING, NULL, 0};
        helo_proceed(s, &r, arg, len);
        return;
    }
    if (!session_pending_keep(s, arg, len, NULL, 0, NULL, 0)) return;
    lua_State *co = session_hook_begin(s, HOOK_HELO);
    lua_pushlstring(co, arg, len);
    session_hook_run(s, 1, helo_after);
}

/* The EHLO lines before the hook sees them (auth-api.md 4.1). */
static size_t ehlo_lines(struct session *s, char lines[][96])
{
    size_t n = 0;
    const struct options *o = s->opt;
    snprintf(lines[n++], 96, "250-%s", o->hostname);
    if (o->data_size_limit) snprintf(lines[n++], 96, "250-SIZE %ld", o->data_size_limit);
    snprintf(lines[n++], 96, "250-8BITMIME");
    if (o->enable_smtputf8) snprintf(lines[n++], 96, "250-SMTPUTF8");
    snprintf(lines[n++], 96, "250-PIPELINING");
    if (s->srv->tls && !s->tls_active) snprintf(lines[n++], 96, "250-STARTTLS");
    return n;
}

static bool auth_offered(struct session *s)
{
    return (!s->opt->auth_require_tls || s->tls_active) && s->policy->n_mechs > 0;
}

static void ehlo_push_auth_line(struct session *s, luaL_Buffer *b)
{
    luaL_addstring(b, "250-AUTH");
    for (size_t i = 0; i < s->policy->n_mechs; i++) {
        luaL_addchar(b, ' ');
        luaL_addstring(b, s->policy->mechs[i].name);
    }
}

static void ehlo_reply_default(struct session *s)
{
    char lines[8][96];
    size_t n = ehlo_lines(s, lines);
    for (size_t i = 0; i < n; i++) session_reply(s, lines[i]);
    if (auth_offered(s)) {
        lua_State *L = s->policy->vm.L;
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        ehlo_push_auth_line(s, &b);
        luaL_pushresult(&b);
        size_t alen;
        const char *auth = lua_tolstring(L, -1, &alen);
        session_reply_len(s, auth, alen);
        lua_pop(L, 1);
    }
    session_reply(s, "250 HELP");
}

static void ehlo_proceed(struct session *s, bool ok, lua_State *co, int nres);

static void ehlo_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    ehlo_proceed(s, ok, co, nres);
    session_pending_release(s);
}

static void ehlo_proceed(struct session *s, bool ok, lua_State *co, int nres)
{
    if (!ok || !lsession_sync(s, co)) {
        if (!ok) lsession_sync(s, NULL);
        session_reply_hook_error(s, co, false);
        return;
    }
    /* smtpd.MISSING: the default EHLO, as if there were no hook. */
    if (nres >= 1 && lua_smtpd_is_missing(co, 1)) {
        lsession_set_string(s, LS_SESSION, "host_name", pending_arg(s), s->pending_arg_len);
        s->has_host_name = true;
        ehlo_reply_default(s);
        return;
    }
    /* The hook returns the list of lines replacing the default ones. */
    bool valid = nres >= 1 && lua_type(co, 1) == LUA_TTABLE && lua_objlen(co, 1) > 0;
    for (int i = 1; valid && i <= (int)lua_objlen(co, 1); i++) {
        lua_rawgeti(co, 1, i);
        size_t n;
        const char *line = lua_tolstring(co, -1, &n);
        valid = lua_type(co, -1) == LUA_TSTRING && status_line_valid(line, n);
        lua_pop(co, 1);
    }
    if (!valid) {
        lua_pushfstring(co, "handle_EHLO returned %s; expected a list of reply lines",
                        nres >= 1 ? luaL_typename(co, 1) : "nothing");
        lua_pushvalue(co, -1);
        session_reply_hook_error(s, co, false);
        return;
    }
    for (int i = 1; i <= (int)lua_objlen(co, 1); i++) {
        lua_rawgeti(co, 1, i);
        size_t n;
        const char *line = lua_tolstring(co, -1, &n);
        session_reply_len(s, line, n);
        lua_pop(co, 1);
    }
}

static void cmd_ehlo(struct session *s, const char *arg, size_t len)
{
    if (!arg_given(arg, len)) {
        session_reply(s, "501 Syntax: EHLO hostname");
        return;
    }
    char lines[8][96];
    size_t n = ehlo_lines(s, lines);
    session_reset_envelope(s);
    s->extended_smtp = true;
    lsession_set_bool(s, LS_SESSION, "extended_smtp", true);
    if (!policy_has_hook(s->policy, HOOK_EHLO)) {
        lsession_set_string(s, LS_SESSION, "host_name", arg, len);
        s->has_host_name = true;
        ehlo_reply_default(s);
        return;
    }
    if (!session_pending_keep(s, arg, len, NULL, 0, NULL, 0)) return;
    lua_State *co = session_hook_begin(s, HOOK_EHLO);
    lua_pushlstring(co, arg, len);
    lua_createtable(co, (int)n + 2, 0);
    int i = 1;
    for (size_t k = 0; k < n; k++) {
        lua_pushstring(co, lines[k]);
        lua_rawseti(co, -2, i++);
    }
    if (auth_offered(s)) {
        luaL_Buffer b;
        luaL_buffinit(co, &b);
        ehlo_push_auth_line(s, &b);
        luaL_pushresult(&b);
        lua_rawseti(co, -2, i++);
    }
    lua_pushliteral(co, "250 HELP");
    lua_rawseti(co, -2, i++);
    s->hook_after = NULL;
    hook_run(&s->hook, 5, ehlo_done, s, HOOK_MAY_WAIT);
}

/* ---------------------------------------------------------------- simple verbs */

static void noop_after(struct session *s, const struct hook_result *r)
{
    reply_status_or(s, r, "250 OK");
}

static void cmd_noop(struct session *s, const char *arg, size_t len)
{
    if (!policy_has_hook(s->policy, HOOK_NOOP)) {
        session_reply(s, "250 OK");
        return;
    }
    lua_State *co = session_hook_begin(s, HOOK_NOOP);
    if (arg) lua_pushlstring(co, arg, len);
    else lua_pushnil(co);
    session_hook_run(s, 1, noop_after);
}

static void quit_after(struct session *s, const struct hook_result *r)
{
    reply_status_or(s, r, "221 Bye");
    session_close(s, "QUIT");
}

static void cmd_quit(struct session *s, const char *arg, size_t len)
{
    if (arg_given(arg, len)) {
        session_reply(s, "501 Syntax: QUIT");
        return;
    }
    session_hook0(s, HOOK_QUIT, quit_after);
}

static void rset_after(struct session *s, const struct hook_result *r)
{
    reply_status_or(s, r, "250 OK");
}

static void cmd_rset(struct session *s, const char *arg, size_t len)
{
    if (arg_given(arg, len)) {
        session_reply(s, "501 Syntax: RSET");
        return;
    }
    session_reset_envelope(s);
    session_hook0(s, HOOK_RSET, rset_after);
}

static void cmd_expn(struct session *s, const char *arg, size_t len)
{
    session_reply(s, "502 EXPN not implemented");
}

static bool syntax_available(struct session *s, int cmd)
{
    if (!command_syntax[cmd]) return false;
    if (cmd == CMD_STARTTLS) return s->srv->tls != NULL;
    return true;
}

static void cmd_help(struct session *s, const char *arg, size_t len)
{
    if (need_auth(s, "HELP")) return;
    int code = 250;
    if (arg_given(arg, len)) {
        for (int i = 0; i < CMD_COUNT; i++) {
            if (strlen(command_names[i]) == len && !strncasecmp(command_names[i], arg, len) &&
                syntax_available(s, i)) {
                bool ext = s->extended_smtp && (i == CMD_MAIL || i == CMD_RCPT);
                session_replyf(s, "250 Syntax: %s%s", command_syntax[i],
                               ext ? " [SP <mail-parameters>]" : "");
                return;
            }
        }
        code = 501;
    }
    char list[256] = "";
    for (int i = 0; i < CMD_COUNT; i++) {
        if (!syntax_available(s, i)) continue;
        if (list[0]) strcat(list, " ");
        strcat(list, command_names[i]);
    }
    session_replyf(s, "%d Supported commands: %s", code, list);
}

static void vrfy_after(struct session *s, const struct hook_result *r)
{
    reply_status_or(s, r, "252 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_vrfy(struct session *s, const char *arg, size_t len)
{
    if (need_auth(s, "VRFY")) return;
    if (!arg_given(arg, len)) {
        session_reply(s, "501 Syntax: VRFY <address>");
        return;
    }
    char addr[SMTP_ADDR_MAX];
    struct addr_result a = {addr, 0, NULL, 0};
    enum addr_status st = addr_parse(arg, len, &a, sizeof addr);
    if (st == ADDR_MALFORMED) {
        session_replyf(s, "502 Could not VRFY %.*s", (int)len, arg);
        return;
    }
    if (!policy_has_hook(s->policy, HOOK_VRFY)) {
        session_reply(s, "252 Cannot VRFY user, but will accept message and attempt delivery");
        return;
    }
    lua_State *co = session_hook_begin(s, HOOK_VRFY);
    lua_pushlstring(co, st == ADDR_OK ? a.addr : "", st == ADDR_OK ? a.addr_len : 0);
    session_hook_run(s, 1, vrfy_after);
}

static void cmd_starttls(struct session *s, const char *arg, size_t len)
{
    if (arg_given(arg, len)) {
        session_reply(s, "501 Syntax: STARTTLS");
        return;
    }
    if (s->tls_active) {
        session_reply(s, "554 5.5.1 Error: TLS already active"); /* fix */
        return;
    }
    if (!s->srv->tls) {
        session_reply(s, "454 TLS not available");
        return;
    }
    session_reply(s, "220 Ready to start TLS");
    /* tls_start flushes that reply in clear text, then discards every byte
     * the client sent after the STARTTLS line (CVE-2011-0411, CVE-2024-34083):
     * the pump must not look at this line or the input again. */
    s->state = SESSION_TLS_HANDSHAKE;
    if (!tls_start(s->conn, s->srv->tls, handshake_timeout(s), session_on_tls_done))
        session_close(s, "cannot start TLS");
}

/* handle_STARTTLS returned: anything but true refuses every later command
 * but QUIT (aiosmtpd's _tls_handshake_okay). */
static void starttls_hook_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    if (!ok) lsession_sync(s, NULL);
    else ok = lsession_sync(s, co);
    if (!ok) {
        char msg[1024], esc[2048];
        const char *e = lua_tostring(co, -1);
        snprintf(msg, sizeof msg, "%s", e ? e : "?");
        session_scrub(s, msg);
        log_msg(LOG_ERROR, s->sid, "hook handle_STARTTLS failed (session refused): %s",
                log_escape(msg, strlen(msg), esc, sizeof esc));
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
    s->state = SESSION_COMMAND;
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

/* ---------------------------------------------------------------- MAIL, RCPT */

/* aiosmtpd's _strip_command_keyword: "FROM:" / "TO:" case-insensitively,
 * then strip. Returns false when the keyword is missing. */
static bool strip_keyword(const char *kw, const char **arg, size_t *len)
{
    size_t k = strlen(kw);
    if (!*arg || *len < k || strncasecmp(*arg, kw, k)) return false;
    const char *p = *arg + k;
    size_t n = *len - k;
    while (n && isspace((unsigned char)*p)) p++, n--;
    while (n && isspace((unsigned char)p[n - 1])) n--;
    *arg = p;
    *len = n;
    return true;
}

/* xtext (RFC 3461 4) or "<>", for MAIL's AUTH= parameter (RFC 4954 5). */
static bool xtext_valid(const char *v, size_t n)
{
    if (n == 2 && !memcmp(v, "<>", 2)) return true;
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '+') {
            if (i + 2 >= n || !isxdigit((unsigned char)v[i + 1]) ||
                !isxdigit((unsigned char)v[i + 2]))
                return false;
            i += 2;
        } else if (c < 33 || c > 126 || c == '=') return false;
    }
    return true;
}

/* One "KEY[=VALUE]" parameter, upper-cased already. */
struct mail_param {
    const char *key, *value;
    size_t key_len, value_len;
    bool has_value;
};

/* aiosmtpd's _getparams: splits the upper-cased parameter words; every key
 * must be alphanumeric and "KEY=" without a value is invalid. Later
 * duplicates win, as in its dict. */
static int parse_params(const char *p, size_t n, struct mail_param *out, int max)
{
    int count = 0;
    size_t k = 0;
    while (k < n) {
        while (k < n && isspace((unsigned char)p[k])) k++;
        if (k >= n) break;
        size_t start = k;
        while (k < n && !isspace((unsigned char)p[k])) k++;
        const char *w = p + start;
        size_t wl = k - start;
        const char *eq = memchr(w, '=', wl);
        struct mail_param prm = {w, NULL, eq ? (size_t)(eq - w) : wl, 0, eq != NULL};
        if (eq) {
            prm.value = eq + 1;
            prm.value_len = wl - prm.key_len - 1;
            if (prm.value_len == 0) return -1;
        }
        if (prm.key_len == 0) return -1;
        for (size_t i = 0; i < prm.key_len; i++)
            if (!isalnum((unsigned char)w[i])) return -1;
        int slot = count;
        for (int i = 0; i < count; i++)
            if (out[i].key_len == prm.key_len && !memcmp(out[i].key, prm.key, prm.key_len))
                slot = i;
        if (slot == count) {
            if (count == max) return -1;
            count++;
        }
        out[slot] = prm;
    }
    return count;
}

static struct mail_param *take_param(struct mail_param *ps, int *n, const char *key)
{
    for (int i = 0; i < *n; i++) {
        if (ps[i].key_len == strlen(key) && !memcmp(ps[i].key, key, ps[i].key_len)) {
            static struct mail_param taken;
            taken = ps[i];
            ps[i] = ps[--*n];
            return &taken;
        }
    }
    return NULL;
}

#define MAX_PARAMS 16

static void mail_proceed(struct session *s, const struct hook_result *r, const char *addr,
                         size_t addr_len, const char *opts, size_t opts_len)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_set_string(s, LS_ENVELOPE, "mail_from", addr, addr_len);
        lsession_append_words(s, LS_ENVELOPE, "mail_options", opts, opts_len);
        s->has_mail_from = true;
        session_reply(s, "250 OK");
    } else if (r->outcome == HOOK_STATUS) session_reply_len(s, r->status, r->len);
    if (r->outcome != HOOK_FAILED) {
        char esc[600];
        if (log_enabled(LOG_DEBUG))
            log_msg(LOG_DEBUG, s->sid, "sender: %s", log_escape(addr, addr_len, esc, sizeof esc));
    }
}

static void mail_after(struct session *s, const struct hook_result *r)
{
    mail_proceed(s, r, pending_addr(s), s->pending_addr_len, pending_opts(s), s->pending_opts_len);
    session_pending_release(s);
}

/* The "FROM:<path> params" / "TO:<path> params" part that MAIL and RCPT
 * share, replying as aiosmtpd does when it is wrong. a->addr points at the
 * caller's buffer of cap bytes. */
static bool parse_path(struct session *s, const char *keyword, const char *arg, size_t len,
                       const char *syntaxerr, struct addr_result *a, size_t cap)
{
    if (!strip_keyword(keyword, &arg, &len)) {
        session_reply(s, syntaxerr);
        return false;
    }
    enum addr_status st = addr_parse(arg, len, a, cap);
    if (st == ADDR_MALFORMED) {
        session_reply(s, "553 5.1.3 Error: malformed address");
        return false;
    }
    if (st == ADDR_EMPTY || a->addr_len == 0) {
        session_reply(s, syntaxerr);
        return false;
    }
    bool has_params = false;
    for (size_t i = 0; i < a->rest_len; i++)
        if (!isspace((unsigned char)a->rest[i])) has_params = true;
    if (!s->extended_smtp && has_params) { /* parameters need EHLO */
        session_reply(s, syntaxerr);
        return false;
    }
    return true;
}

static void cmd_mail(struct session *s, const char *arg, size_t len)
{
    if (need_helo(s, "HELO")) return;
    if (need_auth(s, "MAIL")) return;
    const char *syntaxerr = s->extended_smtp
                                ? "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
                                : "501 Syntax: MAIL FROM: <address>";
    char addr[SMTP_ADDR_MAX];
    struct addr_result a = {addr, 0, NULL, 0};
    if (!parse_path(s, "FROM:", arg, len, syntaxerr, &a, sizeof addr)) return;
    if (s->has_mail_from) {
        session_reply(s, "503 Error: nested MAIL command");
        return;
    }
    /* aiosmtpd upper-cases the whole parameter string first. */
    char opts[AUTH_LINE_MAX + 1];
    for (size_t i = 0; i < a.rest_len; i++) opts[i] = (char)toupper((unsigned char)a.rest[i]);
    opts[a.rest_len] = '\0';
    struct mail_param ps[MAX_PARAMS];
    int np = parse_params(opts, a.rest_len, ps, MAX_PARAMS);
    const char *fail = NULL;
    struct mail_param *p;
    if (np < 0) fail = syntaxerr;
    if (!fail && (p = take_param(ps, &np, "BODY")) &&
        !(p->has_value && ((p->value_len == 4 && !memcmp(p->value, "7BIT", 4)) ||
                           (p->value_len == 8 && !memcmp(p->value, "8BITMIME", 8)))))
        fail = "501 Error: BODY can only be one of 7BIT, 8BITMIME";
    bool smtputf8 = false;
    if (!fail && (p = take_param(ps, &np, "SMTPUTF8"))) {
        if (p->has_value) fail = "501 Error: SMTPUTF8 takes no arguments";
        else if (!s->opt->enable_smtputf8) fail = "501 Error: SMTPUTF8 disabled";
        else smtputf8 = true;
    }
    if (!fail) lsession_set_bool(s, LS_ENVELOPE, "smtp_utf8", smtputf8);
    if (!fail && (p = take_param(ps, &np, "SIZE"))) {
        bool digits = p->has_value;
        for (size_t i = 0; digits && i < p->value_len; i++)
            digits = isdigit((unsigned char)p->value[i]);
        if (!digits) fail = syntaxerr;
        else if (s->opt->data_size_limit) {
            /* Compare without overflow: more digits than the limit has is larger. */
            char lim[32];
            int ll = snprintf(lim, sizeof lim, "%ld", s->opt->data_size_limit);
            const char *v = p->value;
            size_t vl = p->value_len;
            while (vl > 1 && *v == '0') v++, vl--;
            if (vl > (size_t)ll || (vl == (size_t)ll && memcmp(v, lim, vl) > 0))
                fail = "552 Error: message size exceeds fixed maximum message size";
        }
    }
    /* RFC 4954 5: AUTH=<xtext> or AUTH=<> on MAIL FROM (fix). */
    if (!fail && (p = take_param(ps, &np, "AUTH")) &&
        !(p->has_value && xtext_valid(p->value, p->value_len)))
        fail = syntaxerr;
    if (!fail && np > 0) fail = "555 MAIL FROM parameters not recognized or not implemented";
    if (fail) {
        session_reply(s, fail);
        return;
    }
    if (!policy_has_hook(s->policy, HOOK_MAIL)) {
        struct hook_result r = {HOOK_MISSING, NULL, 0};
        mail_proceed(s, &r, a.addr, a.addr_len, opts, a.rest_len);
        return;
    }
    if (!session_pending_keep(s, NULL, 0, a.addr, a.addr_len, opts, a.rest_len)) return;
    lua_State *co = session_hook_begin(s, HOOK_MAIL);
    lua_pushlstring(co, a.addr, a.addr_len);
    lsession_push_words(co, opts, a.rest_len);
    session_hook_run(s, 2, mail_after);
}

static void rcpt_proceed(struct session *s, const struct hook_result *r, const char *addr,
                         size_t addr_len, const char *opts, size_t opts_len)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_append_string(s, LS_ENVELOPE, "rcpt_tos", addr, addr_len);
        lsession_append_words(s, LS_ENVELOPE, "rcpt_options", opts, opts_len);
        s->rcpt_count++;
        session_reply(s, "250 OK");
    } else if (r->outcome == HOOK_STATUS) session_reply_len(s, r->status, r->len);
    if (r->outcome != HOOK_FAILED) {
        char esc[600];
        if (log_enabled(LOG_DEBUG))
            log_msg(LOG_DEBUG, s->sid, "recip: %s", log_escape(addr, addr_len, esc, sizeof esc));
    }
}

static void rcpt_after(struct session *s, const struct hook_result *r)
{
    rcpt_proceed(s, r, pending_addr(s), s->pending_addr_len, pending_opts(s), s->pending_opts_len);
    session_pending_release(s);
}

static void cmd_rcpt(struct session *s, const char *arg, size_t len)
{
    if (need_helo(s, "HELO")) return;
    if (need_auth(s, "RCPT")) return;
    if (!s->has_mail_from) {
        session_reply(s, "503 Error: need MAIL command");
        return;
    }
    if (s->opt->rcpt_limit && s->rcpt_count >= (size_t)s->opt->rcpt_limit) {
        session_reply(s, "452 4.5.3 Error: too many recipients");
        return;
    }
    const char *syntaxerr = s->extended_smtp
                                ? "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
                                : "501 Syntax: RCPT TO: <address>";
    char addr[SMTP_ADDR_MAX];
    struct addr_result a = {addr, 0, NULL, 0};
    if (!parse_path(s, "TO:", arg, len, syntaxerr, &a, sizeof addr)) return;
    char opts[AUTH_LINE_MAX + 1];
    for (size_t i = 0; i < a.rest_len; i++) opts[i] = (char)toupper((unsigned char)a.rest[i]);
    opts[a.rest_len] = '\0';
    struct mail_param ps[MAX_PARAMS];
    int np = parse_params(opts, a.rest_len, ps, MAX_PARAMS);
    if (np != 0) {
        session_reply(s, np < 0 ? syntaxerr
                                : "555 RCPT TO parameters not recognized or not implemented");
        return;
    }
    if (!policy_has_hook(s->policy, HOOK_RCPT)) {
        struct hook_result r = {HOOK_MISSING, NULL, 0};
        rcpt_proceed(s, &r, a.addr, a.addr_len, opts, a.rest_len);
        return;
    }
    if (!session_pending_keep(s, NULL, 0, a.addr, a.addr_len, opts, a.rest_len)) return;
    lua_State *co = session_hook_begin(s, HOOK_RCPT);
    lua_pushlstring(co, a.addr, a.addr_len);
    lsession_push_words(co, opts, a.rest_len);
    session_hook_run(s, 2, rcpt_after);
}

/* ---------------------------------------------------------------- DATA */

static void cmd_data(struct session *s, const char *arg, size_t len)
{
    if (need_helo(s, "HELO")) return;
    if (need_auth(s, "DATA")) return;
    if (s->rcpt_count == 0) {
        session_reply(s, "503 Error: need RCPT command");
        return;
    }
    if (arg_given(arg, len)) {
        session_reply(s, "501 Syntax: DATA");
        return;
    }
    session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
    data_begin(&s->data, (size_t)s->opt->data_size_limit, s->opt->bare_newline,
               &s->srv->data_budget, (size_t)s->opt->data_memory_limit);
    s->state = SESSION_DATA;
    s->data_window_start = ev_now(s->srv->loop);
    s->data_window_bytes = 0;
    if (s->opt->data_rate_min) session_replan_timer(s);
}

static void data_after(struct session *s, const struct hook_result *r)
{
    size_t size = buf_len(&s->data.content);
    data_end(&s->data);
    if (r->outcome != HOOK_FAILED) {
        /* One line per message: size, sender, recipients, and the reply. */
        char from[300] = "";
        lua_State *L = s->policy->vm.L;
        lsession_push_table(s, L, LS_ENVELOPE);
        lua_bind_rawgetfield(L, -1, "mail_from");
        size_t n = 0;
        const char *f = lua_tolstring(L, -1, &n);
        if (f) log_escape(f, n, from, sizeof from);
        lua_pop(L, 2);
        const char *reply = r->outcome == HOOK_STATUS ? r->status : "250 OK";
        size_t reply_len = r->outcome == HOOK_STATUS ? (r->len > 80 ? 80 : r->len) : 6;
        char reply_esc[400];
        if (reply[0] == '2') s->messages++;
        log_msg(LOG_INFO, s->sid, "message: %zu bytes from <%s> for %zu recipient%s: %s", size,
                from, s->rcpt_count, s->rcpt_count == 1 ? "" : "s",
                log_escape(reply, reply_len, reply_esc, sizeof reply_esc));
    }
    session_reset_envelope(s);
    reply_status_or(s, r, "250 OK");
}

static void session_data_finished(struct session *s)
{
    s->state = SESSION_COMMAND;
    session_touch(s);
    const char *refusal = NULL;
    switch (s->data.verdict) {
    case DATA_TOO_LONG: refusal = "500 Line too long (see RFC5321 4.5.3.1.6)"; break;
    case DATA_TOO_MUCH: refusal = "552 Error: Too much mail data"; break;
    case DATA_BARE_NEWLINE:
        /* Says what to do: curl shows only "Weird server reply" otherwise. */
        refusal = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings";
        break;
    /* data_memory_limit: temporary, the client keeps the message and retries. */
    case DATA_NO_MEMORY: refusal = "452 4.3.1 Error: insufficient system storage"; break;
    case DATA_OK: break;
    }
    if (refusal) {
        log_msg(LOG_INFO, s->sid, "message refused: %s", refusal);
        data_end(&s->data);
        session_reset_envelope(s);
        session_reply(s, refusal);
        return;
    }
    const char *content = buf_head(&s->data.content);
    size_t n = buf_len(&s->data.content);
    lua_State *L = s->policy->vm.L;
    lsession_push_table(s, L, LS_ENVELOPE);
    lua_pushlstring(L, content ? content : "", n);
    lua_pushvalue(L, -1);
    lua_bind_rawsetfield(L, -3, "content");
    lua_bind_rawsetfield(L, -2, "original_content");
    lua_pop(L, 1);
    session_hook0(s, HOOK_DATA, data_after);
}

/* ---------------------------------------------------------------- dispatch */

typedef void (*command_fn)(struct session *, const char *, size_t);

static const command_fn command_fns[CMD_COUNT] = {
    auth_command, cmd_data, cmd_ehlo, cmd_expn, cmd_helo, cmd_help, cmd_mail,
    cmd_noop, cmd_quit, cmd_rcpt, cmd_rset, cmd_starttls, cmd_vrfy,
};

static int find_command(const char *name, size_t n)
{
    for (int i = 0; i < CMD_COUNT; i++)
        if (strlen(command_names[i]) == n && !memcmp(command_names[i], name, n)) return i;
    return -1;
}

/* command_call_limit budget; false (421 sent, closing) when spent. */
static bool spend_call_budget(struct session *s, int cmd, const char *name)
{
    if (!s->opt->call_limit_enforced) return true;
    long *budget = NULL;
    if (cmd >= 0) budget = &s->call_budget[cmd];
    else {
        for (int i = 0; i < s->n_unknown_budget && !budget; i++)
            if (!strcmp(s->unknown_budget[i].name, name)) budget = &s->unknown_budget[i].budget;
        if (!budget && s->n_unknown_budget < SMTP_BOGUS_LIMIT && strlen(name) < 16) {
            int i = s->n_unknown_budget++;
            snprintf(s->unknown_budget[i].name, 16, "%s", name);
            s->unknown_budget[i].budget = options_call_limit(s->opt, name);
            budget = &s->unknown_budget[i].budget;
        }
        if (!budget) return true;
    }
    if (*budget < 1) {
        log_msg(LOG_WARN, s->sid, "over limit for %s", name);
        session_replyf(s, "421 4.7.0 %s sent too many times", name);
        session_close(s, "command_call_limit");
        return false;
    }
    (*budget)--;
    return true;
}

static void log_command(struct session *s, const char *line, size_t len, int cmd,
                        const char *arg, size_t arg_len)
{
    if (!log_enabled(LOG_DEBUG)) return;
    char esc[1024];
    if (cmd == CMD_AUTH && arg_len > 0) {
        /* Log only the mechanism: an initial response is a credential. */
        size_t mech = 0;
        while (mech < arg_len && !isspace((unsigned char)arg[mech])) mech++;
        bool has_response = false;
        for (size_t i = mech; i < arg_len; i++)
            if (!isspace((unsigned char)arg[i])) has_response = true;
        char m[64];
        log_escape(arg, mech, m, sizeof m);
        log_msg(LOG_DEBUG, s->sid, ">> AUTH %s%s", m, has_response ? " ********" : "");
        return;
    }
    log_msg(LOG_DEBUG, s->sid, ">> %s", log_escape(line, len, esc, sizeof esc));
}

static bool is_space_byte(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* One command line, CR/LF already stripped (aiosmtpd's _handle_client). */
static void session_command(struct session *s, const char *line, size_t len)
{
    /* A reload retired this session's generation long enough ago: make the
     * client come back on the new one rather than hold the old one open. */
    if (s->policy->retired_at > 0 &&
        ev_now(s->srv->loop) - s->policy->retired_at > s->srv->drain_timeout) {
        session_replyf(s, "421 4.3.2 %s Error: policy reloaded, try again later",
                       s->opt->hostname);
        session_close(s, "drain timeout of a retired policy generation");
        return;
    }
    if (len == 0) {
        session_reply(s, "500 Error: bad syntax");
        return;
    }
    const char *sp = memchr(line, ' ', len);
    size_t cmd_len = sp ? (size_t)(sp - line) : len;
    char name[32];
    bool ascii = true;
    for (size_t i = 0; i < cmd_len; i++)
        if ((unsigned char)line[i] >= 0x80) ascii = false;
    if (!ascii) {
        session_reply(s, "500 Error: bad syntax");
        return;
    }
    const char *arg = NULL;
    size_t arg_len = 0;
    /* aiosmtpd: nothing after the space is no argument (None), while
     * spaces only are an empty one (""), which a NOOP hook can see. */
    if (sp && len - cmd_len - 1 > 0) {
        arg = sp + 1;
        arg_len = len - cmd_len - 1;
        while (arg_len && is_space_byte((unsigned char)*arg)) arg++, arg_len--;
        while (arg_len && is_space_byte((unsigned char)arg[arg_len - 1])) arg_len--;
    }
    if (arg_len && !s->opt->enable_smtputf8) {
        for (size_t i = 0; i < arg_len; i++) {
            if ((unsigned char)arg[i] >= 0x80) {
                session_reply(s, "500 Error: strict ASCII mode");
                return;
            }
        }
    }
    size_t name_len = cmd_len < sizeof name - 1 ? cmd_len : sizeof name - 1;
    for (size_t i = 0; i < name_len; i++) name[i] = (char)toupper((unsigned char)line[i]);
    name[name_len] = '\0';
    int cmd = cmd_len < sizeof name ? find_command(name, cmd_len) : -1;
    log_command(s, line, len, cmd, arg, arg_len);

    size_t max = SMTP_LINE_MAX;
    if (cmd == CMD_AUTH) max = AUTH_LINE_MAX; /* RFC 4954 4 (fix) */
    else if (cmd == CMD_MAIL && s->extended_smtp)
        max += (s->opt->data_size_limit ? SMTP_MAIL_SIZE_EXTRA : 0) +
               (s->opt->enable_smtputf8 ? SMTP_MAIL_SMTPUTF8_EXTRA : 0);
    if (len > max) {
        session_reply(s, "500 Command line too long");
        return;
    }
    if (s->tls_refused && cmd != CMD_QUIT) {
        session_reply(s, "554 Command refused due to lack of security");
        return;
    }
    if (s->opt->require_starttls && s->srv->tls && !s->tls_active &&
        cmd != CMD_NOOP && cmd != CMD_EHLO && cmd != CMD_STARTTLS && cmd != CMD_QUIT) {
        session_reply(s, "530 Must issue a STARTTLS command first");
        return;
    }
    if (!spend_call_budget(s, cmd, name)) return;
    if (cmd < 0) {
        char esc[64];
        log_msg(LOG_WARN, s->sid, "unrecognised: %s", log_escape(name, name_len, esc, sizeof esc));
        if (--s->bogus_budget < 1) {
            session_replyf(s, "421 4.7.0 %s Error: too many unrecognized commands",
                           s->opt->hostname);
            session_close(s, "too many unrecognized commands");
            return;
        }
        session_replyf(s, "500 Error: command \"%s\" not recognized", name);
        return;
    }
    session_touch(s);
    command_fns[cmd](s, arg, arg_len);
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

static void line_wait_cancel(struct hook_wait *w)
{
    struct session_line_wait *lw = (struct session_line_wait *)w;
    lw->active = false;
}

void session_await_line(struct session *s,
                        void (*deliver)(struct session *s, const char *line, size_t len,
                                        bool too_long))
{
    s->line_wait.wait.what = "the client's next line";
    s->line_wait.wait.cancel = line_wait_cancel;
    s->line_wait.deliver = deliver;
    s->line_wait.active = true;
}

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
        if (hook_active(&s->hook)) {
            /* A suspended hook: input waits, unless the hook waits for it. */
            if (!s->line_wait.active) break;
            const char *line;
            size_t len, consumed;
            bool too_long;
            if (!session_next_line(s, AUTH_LINE_MAX, &line, &len, &too_long, &consumed)) break;
            /* The line is used in place and consumed afterwards: nothing
             * reads into `in` while the pump runs. */
            session_touch(s);
            s->line_wait.active = false;
            s->line_wait.deliver(s, line, len, too_long);
            buf_consume(in, consumed);
            session_check_error_limit(s);
            continue;
        }
        if (s->state == SESSION_DATA) {
            if (!data_feed(&s->data, in)) {
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
                s->line_started = ev_now(s->srv->loop);
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
    if (!ok) lsession_sync(s, NULL);
    else ok = lsession_sync(s, co);
    bool accept = ok && nres >= 1 && lua_toboolean(co, 1) && !lua_smtpd_is_missing(co, 1);
    if (!ok) {
        const char *e = lua_tostring(co, -1);
        char esc[2048];
        log_msg(LOG_ERROR, s->sid, "hook handle_PROXY failed: %s",
                e ? log_escape(e, strlen(e), esc, sizeof esc) : "?");
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
