/* auth.c — the AUTH command of auth-api.md 4: checks in their order,
 * handle_AUTH, the mechanism on its coroutine, challenge lines, and the
 * reply for an AuthResult. Everything here fails closed: an error or a
 * wrong value from Lua is a 454 and a failed attempt. Must not decide
 * credentials, and never logs an AUTH argument or a challenge response. */
#include "auth.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "auth_limit.h"
#include "base64.h"
#include "conn.h"
#include "log.h"
#include "lua_bind.h"
#include "lua_session.h"
#include "policy.h"
#include "session.h"
#include "shdict.h"
#include "smtp_limits.h"
#include "status_line.h"
#include "tls.h"

static const char *const reply_success = "235 2.7.0 Authentication successful";
static const char *const reply_invalid = "535 5.7.8 Authentication credentials invalid";

static void auth_run_mechanism(struct session *s);
static void auth_start(struct session *s);
static void auth_after_limit(struct session *s);
static void auth_after_failure(struct session *s);
static void auth_store_over_done(void *owner, bool ok, lua_State *co, int nres);
static void auth_check_failure_limit(struct session *s);
static void auth_deliver_line(struct session *s, const char *line, size_t len, bool too_long);
static void auth_forget(struct session *s);
static void auth_login_free(struct session *s);

size_t auth_channel_binding(const struct session *s, const char *type, unsigned char *out)
{
    if (!s->tls_active || !s->conn) return 0;
    if (!strcmp(type, "tls-unique"))
        return tls_channel_binding(s->conn, TLS_BINDING_UNIQUE, out, TLS_BINDING_MAX);
    if (!strcmp(type, "tls-server-end-point"))
        return tls_channel_binding(s->conn, TLS_BINDING_SERVER_END_POINT, out, TLS_BINDING_MAX);
    return 0;
}

bool auth_mechanism_available(const struct session *s, const struct mechanism *m)
{
    unsigned char cb[TLS_BINDING_MAX];
    switch (m->needs) {
    case MECH_NEEDS_NOTHING: return true;
    case MECH_NEEDS_BINDING:
        /* Offered only when at least one binding is really there to check. */
        return auth_channel_binding(s, "tls-unique", cb) > 0 ||
               auth_channel_binding(s, "tls-server-end-point", cb) > 0;
    case MECH_NEEDS_PEERCERT: return s->tls_active && s->tls_peer_verified;
    }
    return false;
}

/* ---------------------------------------------------- auth_fail_penalty
 * Holding a session: its input waits (session_pump stops while
 * auth_holding) on one ev_timer, so every other session goes on. Two holds:
 * before an AUTH from an address that failed (Dovecot's penalty), and
 * before a failed AUTH's 535 (OpenSMTPD's pause).
 *
 * The hold is out of line, in s->auth_hold: an idle connection holds only
 * what it needs (bench (d)). It is allocated when a 535 is held back or a
 * hold starts, and freed when the hold fires (auth_hold_fired) or the
 * session closes (auth_cancel_hold, from session_close and session_free). */
struct auth_hold {
    ev_timer timer;                  /* running while the session is held */
    void (*then)(struct session *s); /* goes on with the command when it fires */
    size_t reply_len;                /* the held 535 (0: none) */
    char reply[];
};

static bool auth_penalised(const struct session *s, char *key)
{
    return s->opt->auth_fail_penalty && session_client_counted(s) && auth_limit_key(session_client_addr(s), key);
}

bool auth_holding(const struct session *s)
{
    return s->auth_hold && ev_is_active(&s->auth_hold->timer);
}

static void auth_hold_fired(struct ev_loop *loop, ev_timer *w, int revents);

/* Allocates s->auth_hold (none may exist yet) holding reply (len 0: none).
 * False if memory ran out. */
static bool auth_hold_get(struct session *s, const char *reply, size_t len)
{
    struct auth_hold *h = malloc(sizeof *h + len);
    if (!h) return false;
    ev_init(&h->timer, auth_hold_fired);
    h->timer.data = s;
    h->then = NULL;
    h->reply_len = len;
    if (len) memcpy(h->reply, reply, len);
    s->auth_hold = h;
    return true;
}

static void auth_hold_free(struct session *s)
{
    free(s->auth_hold); /* a 535 is no secret */
    s->auth_hold = NULL;
}

