/* lua_server.c — the `server` object hooks receive (auth-api.md 3) and the
 * session/envelope tables. The server object is a handle box: a userdata
 * holding a pointer to the C session, cleared when the session is freed, so
 * a script that keeps it gets "session is closed" instead of a dangling
 * pointer. server:challenge_auth() is the one yielding binding here: it
 * follows the suspend sequence validate → check context → send → arm the
 * wait → lua_yield. Must not block the loop. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "base64.h"
#include "log.h"
#include "lua_bind.h"
#include "lua_session.h"
#include "policy.h"
#include "proxy.h"
#include "session.h"
#include "status_line.h"
#include "tls.h"

struct server_box {
    struct session *s; /* NULL once the session is gone */
};

static struct session *check_server(lua_State *L)
{
    if (!lbind_is_udata(L, 1, SERVER_MT))
        luaL_error(L, "expected server, got %s (call it as server:method(...))",
                   luaL_typename(L, 1));
    struct server_box *box = lua_touserdata(L, 1);
    if (!box->s) luaL_error(L, "session is closed");
    return box->s;
}

/* A reply a script sends must be one status line (status_line.h). */
static const char *check_line(lua_State *L, int idx, size_t *n, const char *what)
{
    const char *line = luaL_checklstring(L, idx, n);
    if (!status_line_valid(line, *n))
        luaL_error(L, "%s: the reply must be one status line (3 digits, then a space, a dash or "
                      "the end; no CR, LF or NUL)",
                   what);
    return line;
}

/* server:push(status) — sends one reply line. */
static int l_server_push(lua_State *L)
{
    struct session *s = check_server(L);
    size_t n;
    const char *line = check_line(L, 2, &n, "push");
    if (!hook_active(&s->hook)) return luaL_error(L, "push: no hook of this session is running");
    session_reply_len(s, line, n);
    if (s->auth_in_progress && !(n >= 3 && !memcmp(line, "334", 3))) s->auth_final_sent = true;
    return 0;
}

/* server:challenge_auth(challenge, encode_to_b64 = true, log_client_response = false)
 * Yields until the client's next line; returns the decoded bytes or nil. */
static int l_server_challenge_auth(lua_State *L)
{
    struct session *s = check_server(L);
    size_t n;
    const char *challenge = luaL_checklstring(L, 2, &n);
    bool encode = lua_isnoneornil(L, 3) ? true : lua_toboolean(L, 3);
    bool log_response = lua_toboolean(L, 4);
    if (!encode && (memchr(challenge, '\r', n) || memchr(challenge, '\n', n)))
        return luaL_error(L, "challenge_auth: a raw challenge must be one line");
    if (!s->auth_in_progress)
        return luaL_error(L, "challenge_auth may only be called during AUTH (handle_AUTH or a "
                             "mechanism)");
    if (s->hook.co != L) /* before hook_wait_begin: this session's hook, not another's */
        return luaL_error(L, "challenge_auth may only be called from an AUTH hook's own coroutine");
    hook_wait_begin(L, &s->line_wait.wait, "challenge_auth");
    auth_send_challenge(s, challenge, n, encode, log_response);
    return lua_yield(L, 0);
}

/* server:channel_binding(type) → the binding data of this TLS session for
 * "tls-unique" or "tls-server-end-point" (RFC 5929), or nil. */
static int l_server_channel_binding(lua_State *L)
{
    struct session *s = check_server(L);
    const char *type = luaL_checkstring(L, 2);
    if (strcmp(type, "tls-unique") && strcmp(type, "tls-server-end-point"))
        return luaL_argerror(L, 2, lua_pushfstring(L, "unknown channel binding '%s' (expected "
                                                      "tls-unique or tls-server-end-point)", type));
    unsigned char cb[TLS_BINDING_MAX];
    size_t n = auth_channel_binding(s, type, cb);
    if (n == 0) lua_pushnil(L);
    else lua_pushlstring(L, (const char *)cb, n);
    return 1;
}

/* server:_auth_login(login) — the shipped mechanisms name the login they
 * hand the authenticator, for the failure log line (mechanisms.md 3). A
 * no-op outside AUTH; keeps at most AUTH_LOGIN_LOG_MAX bytes. */
static int l_server_auth_login(lua_State *L)
{
    struct session *s = check_server(L);
    size_t n;
    const char *login = luaL_checklstring(L, 2, &n);
    if (!s->auth_in_progress) return 0;
    if (!auth_login_keep(s, login, n)) return luaL_error(L, "server:_auth_login: out of memory");
    return 0;
}

/* server.mechanisms: the names offered on this session now, in EHLO's order. */
static void push_offered_mechanisms(lua_State *L, struct session *s)
{
    lua_createtable(L, (int)s->policy->n_mechs, 0);
    int k = 1;
    for (size_t i = 0; i < s->policy->n_mechs; i++) {
        if (!auth_mechanism_available(s, &s->policy->mechs[i])) continue;
        lua_pushstring(L, s->policy->mechs[i].name);
        lua_rawseti(L, -2, k++);
    }
}

static int l_server_index(lua_State *L)
{
    struct session *s = check_server(L);
    const char *key = luaL_checkstring(L, 2);
    if (!strcmp(key, "push")) lua_pushcfunction(L, l_server_push);
    else if (!strcmp(key, "challenge_auth")) lua_pushcfunction(L, l_server_challenge_auth);
    else if (!strcmp(key, "session")) lsession_push_table(s, L, LS_SESSION);
    else if (!strcmp(key, "envelope")) lsession_push_table(s, L, LS_ENVELOPE);
    else if (!strcmp(key, "hostname")) lua_pushstring(L, s->opt->hostname);
    else if (!strcmp(key, "auth_allow_authzid")) lua_pushboolean(L, s->opt->auth_allow_authzid);
    else if (!strcmp(key, "tls")) lua_pushboolean(L, s->tls_active);
    else if (!strcmp(key, "channel_binding")) lua_pushcfunction(L, l_server_channel_binding);
    else if (!strcmp(key, "mechanisms")) push_offered_mechanisms(L, s);
    else if (!strcmp(key, "_auth_login")) lua_pushcfunction(L, l_server_auth_login);
    else if (!strcmp(key, "auth_login_prompts")) {
        const struct login_prompts *lp = &s->opt->auth_login_prompts;
        if (!lp->text[0] || !lp->text[1]) lua_pushnil(L);
        else {
            lua_createtable(L, 2, 0);
            for (int i = 0; i < 2; i++) {
                lua_pushlstring(L, lp->text[i], lp->len[i]);
                lua_rawseti(L, -2, i + 1);
            }
        }
    }
    else if (!strcmp(key, "authenticator")) {
        if (policy_has_hook(s->policy, HOOK_AUTHENTICATOR))
            lua_rawgeti(L, LUA_REGISTRYINDEX, s->policy->hook_ref[HOOK_AUTHENTICATOR]);
        else lua_pushnil(L);
    } else lua_pushnil(L);
    return 1;
}

static int l_server_tostring(lua_State *L)
{
    struct server_box *box = lua_touserdata(L, 1);
    if (box->s) lua_pushfstring(L, "server(%s)", box->s->sid);
    else lua_pushliteral(L, "server(closed)");
    return 1;
}

void l_server_register(lua_State *L)
{
    luaL_newmetatable(L, SERVER_MT);
    lua_pushcfunction(L, l_server_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_server_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "server");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

static lua_State *main_state(struct session *s) { return s->policy->vm.L; }

static int table_ref(struct session *s, enum lsession_table t)
{
    return t == LS_SESSION ? s->session_ref : s->envelope_ref;
}

void lsession_push_table(struct session *s, lua_State *L, enum lsession_table t)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref(s, t));
}

void lsession_push_words(lua_State *L, const char *p, size_t n)
{
    lua_newtable(L);
    int i = 1;
    size_t k = 0;
    while (k < n) {
        while (k < n && isspace((unsigned char)p[k])) k++;
        size_t start = k;
        while (k < n && !isspace((unsigned char)p[k])) k++;
        if (k > start) {
            lua_pushlstring(L, p + start, k - start);
            lua_rawseti(L, -2, i++);
        }
    }
}

static void new_envelope_table(lua_State *L)
{
    lua_createtable(L, 0, 8);
    lua_newtable(L);
    lua_setfield(L, -2, "mail_options");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "smtp_utf8");
    lua_newtable(L);
    lua_setfield(L, -2, "rcpt_tos");
    lua_newtable(L);
    lua_setfield(L, -2, "rcpt_options");
}

static void new_session_table(struct session *s, lua_State *L)
{
    lua_createtable(L, 0, 10);
    lua_createtable(L, 2, 2); /* peer: {host, port}, also by name */
    lua_pushstring(L, s->peer_host);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 1);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, s->peer_port);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, 2);
    lua_setfield(L, -2, "port");
    if (s->peer_unix) { /* { "unix:PATH", 0, unix = PATH, pid, uid, gid } */
        lua_pushstring(L, s->peer_host + strlen("unix:"));
        lua_setfield(L, -2, "unix");
        static const char *const cred[] = {"pid", "uid", "gid"};
        /* Unknown: -1, (uid_t)-1, (gid_t)-1. */
        const bool known[] = {s->peer_pid >= 0, s->peer_uid != (uid_t)-1, s->peer_gid != (gid_t)-1};
        const long v[] = {(long)s->peer_pid, (long)s->peer_uid, (long)s->peer_gid};
        for (int i = 0; i < 3; i++) {
            if (!known[i]) continue;
            lua_pushinteger(L, (lua_Integer)v[i]);
            lua_setfield(L, -2, cred[i]);
        }
    }
    lua_setfield(L, -2, "peer");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "extended_smtp");
    lua_pushboolean(L, s->verbs->lmtp);
    lua_setfield(L, -2, "lmtp");
}