/* The hold ended: the held 535 (if any) goes out, then the command goes on. */
static void auth_hold_fired(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct session *s = w->data;
    struct auth_hold *h = s->auth_hold;
    void (*then)(struct session *) = h->then;
    if (h->reply_len) session_reply_len(s, h->reply, h->reply_len);
    auth_hold_free(s); /* before then(), which may hold again */
    then(s);
    if (s->state == SESSION_CLOSING) conn_flush(s->conn);
    else session_pump(s); /* the input that waited, and the replies */
}

/* Holds the session's input for secs, then calls then. False (nothing
 * held) if memory ran out. */
static bool auth_hold(struct session *s, double secs, void (*then)(struct session *s))
{
    if (!s->auth_hold && !auth_hold_get(s, NULL, 0)) return false;
    s->auth_hold->then = then;
    ev_timer_set(&s->auth_hold->timer, secs, 0);
    ev_timer_start(s->host->loop, &s->auth_hold->timer);
    return true;
}

void auth_cancel_hold(struct session *s)
{
    if (!s->auth_hold) return;
    ev_timer_stop(s->host->loop, &s->auth_hold->timer);
    auth_hold_free(s);
}

/* A failure's final reply: a 535 is held back for the pause (it goes out
 * when auth_finish's hold ends); anything else now, as when memory for
 * holding it ran out. */
static void auth_reply_failure(struct session *s, const char *line, size_t len)
{
    char key[AUTH_LIMIT_KEY_MAX];
    if (len >= 3 && !memcmp(line, "535", 3) && auth_penalised(s, key) && !s->auth_hold &&
        auth_hold_get(s, line, len))
        return;
    session_reply_len(s, line, len);
}

/* ------------------------------------------- auth_fail_limit_per_client
 * Failures per address group in the shared dictionary every worker maps
 * (options_finalize declares it): one counter per group, created with the
 * window as its TTL, so the count ends when the window does. */

static struct shdict *auth_fail_dict(void)
{
    static struct shdict *d;
    if (!d && shdict_process_region())
        d = shdict_region_find(shdict_process_region(), OPTIONS_AUTH_FAIL_DICT,
                               strlen(OPTIONS_AUTH_FAIL_DICT));
    return d;
}

static bool auth_limited(const struct session *s, char *key)
{
    return s->opt->auth_fail_limit_per_client.enabled && session_client_counted(s) &&
           auth_limit_key(session_client_addr(s), key) && auth_fail_dict();
}

/* True when key has spent its failures for this window. */
static bool auth_over_limit(const struct session *s, const char *key)
{
    struct shdict_value v;
    struct shdict_buf buf = {NULL, 0};
    enum shdict_status st = shdict_get(auth_fail_dict(), key, strlen(key), &v, &buf);
    free(buf.data);
    return st == SHDICT_OK && v.type == SHDICT_NUMBER &&
           v.number >= (double)s->opt->auth_fail_limit_per_client.count;
}

static void auth_refuse(struct session *s, const char *key)
{
    log_msg(LOG_INFO, s->sid, "AUTH refused: too many failed attempts from %s "
                              "(auth_fail_limit_per_client)", key);
    session_reply(s, "454 4.7.0 Too many failed attempts, try again later");
}

/* auth_fail_store: the same address groups, counted in Redis. */
static bool auth_store_limited(const struct session *s, char *key)
{
    return s->opt->auth_fail_store && s->policy->fail_store_over_ref != LUA_NOREF &&
           session_client_counted(s) && auth_limit_key(session_client_addr(s), key);
}

/* A store that cannot answer lets the AUTH go on (fails open): a Redis
 * outage must not lock every user out. */
static void auth_store_error(struct session *s, bool ok, lua_State *co, int nres)
{
    if (!ok) session_log_hook_error(s, co, "auth_fail_store", NULL);
    else {
        const char *e = nres >= 2 ? lua_tostring(co, 2) : NULL;
        log_msg(LOG_WARN, s->sid, "auth_fail_store: %s; not counting", e ? e : "no answer");
    }
}

static void auth_store_over_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    if (!ok || nres < 1 || lua_isnil(co, 1)) auth_store_error(s, ok, co, nres);
    else if (lua_toboolean(co, 1)) {
        char key[AUTH_LIMIT_KEY_MAX];
        auth_limit_key(session_client_addr(s), key);
        auth_forget(s);
        s->auth_in_progress = false;
        auth_refuse(s, key);
        return;
    }
    auth_after_limit(s);
}