bool lsession_open(struct session *s)
{
    lua_State *L = main_state(s);
    struct server_box *box = lua_newuserdata(L, sizeof *box);
    box->s = s;
    luaL_getmetatable(L, SERVER_MT);
    lua_setmetatable(L, -2);
    s->server_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    new_session_table(s, L);
    s->session_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    new_envelope_table(L);
    s->envelope_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return true;
}

void lsession_close(struct session *s)
{
    lua_State *L = main_state(s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->server_ref);
    struct server_box *box = lua_touserdata(L, -1);
    if (box) box->s = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, s->server_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, s->session_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, s->envelope_ref);
    s->server_ref = s->session_ref = s->envelope_ref = LUA_NOREF;
}

void lsession_new_envelope(struct session *s)
{
    lua_State *L = main_state(s);
    new_envelope_table(L);
    lua_rawseti(L, LUA_REGISTRYINDEX, s->envelope_ref);
}

void lsession_new_session(struct session *s)
{
    lua_State *L = main_state(s);
    new_session_table(s, L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->session_ref); /* the old one */
    lbind_rawgetfield(L, -1, "proxy_data");
    lbind_rawsetfield(L, -3, "proxy_data");
    lua_pop(L, 1);
    lua_rawseti(L, LUA_REGISTRYINDEX, s->session_ref);
}

void lsession_set_ssl(struct session *s, const char *version, const char *cipher,
                      const char *peer_pem, bool resumed)
{
    lua_State *L = main_state(s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->session_ref);
    lua_createtable(L, 0, 4);
    lua_pushboolean(L, resumed);
    lua_setfield(L, -2, "resumed");
    lua_pushstring(L, version);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, cipher);
    lua_setfield(L, -2, "cipher");
    if (peer_pem) {
        lua_pushstring(L, peer_pem);
        lua_setfield(L, -2, "peercert");
    }
    lbind_rawsetfield(L, -2, "ssl");
    lua_pop(L, 1);
}

void lsession_set_proxy_data(struct session *s, lua_State *L, const struct proxy_info *pi,
                             const char *raw, size_t raw_len)
{
    lua_createtable(L, 0, 12);
    lua_pushinteger(L, pi->version);
    lua_setfield(L, -2, "version");
    if (pi->version == 2) {
        lua_pushstring(L, pi->local ? "LOCAL" : "PROXY");
        lua_setfield(L, -2, "command");
    }
    lua_pushstring(L, proxy_family_name(pi->family));
    lua_setfield(L, -2, "family");
    lua_pushstring(L, proxy_protocol_name(pi->protocol));
    lua_setfield(L, -2, "protocol");
    if (pi->has_addr) {
        lua_pushlstring(L, pi->src_addr, pi->src_addr_len);
        lua_setfield(L, -2, "src_addr");
        lua_pushlstring(L, pi->dst_addr, pi->dst_addr_len);
        lua_setfield(L, -2, "dst_addr");
        if (pi->src_port >= 0) {
            lua_pushinteger(L, pi->src_port);
            lua_setfield(L, -2, "src_port");
            lua_pushinteger(L, pi->dst_port);
            lua_setfield(L, -2, "dst_port");
        }
    }
    lua_pushlstring(L, (const char *)pi->rest, pi->rest_len);
    lua_setfield(L, -2, "rest");
    lua_pushlstring(L, raw, raw_len);
    lua_setfield(L, -2, "whole_raw");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "valid");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "error");
    if (pi->version == 2 && pi->has_addr && pi->rest_len > 0) {
        lua_pushinteger(L, (lua_Integer)(pi->header_len - pi->rest_len)); /* 0-based, as aiosmtpd */
        lua_setfield(L, -2, "tlv_start");
    }
    if (pi->n_tlv > 0) { /* aiosmtpd's ProxyTLV names; nil when there are none */
        lua_createtable(L, 0, (int)pi->n_tlv);
        for (size_t i = 0; i < pi->n_tlv; i++) {
            const struct proxy_tlv *t = &pi->tlv[i];
            if (t->type == PROXY_TLV_SSL && t->parent == 0 && t->len >= 5) {
                lua_pushboolean(L, 1);
                lua_setfield(L, -2, "SSL");
                lua_pushinteger(L, t->value[0]);
                lua_setfield(L, -2, "SSL_CLIENT");
                lua_pushnumber(L, (lua_Number)(((uint32_t)t->value[1] << 24) |
                                               ((uint32_t)t->value[2] << 16) |
                                               ((uint32_t)t->value[3] << 8) | t->value[4]));
                lua_setfield(L, -2, "SSL_VERIFY");
                continue;
            }
            const char *name = proxy_tlv_name(t->type);
            char unknown[8];
            if (!name) {
                snprintf(unknown, sizeof unknown, "x%02X", t->type);
                name = unknown;
            }
            lua_pushlstring(L, (const char *)t->value, t->len);
            lua_setfield(L, -2, name);
        }
        lua_setfield(L, -2, "tlv");
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->session_ref);
    lua_pushvalue(L, -2);
    lbind_rawsetfield(L, -2, "proxy_data");
    lua_pop(L, 1);
}