static void auth_store_failed_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    if (!ok || nres < 1 || lua_isnil(co, 1)) auth_store_error(s, ok, co, nres);
    auth_after_failure(s);
}

static void auth_count_failure(struct session *s, const char *key)
{
    static const double zero = 0;
    double now_count;
    enum shdict_status st =
        shdict_incr(auth_fail_dict(), key, strlen(key), 1, &zero,
                    s->opt->auth_fail_limit_per_client.window, &now_count);
    if (st != SHDICT_OK && st != SHDICT_EVICTED)
        log_msg(LOG_WARN, s->sid, "auth_fail_limit_per_client: cannot count a failure for %s", key);
}

/* Wipes and frees the secrets of one AUTH attempt. */
static void auth_forget(struct session *s)
{
    if (s->auth_initial) {
        memset(s->auth_initial, 0, s->auth_initial_len);
        free(s->auth_initial);
        s->auth_initial = NULL;
    }
    session_clear_secrets(s);
}

/* The login for the failure log line is out of line, from
 * server:_auth_login to the end of the AUTH: an idle connection holds only
 * what it needs (bench (d)). A login is no secret: freed normally. */
bool auth_login_keep(struct session *s, const char *login, size_t n)
{
    if (n > AUTH_LOGIN_LOG_MAX) n = AUTH_LOGIN_LOG_MAX;
    char *p = malloc(n ? n : 1);
    if (!p) return false;
    if (n) memcpy(p, login, n);
    free(s->auth_login);
    s->auth_login = p;
    s->auth_login_len = n;
    return true;
}

static void auth_login_free(struct session *s)
{
    free(s->auth_login);
    s->auth_login = NULL;
    s->auth_login_len = 0;
}

void auth_session_free(struct session *s)
{
    auth_cancel_hold(s);
    auth_forget(s);
    auth_login_free(s);
}

/* The one line a failed AUTH logs (mechanisms.md 3), which fail2ban's
 * filter (contrib/fail2ban) reads: the mechanism, the client address and
 * the login escaped; never a password or an AUTH argument. */
static void auth_log_failure(struct session *s)
{
    /* log_escape, and a quote as \x22 so the quoted login has one end. */
    char esc[AUTH_LOGIN_LOG_MAX * 4 + 4], login[sizeof esc * 4];
    log_escape(s->auth_login, s->auth_login_len, esc, sizeof esc);
    size_t o = 0;
    for (const char *p = esc; *p && o + 5 < sizeof login; p++) {
        if (*p == '"') {
            memcpy(login + o, "\\x22", 4);
            o += 4;
        } else login[o++] = *p;
    }
    login[o] = '\0';
    log_msg(LOG_INFO, s->sid, "AUTH failed: mechanism=%s client=[%s] login=\"%s\"",
            s->policy->mechs[s->auth_mech_index].name, session_client_addr(s), login);
}

/* Ends an AUTH command with its outcome. The outcome is the one writer of
 * session.authenticated: whatever a hook wrote into the table on the way,
 * the C mirror and the table say the same from here on (a mechanism that
 * set authenticated = true and then failed is not authenticated). */
static void auth_finish(struct session *s, bool authenticated)
{
    auth_forget(s);
    s->auth_in_progress = false;
    s->authenticated = authenticated;
    /* true, or cleared to nil as before any AUTH (what a script that never
     * touched it has seen all along). */
    if (authenticated) lsession_set_bool(s, LS_SESSION, "authenticated", true);
    else lsession_set_string(s, LS_SESSION, "authenticated", NULL, 0);
    if (s->authenticated) {
        auth_login_free(s);
        log_msg(LOG_INFO, s->sid, "authenticated with %s",
                s->policy->mechs[s->auth_mech_index].name);
        char key[AUTH_LIMIT_KEY_MAX];
        if (auth_penalised(s, key)) auth_penalty_succeeded(key);
        return;
    }
    s->auth_failures++;
    auth_log_failure(s);
    auth_login_free(s);
    char key[AUTH_LIMIT_KEY_MAX];
    if (auth_penalised(s, key)) auth_penalty_failed(key, ev_now(s->host->loop));
    if (!s->opt->auth_fail_store && auth_limited(s, key)) auth_count_failure(s, key);
    if (auth_store_limited(s, key)) {
        lua_State *co = hook_begin(&s->hook, s->policy->fail_store_failed_ref, "auth_fail_store");
        lua_pushstring(co, s->opt->auth_fail_store);
        lua_pushstring(co, key);
        lua_pushnumber(co, s->opt->auth_fail_limit_per_client.window);
        hook_run(&s->hook, 3, auth_store_failed_done, s, HOOK_MAY_WAIT);
        return;
    }
    auth_after_failure(s);
}