void lsession_push_args(struct session *s, lua_State *L)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->server_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->session_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->envelope_ref);
}

/* Python truthiness for the fields aiosmtpd tests with `if not x`. */
static bool value_truthy(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING) return lua_objlen(L, idx) > 0;
    return lua_toboolean(L, idx);
}

/* Reads one table's mirrored fields; on an error pushes it onto co. */
static bool sync_table(struct session *s, lua_State *co, enum lsession_table t,
                       const char *const *keys, int n, bool *out_truthy, size_t *out_len)
{
    lua_State *L = main_state(s);
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref(s, t));
    if (lbind_getfields(L, -1, keys, n) != 0) {
        const char *e = lua_tostring(L, -1);
        if (co) {
            lua_pushfstring(co, "reading the %s table: %s", t == LS_SESSION ? "session" : "envelope",
                            e ? e : "(error object is not a string)");
            lua_pushvalue(co, -1);
        }
        lua_settop(L, top);
        return false;
    }
    for (int i = 0; i < n; i++) {
        int v = top + 2 + i;
        if (out_truthy) out_truthy[i] = value_truthy(L, v);
        if (out_len && lua_type(L, v) == LUA_TTABLE) out_len[i] = lua_objlen(L, v);
        else if (out_len) out_len[i] = 0;
    }
    lua_settop(L, top);
    return true;
}

bool lsession_sync(struct session *s, lua_State *co)
{
    static const char *const session_keys[] = {"host_name", "authenticated"};
    static const char *const envelope_keys[] = {"mail_from", "rcpt_tos"};
    bool sv[2], ev[2];
    size_t len[2];
    if (!sync_table(s, co, LS_SESSION, session_keys, 2, sv, NULL)) return false;
    if (!sync_table(s, co, LS_ENVELOPE, envelope_keys, 2, ev, len)) return false;
    s->has_host_name = sv[0];
    s->authenticated = sv[1];
    s->has_mail_from = ev[0];
    s->rcpt_count = len[1];
    return true;
}

void lsession_set_string(struct session *s, enum lsession_table t, const char *key,
                         const char *v, size_t n)
{
    lua_State *L = main_state(s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref(s, t));
    if (v) lua_pushlstring(L, v, n);
    else lua_pushnil(L);
    lbind_rawsetfield(L, -2, key);
    lua_pop(L, 1);
}

void lsession_set_bool(struct session *s, enum lsession_table t, const char *key, bool v)
{
    lua_State *L = main_state(s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref(s, t));
    lua_pushboolean(L, v);
    lbind_rawsetfield(L, -2, key);
    lua_pop(L, 1);
}

static void append_to_array(lua_State *L, int tbl, const char *key)
{
    /* value on top */
    lbind_rawgetfield(L, tbl, key);
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lbind_rawsetfield(L, tbl, key);
    }
    lua_insert(L, -2);
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
    lua_pop(L, 1);
}

void lsession_append_words(struct session *s, enum lsession_table t, const char *key,
                           const char *opts, size_t n)
{
    lua_State *L = main_state(s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref(s, t));
    int tbl = lua_gettop(L);
    lsession_push_words(L, opts, n);
    int words = lua_gettop(L);
    for (int i = 1; i <= (int)lua_objlen(L, words); i++) {
        lua_rawgeti(L, words, i);
        append_to_array(L, tbl, key);
    }
    lua_settop(L, tbl - 1);
}

void lsession_append_string(struct session *s, enum lsession_table t, const char *key,
                            const char *v, size_t n)
{
    lua_State *L = main_state(s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref(s, t));
    int tbl = lua_gettop(L);
    lua_pushlstring(L, v, n);
    append_to_array(L, tbl, key);
    lua_pop(L, 1);
}