/* After a failure was counted: the held 535's pause (auth_hold_fired sends
 * it), or the session limit. */
static void auth_after_failure(struct session *s)
{
    if (s->auth_hold) { /* holding a 535: the block exists, so this cannot fail */
        auth_hold(s, auth_fail_pause() * s->opt->auth_fail_penalty_scale, auth_check_failure_limit);
        return;
    }
    auth_check_failure_limit(s);
}

static void auth_check_failure_limit(struct session *s)
{
    long limit = s->opt->auth_failure_limit;
    if (limit > 0 && s->auth_failures >= limit) {
        session_replyf(s, "421 4.7.0 %s Error: too many failed authentication attempts",
                       s->opt->hostname);
        session_close(s, "too many failed authentication attempts");
    }
}

/* A failed hook in AUTH: 454 (or handle_exception's status), attempt failed. */
static void auth_hook_failed(struct session *s, lua_State *co)
{
    session_reply_hook_error(s, co, true);
    auth_finish(s, false);
}

/* Raises a hook error about a bad value (the message goes to the log). */
static void auth_bad_value(struct session *s, lua_State *co, const char *what)
{
    lua_pushfstring(co, "%s: %s", s->hook.name ? s->hook.name : "AUTH", what);
    lua_pushvalue(co, -1);
    auth_hook_failed(s, co);
}

/* auth-api.md 4.4: a message is one status line of the right class (2xx
 * for success, 4xx/5xx for failure). */
static bool auth_message_valid(const char *m, size_t n, bool success)
{
    if (!status_line_valid(m, n)) return false;
    return success ? m[0] == '2' : (m[0] == '4' || m[0] == '5');
}

/* Records the auth_data at co[idx] of a successful AUTH. Returns
 * false, with the error pushed twice onto co, when reading auth_data.login
 * raised (a script's strict __index). */
static bool auth_succeeded(struct session *s, lua_State *co, int idx)
{
    /* login_data: the deprecated alias, auth_data.login when there is one.
     * Only tables and LoginPassword are indexed, and protected: a table's
     * __index may raise. */
    if (lua_type(co, idx) == LUA_TTABLE || lbind_is_udata(co, idx, LOGINPASSWORD_MT) ||
        l_authdata_is(co, idx)) {
        static const char *const login_key[] = {"login"};
        if (lbind_getfields(co, idx, login_key, 1) != 0) {
            const char *e = lua_tostring(co, -1);
            lua_pushfstring(co, "%s: reading auth_data.login: %s", s->hook.name ? s->hook.name : "AUTH",
                            e ? e : "(error object is not a string)");
            lua_pushvalue(co, -1);
            return false;
        }
    } else lua_pushnil(co);
    int login = lua_gettop(co);
    /* C owns these fields: written raw, past any metamethod. */
    lsession_push_table(s, co, LS_SESSION);
    int t = lua_gettop(co);
    lua_pushvalue(co, idx);
    lbind_rawsetfield(co, t, "auth_data");
    lua_pushvalue(co, login);
    lbind_rawsetfield(co, t, "login_data");
    lua_settop(co, login - 1);
    return true; /* auth_finish(s, true) sets authenticated */
}

/* The mechanism returned (co stack 1..nres). auth-api.md 4.4. */
static void auth_mechanism_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    if (!ok) {
        auth_hook_failed(s, co);
        return;
    }
    int t = nres >= 1 ? lua_type(co, 1) : LUA_TNIL;
    if (t == LUA_TNIL) {
        /* The mechanism sent its own final reply, or forgot to (fix). */
        if (!s->auth_final_sent) auth_reply_failure(s, reply_invalid, strlen(reply_invalid));
        auth_finish(s, false);
        return;
    }
    if (t == LUA_TBOOLEAN) {
        if (lua_toboolean(co, 1)) {
            lua_pushnil(co);
            if (!auth_succeeded(s, co, lua_gettop(co))) {
                auth_hook_failed(s, co);
                return;
            }
            session_reply(s, reply_success);
            auth_finish(s, true);
        } else {
            auth_reply_failure(s, reply_invalid, strlen(reply_invalid));
            auth_finish(s, false);
        }
        return;
    }
    if (t != LUA_TTABLE && !l_authresult_is(co, 1)) {
        char what[96];
        snprintf(what, sizeof what, "returned %s; expected an AuthResult", lua_typename(co, t));
        auth_bad_value(s, co, what);
        return;
    }
    /* A plain table (whose __index may raise: read protected), or an
     * AuthResult. */
    static const char *const result_keys[] = {"success", "handled", "message", "auth_data"};
    if (lbind_getfields(co, 1, result_keys, 4) != 0) {
        char what[512];
        const char *e = lua_tostring(co, -1);
        snprintf(what, sizeof what, "reading the AuthResult: %s", e ? e : "(error object is not a string)");
        auth_bad_value(s, co, what);
        return;
    }
    int success_i = nres + 1, handled_i = nres + 2, message_i = nres + 3, data_i = nres + 4;
    if (lua_type(co, success_i) != LUA_TBOOLEAN ||
        (!lua_isnil(co, handled_i) && lua_type(co, handled_i) != LUA_TBOOLEAN) ||
        (!lua_isnil(co, message_i) && lua_type(co, message_i) != LUA_TSTRING)) {
        auth_bad_value(s, co, "returned a malformed AuthResult table");
        return;
    }
    bool success = lua_toboolean(co, success_i);
    bool handled = lua_isnil(co, handled_i) ? true : lua_toboolean(co, handled_i);
    size_t mlen = 0;
    const char *message = lua_isnil(co, message_i) ? NULL : lua_tolstring(co, message_i, &mlen);
    if (message && !auth_message_valid(message, mlen, success)) {
        auth_bad_value(s, co, success ? "AuthResult message must be one 2xx reply line"
                                      : "AuthResult message must be one 4xx/5xx reply line");
        return;
    }
    if (success) {
        if (!auth_succeeded(s, co, data_i)) {
            auth_hook_failed(s, co);
            return;
        }
        if (message) session_reply_len(s, message, mlen);
        else session_reply(s, reply_success);
    } else if (handled) {
        if (!s->auth_final_sent) auth_reply_failure(s, reply_invalid, strlen(reply_invalid)); /* fix: never leave a hang */
    } else if (message) auth_reply_failure(s, message, mlen);
    else auth_reply_failure(s, reply_invalid, strlen(reply_invalid));
    auth_finish(s, success);
}

/* The AUTH arguments as hooks see them: {MECHANISM, initial-response}. */
static void push_args(struct session *s, lua_State *co)
{
    lua_createtable(co, 2, 0);
    const struct mechanism *m = &s->policy->mechs[s->auth_mech_index];
    lua_pushstring(co, m->name);
    lua_rawseti(co, -2, 1);
    if (s->auth_initial) {
        lua_pushlstring(co, s->auth_initial, s->auth_initial_len);
        lua_rawseti(co, -2, 2);
    }
}

static void auth_run_mechanism(struct session *s)
{
    const struct mechanism *m = &s->policy->mechs[s->auth_mech_index];
    log_msg(LOG_DEBUG, s->sid, "using %s mechanism %s", m->builtin ? "built-in" : "handler",
            m->name);
    lua_State *co = hook_begin(&s->hook, m->ref, m->label);
    lua_rawgeti(co, LUA_REGISTRYINDEX, s->server_ref);
    push_args(s, co);
    hook_run(&s->hook, 2, auth_mechanism_done, s, HOOK_MAY_WAIT);
}

/* handle_AUTH returned (auth-api.md 4.3). */
static void auth_handle_auth_done(void *owner, bool ok, lua_State *co, int nres)
{
    struct session *s = owner;
    if (!ok) {
        auth_hook_failed(s, co);
        return;
    }
    if (nres >= 1 && lbind_is_missing(co, 1)) {
        /* The coroutine is recycled after we return; the mechanism gets a
         * fresh one. */
        auth_run_mechanism(s);
        return;
    }
    int t = nres >= 1 ? lua_type(co, 1) : LUA_TNIL;
    if (t == LUA_TSTRING) {
        size_t n;
        const char *status = lua_tolstring(co, 1, &n);
        if (!auth_message_valid(status, n, true) && !auth_message_valid(status, n, false)) {
            auth_bad_value(s, co, "returned a string that is not one reply line");
            return;
        }
        if (status[0] == '2') session_reply_len(s, status, n);
        else auth_reply_failure(s, status, n);
        /* handle_AUTH decided: authenticated if it said so and replied 2xx. */
        auth_finish(s, s->authenticated && status[0] == '2');
        return;
    }
    if (t == LUA_TNIL) {
        bool replied = s->auth_final_sent;
        if (!replied) auth_reply_failure(s, reply_invalid, strlen(reply_invalid)); /* fix */
        auth_finish(s, replied && s->authenticated);
        return;
    }
    char what[96];
    snprintf(what, sizeof what, "returned %s; expected smtpd.MISSING, a status or nil",
             lua_typename(co, t));
    auth_bad_value(s, co, what);
}

void auth_command(struct session *s, const char *arg, size_t len)
{
    if (!s->has_host_name) {
        session_reply(s, "503 Error: send EHLO first");
        return;
    }
    if (!s->extended_smtp) {
        session_reply(s, "500 Error: command 'AUTH' not recognized");
        return;
    }
    if (s->opt->auth_require_tls && !s->tls_active) {
        session_reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return;
    }
    if (s->authenticated) {
        session_reply(s, "503 Already authenticated");
        return;
    }
    if (s->has_mail_from) { /* RFC 4954 4: not during a mail transaction (fix) */
        session_reply(s, "503 5.5.1 Error: MAIL transaction in progress");
        return;
    }
    if (!arg || len == 0) {
        session_reply(s, "501 Not enough value");
        return;
    }
    /* Split on whitespace, as Python's str.split(). */
    const char *words[3];
    size_t lens[3];
    int nw = 0;
    for (size_t k = 0; k < len;) {
        while (k < len && isspace((unsigned char)arg[k])) k++;
        if (k >= len) break;
        size_t start = k;
        while (k < len && !isspace((unsigned char)arg[k])) k++;
        if (nw == 3) break;
        words[nw] = arg + start;
        lens[nw] = k - start;
        nw++;
    }
    if (nw > 2) {
        session_reply(s, "501 Too many values");
        return;
    }
    int mech = policy_find_mechanism(s->policy, words[0], lens[0]);
    if (mech < 0 || !auth_mechanism_available(s, &s->policy->mechs[mech])) {
        session_reply(s, "504 5.5.4 Unrecognized authentication type");
        return;
    }
    /* mechanisms.md 3: an address past its failures for the window is
     * refused before anything runs (not counted: the window does not grow). */
    char key[AUTH_LIMIT_KEY_MAX];
    if (!s->opt->auth_fail_store && auth_limited(s, key) && auth_over_limit(s, key)) {
        auth_refuse(s, key);
        return;
    }
    s->auth_mech_index = mech;
    s->auth_in_progress = true;
    s->auth_final_sent = false;
    auth_login_free(s);
    /* Copied: a suspended handle_AUTH outlives the command line's buffer. */
    s->auth_initial = NULL;
    s->auth_initial_len = 0;
    if (nw == 2 && (s->auth_initial = malloc(lens[1] + 1))) {
        /* memcpy, not strndup: the bytes may hold a NUL (fuzz: auth-initial-nul). */
        memcpy(s->auth_initial, words[1], lens[1]);
        s->auth_initial[lens[1]] = '\0';
        s->auth_initial_len = lens[1];
    }
    if (nw == 2) {
        session_add_secret(s, words[1], lens[1]);
        uint8_t decoded[AUTH_LINE_MAX]; /* >= base64_decoded_max of any AUTH line */
        ssize_t got = base64_decode_strict(words[1], lens[1], decoded);
        if (got > 0) {
            session_add_decoded_secret(s, (const char *)decoded, (size_t)got);
            memset(decoded, 0, (size_t)got);
        }
    }
    if (s->opt->auth_fail_store && auth_store_limited(s, key)) {
        /* The count is in Redis: ask it first (a hook on the cosockets). */
        lua_State *co = hook_begin(&s->hook, s->policy->fail_store_over_ref, "auth_fail_store");
        lua_pushstring(co, s->opt->auth_fail_store);
        lua_pushstring(co, key);
        lua_pushnumber(co, (double)s->opt->auth_fail_limit_per_client.count);
        hook_run(&s->hook, 3, auth_store_over_done, s, HOOK_MAY_WAIT);
        return;
    }
    auth_after_limit(s);
}

/* The limit passed: Dovecot's penalty, then the policy step. */
static void auth_after_limit(struct session *s)
{
    char key[AUTH_LIMIT_KEY_MAX];
    /* Dovecot's penalty: an address that failed waits before it may try
     * again (the timer holds this session only). */
    if (auth_penalised(s, key)) {
        double wait = auth_penalty_delay(key, ev_now(s->host->loop)) * s->opt->auth_fail_penalty_scale;
        if (wait > 0) {
            log_msg(LOG_INFO, s->sid, "AUTH penalty: holding AUTH %.3f s (earlier failures from %s)",
                    wait, key);
            if (!auth_hold(s, wait, auth_start)) {
                /* Out of memory: fail closed, as for a hook error (no
                 * attempt was made, so none is counted). */
                auth_forget(s);
                s->auth_in_progress = false;
                session_reply(s, "454 4.7.0 Temporary authentication failure");
            }
            return;
        }
    }
    auth_start(s);
}

/* The policy step of AUTH: handle_AUTH, else the mechanism. */
static void auth_start(struct session *s)
{
    if (!policy_has_hook(s->policy, HOOK_AUTH)) {
        auth_run_mechanism(s);
        return;
    }
    lua_State *co = hook_begin(&s->hook, s->policy->hook_ref[HOOK_AUTH], "handle_AUTH");
    lsession_push_args(s, co);
    push_args(s, co);
    hook_run(&s->hook, 4, auth_handle_auth_done, s, HOOK_MAY_WAIT);
}

void auth_send_challenge(struct session *s, const char *challenge, size_t n, bool encode,
                         bool log_response)
{
    char *line = malloc(4 + (encode ? base64_encoded_len(n) : n) + 1);
    if (!line) {
        session_reply(s, "334 ");
    } else {
        memcpy(line, "334 ", 4);
        size_t len = 4;
        if (encode) len += base64_encode((const uint8_t *)challenge, n, line + 4);
        else {
            memcpy(line + 4, challenge, n);
            len += n;
        }
        session_reply_len(s, line, len);
        free(line);
    }
    s->wait_log_response = log_response;
    session_await_line(s, auth_deliver_line);
    /* The challenge must reach the client before we wait for its answer. */
    conn_flush(s->conn);
}

static bool is_py_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* The client's line for a pending challenge: the decoding of the line wait
 * kind (the session delivers the line; AUTH decides what it means). */
static void auth_deliver_line(struct session *s, const char *line, size_t len, bool too_long)
{
    lua_State *co = hook_wake_begin(&s->hook, &s->line_wait.wait);
    if (!co) return; /* the wait ended meanwhile */
    if (too_long) {
        session_reply(s, "500 5.5.6 Authentication Exchange line is too long"); /* fix */
        s->auth_final_sent = true;
        lua_pushnil(co);
    } else {
        while (len && is_py_space((unsigned char)*line)) line++, len--;
        while (len && is_py_space((unsigned char)line[len - 1])) len--;
        if (s->wait_log_response) {
            char esc[1024];
            log_msg(LOG_WARN, s->sid, "AUTH interaction logging is enabled: sensitive "
                                      "information may be logged");
            log_msg(LOG_DEBUG, s->sid, ">> %s", log_escape(line, len, esc, sizeof esc));
        }
        session_add_secret(s, line, len);
        uint8_t *out = malloc(base64_decoded_max(len) + 1);
        ssize_t got = -1;
        if (len == 1 && line[0] == '*') {
            log_msg(LOG_WARN, s->sid, "client aborted AUTH with '*'");
            session_reply(s, "501 5.7.0 Auth aborted");
            s->auth_final_sent = true;
            lua_pushnil(co);
        } else if (!out || (got = base64_decode_strict(line, len, out)) < 0) {
            session_reply(s, "501 5.5.2 Can't decode base64");
            s->auth_final_sent = true;
            lua_pushnil(co);
        } else {
            session_add_decoded_secret(s, (const char *)out, (size_t)got);
            lua_pushlstring(co, (const char *)out, (size_t)got);
        }
        if (out) {
            memset(out, 0, base64_decoded_max(len) + 1);
            free(out);
        }
    }
    hook_wake_finish(&s->hook, 1);
}
