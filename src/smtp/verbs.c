/* verbs.c — the SMTP verbs, following aiosmtpd 1.4's replies and order of
 * checks (auth-api.md 7) with the documented fixes. Each verb is a row of
 * verbs_smtp: check (state and syntax, replying when it fails) -> policy
 * (its hook, run by verbs_run for every verb; it may suspend) -> proceed
 * (the default reply on HOOK_MISSING, the hook's status otherwise). Each
 * default reply is written once, in the row's proceed. Must not touch the
 * connection, timers or the session's state directly: session.c owns the
 * lifecycle and lends what a verb needs through session_internal.h. */
#include "verbs.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <strings.h>

#include "addr.h"
#include "auth.h"
#include "log.h"
#include "lua_bind.h"
#include "lua_session.h"
#include "options.h"
#include "policy.h"
#include "session_internal.h"
#include "verbs_internal.h"
#include "smtp_limits.h"

static const char *const reply_ok = "250 OK";

/* ---------------------------------------------------------------- the policy step */

static void verbs_after(struct session *s, const struct hook_result *r)
{
    const struct verb *v = s->verb_running;
    s->verb_running = NULL;
    struct verb_call call = {
        .arg = session_pending_arg(s),
        .arg_len = s->pending_arg_len,
        .addr = session_pending_addr(s),
        .addr_len = s->pending_addr_len,
        .opts = session_pending_opts(s),
        .opts_len = s->pending_opts_len,
    };
    v->proceed(s, r, &call);
    session_pending_release(s);
}

/* The policy step of every verb: no hook -> proceed with the default at
 * once, from the dispatcher's buffers; else keep what proceed will need,
 * run the hook (it may suspend) and proceed when it finishes. */
static void verbs_run(struct session *s, const struct verb *v, struct verb_call *call)
{
    if (v->hook == VERB_NO_HOOK || !policy_has_hook(s->policy, (enum hook_id)v->hook)) {
        static const struct hook_result missing = {HOOK_MISSING, NULL, 0, NULL};
        v->proceed(s, &missing, call);
        return;
    }
    bool arg = v->flags & VERB_KEEP_ARG, path = v->flags & VERB_KEEP_PATH;
    if ((arg || path) && !session_pending_keep(s, arg ? call->arg : NULL, arg ? call->arg_len : 0,
                                               path ? call->addr : NULL, path ? call->addr_len : 0,
                                               path ? call->opts : NULL, path ? call->opts_len : 0))
        return;
    lua_State *co = session_hook_begin(s, (enum hook_id)v->hook);
    int nextra = v->push ? v->push(s, co, call) : 0;
    s->verb_running = v;
    session_hook_run(s, nextra, v->returns, verbs_after);
}

/* Sends the hook's status, or `fallback` when it asked for the default. */
static void reply_status_or(struct session *s, const struct hook_result *r, const char *fallback)
{
    if (r->outcome == HOOK_STATUS)
        session_reply_len(s, r->status, r->len);
    else if (r->outcome == HOOK_MISSING && fallback)
        session_reply(s, fallback);
}

/* ---------------------------------------------------------------- checks */

static bool arg_given(const char *arg, size_t len)
{
    return arg && len > 0;
}

/* aiosmtpd's check_helo_needed; the table names its greeting (LHLO in LMTP). */
static bool need_helo(struct session *s)
{
    if (s->has_host_name) return false;
    session_replyf(s, "503 Error: send %s first", s->verbs->hello);
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

/* A command that takes no argument: 501 with its syntax when given one. */
static bool no_arg(struct session *s, const struct verb_call *call, const char *syntax)
{
    if (!arg_given(call->arg, call->arg_len)) return true;
    session_replyf(s, "501 Syntax: %s", syntax);
    return false;
}

static int push_arg(struct session *s, lua_State *co, const struct verb_call *call)
{
    (void)s;
    if (call->arg)
        lua_pushlstring(co, call->arg, call->arg_len);
    else
        lua_pushnil(co);
    return 1;
}

static int push_addr(struct session *s, lua_State *co, const struct verb_call *call)
{
    (void)s;
    lua_pushlstring(co, call->addr, call->addr_len);
    return 1;
}

static int push_path(struct session *s, lua_State *co, const struct verb_call *call)
{
    (void)s;
    lua_pushlstring(co, call->addr, call->addr_len);
    lsession_push_words(co, call->opts, call->opts_len);
    return 2;
}

/* ---------------------------------------------------------------- HELO, EHLO */

static bool helo_check(struct session *s, struct verb_call *call)
{
    if (!arg_given(call->arg, call->arg_len)) {
        session_reply(s, "501 Syntax: HELO hostname");
        return false;
    }
    session_reset_envelope(s);
    s->extended_smtp = false;
    lsession_set_bool(s, LS_SESSION, "extended_smtp", false);
    return true;
}

static void helo_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_set_string(s, LS_SESSION, "host_name", call->arg, call->arg_len);
        s->has_host_name = call->arg_len > 0;
        session_replyf(s, "250 %s", s->opt->hostname);
    } else if (r->outcome == HOOK_STATUS)
        session_reply_len(s, r->status, r->len);
}

/* The most lines ehlo_lines writes: the hostname, six keywords and the
 * table's own extensions. */
#define EHLO_LINES_MAX 10

static size_t ehlo_lines(struct session *s, char lines[][96])
{
    size_t n = 0;
    const struct options *o = s->opt;
    snprintf(lines[n++], 96, "250-%s", o->hostname);
    if (o->data_size_limit) snprintf(lines[n++], 96, "250-SIZE %ld", o->data_size_limit);
    snprintf(lines[n++], 96, "250-8BITMIME");
    if (o->enable_smtputf8) snprintf(lines[n++], 96, "250-SMTPUTF8");
    snprintf(lines[n++], 96, "250-PIPELINING");
    if (s->host->tls && !s->tls_active) snprintf(lines[n++], 96, "250-STARTTLS");
    for (const char *const *e = s->verbs->extensions; e && *e && n < EHLO_LINES_MAX; e++)
        snprintf(lines[n++], 96, "250-%s", *e);
    return n;
}

static bool auth_offered(struct session *s)
{
    if (s->opt->auth_require_tls && !s->tls_active) return false;
    for (size_t i = 0; i < s->policy->n_mechs; i++)
        if (auth_mechanism_available(s, &s->policy->mechs[i])) return true;
    return false;
}

static void ehlo_push_auth_line(struct session *s, luaL_Buffer *b)
{
    luaL_addstring(b, "250-AUTH");
    for (size_t i = 0; i < s->policy->n_mechs; i++) {
        if (!auth_mechanism_available(s, &s->policy->mechs[i])) continue;
        luaL_addchar(b, ' ');
        luaL_addstring(b, s->policy->mechs[i].name);
    }
}

static void ehlo_reply_default(struct session *s)
{
    char lines[EHLO_LINES_MAX][96];
    size_t n = ehlo_lines(s, lines);
    for (size_t i = 0; i < n; i++)
        session_reply(s, lines[i]);
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

bool verbs_extended_hello_check(struct session *s, struct verb_call *call, const char *syntax)
{
    if (!arg_given(call->arg, call->arg_len)) {
        session_reply(s, syntax);
        return false;
    }
    session_reset_envelope(s);
    s->extended_smtp = true;
    lsession_set_bool(s, LS_SESSION, "extended_smtp", true);
    return true;
}

static bool ehlo_check(struct session *s, struct verb_call *call)
{
    return verbs_extended_hello_check(s, call, "501 Syntax: EHLO hostname");
}

/* handle_EHLO(..., hostname, responses): the default lines, which its
 * returned list replaces. */
int verbs_ehlo_push(struct session *s, lua_State *co, const struct verb_call *call)
{
    char lines[EHLO_LINES_MAX][96];
    size_t n = ehlo_lines(s, lines);
    lua_pushlstring(co, call->arg, call->arg_len);
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
    return 2;
}

void verbs_ehlo_proceed(struct session *s, const struct hook_result *r,
                        const struct verb_call *call)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_set_string(s, LS_SESSION, "host_name", call->arg, call->arg_len);
        s->has_host_name = true;
        ehlo_reply_default(s);
    } else if (r->outcome == HOOK_LINES) {
        for (int i = 1; i <= (int)lua_objlen(r->co, 1); i++) {
            lua_rawgeti(r->co, 1, i);
            size_t n;
            const char *line = lua_tolstring(r->co, -1, &n);
            session_reply_len(s, line, n);
            lua_pop(r->co, 1);
        }
    }
}

/* ---------------------------------------------------------------- simple verbs */

static void noop_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)call;
    reply_status_or(s, r, reply_ok);
}

static bool quit_check(struct session *s, struct verb_call *call)
{
    return no_arg(s, call, "QUIT");
}

static void quit_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)call;
    reply_status_or(s, r, "221 Bye");
    session_close(s, "QUIT");
}

static bool rset_check(struct session *s, struct verb_call *call)
{
    if (!no_arg(s, call, "RSET")) return false;
    session_reset_envelope(s);
    return true;
}

static void rset_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)call;
    reply_status_or(s, r, reply_ok);
}

static void expn_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)r;
    (void)call;
    session_reply(s, "502 EXPN not implemented");
}

static bool help_check(struct session *s, struct verb_call *call)
{
    (void)call;
    return !need_auth(s, "HELP");
}

static bool syntax_available(struct session *s, const struct verb *v)
{
    if (!v->syntax) return false;
    if (v->flags & VERB_NEEDS_TLS) return s->host->tls != NULL;
    return true;
}

static void help_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)r;
    const struct verb_table *t = s->verbs;
    const char *arg = call->arg;
    size_t len = call->arg_len;
    int code = 250;
    if (arg_given(arg, len)) {
        for (int i = 0; i < t->n_rows; i++) {
            const struct verb *v = t->rows[i];
            if (strlen(v->name) == len && !strncasecmp(v->name, arg, len) &&
                syntax_available(s, v)) {
                bool ext = s->extended_smtp && (v->flags & VERB_HELP_PARAMS);
                session_replyf(s, "250 Syntax: %s%s", v->syntax,
                               ext ? " [SP <mail-parameters>]" : "");
                return;
            }
        }
        code = 501;
    }
    char list[256] = "";
    for (int i = 0; i < t->n_rows; i++) {
        if (!syntax_available(s, t->rows[i])) continue;
        if (list[0]) strcat(list, " ");
        strcat(list, t->rows[i]->name);
    }
    session_replyf(s, "%d Supported commands: %s", code, list);
}

static bool vrfy_check(struct session *s, struct verb_call *call)
{
    if (need_auth(s, "VRFY")) return false;
    if (!arg_given(call->arg, call->arg_len)) {
        session_reply(s, "501 Syntax: VRFY <address>");
        return false;
    }
    struct addr_result a = {call->addr_buf, 0, NULL, 0};
    enum addr_status st = addr_parse(call->arg, call->arg_len, &a, SMTP_ADDR_MAX);
    if (st == ADDR_MALFORMED) {
        session_replyf(s, "502 Could not VRFY %.*s", (int)call->arg_len, call->arg);
        return false;
    }
    call->addr = st == ADDR_OK ? a.addr : "";
    call->addr_len = st == ADDR_OK ? a.addr_len : 0;
    return true;
}

static void vrfy_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)call;
    reply_status_or(s, r, "252 Cannot VRFY user, but will accept message and attempt delivery");
}

static bool starttls_check(struct session *s, struct verb_call *call)
{
    if (!no_arg(s, call, "STARTTLS")) return false;
    if (s->tls_active) {
        session_reply(s, "554 5.5.1 Error: TLS already active"); /* fix */
        return false;
    }
    if (!s->host->tls) {
        session_reply(s, "454 TLS not available");
        return false;
    }
    return true;
}

static void starttls_proceed(struct session *s, const struct hook_result *r,
                             const struct verb_call *call)
{
    (void)r;
    (void)call;
    session_reply(s, "220 Ready to start TLS");
    session_start_tls(s);
}

/* AUTH keeps its own steps in auth.c (mechanisms, challenges). */
static void auth_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)r;
    auth_command(s, call->arg, call->arg_len);
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
    while (n && isspace((unsigned char)*p))
        p++, n--;
    while (n && isspace((unsigned char)p[n - 1]))
        n--;
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
        } else if (c < 33 || c > 126 || c == '=')
            return false;
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
        while (k < n && isspace((unsigned char)p[k]))
            k++;
        if (k >= n) break;
        size_t start = k;
        while (k < n && !isspace((unsigned char)p[k]))
            k++;
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

/* Upper-cases the parameters into call->opts_buf (aiosmtpd upper-cases the
 * whole parameter string first) and splits them. */
static int path_params(struct verb_call *call, const struct addr_result *a, struct mail_param *ps)
{
    for (size_t i = 0; i < a->rest_len; i++)
        call->opts_buf[i] = (char)toupper((unsigned char)a->rest[i]);
    call->opts_buf[a->rest_len] = '\0';
    call->addr = a->addr;
    call->addr_len = a->addr_len;
    call->opts = call->opts_buf;
    call->opts_len = a->rest_len;
    return parse_params(call->opts_buf, a->rest_len, ps, MAX_PARAMS);
}

static size_t mail_line_max(const struct session *s)
{
    if (!s->extended_smtp) return SMTP_LINE_MAX;
    return SMTP_LINE_MAX + (s->opt->data_size_limit ? SMTP_MAIL_SIZE_EXTRA : 0) +
           (s->opt->enable_smtputf8 ? SMTP_MAIL_SMTPUTF8_EXTRA : 0);
}

static bool mail_check(struct session *s, struct verb_call *call)
{
    if (need_helo(s)) return false;
    if (need_auth(s, "MAIL")) return false;
    const char *syntaxerr = s->extended_smtp
                                ? "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
                                : "501 Syntax: MAIL FROM: <address>";
    struct addr_result a = {call->addr_buf, 0, NULL, 0};
    if (!parse_path(s, "FROM:", call->arg, call->arg_len, syntaxerr, &a, SMTP_ADDR_MAX))
        return false;
    if (s->has_mail_from) {
        session_reply(s, "503 Error: nested MAIL command");
        return false;
    }
    struct mail_param ps[MAX_PARAMS];
    int np = path_params(call, &a, ps);
    const char *fail = NULL;
    struct mail_param *p;
    if (np < 0) fail = syntaxerr;
    if (!fail && (p = take_param(ps, &np, "BODY")) &&
        !(p->has_value && ((p->value_len == 4 && !memcmp(p->value, "7BIT", 4)) ||
                           (p->value_len == 8 && !memcmp(p->value, "8BITMIME", 8)))))
        fail = "501 Error: BODY can only be one of 7BIT, 8BITMIME";
    bool smtputf8 = false;
    if (!fail && (p = take_param(ps, &np, "SMTPUTF8"))) {
        if (p->has_value)
            fail = "501 Error: SMTPUTF8 takes no arguments";
        else if (!s->opt->enable_smtputf8)
            fail = "501 Error: SMTPUTF8 disabled";
        else
            smtputf8 = true;
    }
    if (!fail) lsession_set_bool(s, LS_ENVELOPE, "smtp_utf8", smtputf8);
    if (!fail && (p = take_param(ps, &np, "SIZE"))) {
        bool digits = p->has_value;
        for (size_t i = 0; digits && i < p->value_len; i++)
            digits = isdigit((unsigned char)p->value[i]);
        if (!digits)
            fail = syntaxerr;
        else if (s->opt->data_size_limit) {
            /* Compare without overflow: more digits than the limit has is larger. */
            char lim[32];
            int ll = snprintf(lim, sizeof lim, "%ld", s->opt->data_size_limit);
            const char *v = p->value;
            size_t vl = p->value_len;
            while (vl > 1 && *v == '0')
                v++, vl--;
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
        return false;
    }
    return true;
}

/* What MAIL and RCPT share after their default: the hook's status, and the
 * path in the debug log unless the hook failed. */
static void path_reply_and_log(struct session *s, const struct hook_result *r,
                               const struct verb_call *call, const char *what)
{
    if (r->outcome == HOOK_STATUS) session_reply_len(s, r->status, r->len);
    if (r->outcome != HOOK_FAILED && log_enabled(LOG_DEBUG)) {
        char esc[600];
        log_msg(LOG_DEBUG, s->sid, "%s: %s", what,
                log_escape(call->addr, call->addr_len, esc, sizeof esc));
    }
}

static void mail_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_set_string(s, LS_ENVELOPE, "mail_from", call->addr, call->addr_len);
        lsession_append_words(s, LS_ENVELOPE, "mail_options", call->opts, call->opts_len);
        s->has_mail_from = true;
        session_reply(s, reply_ok);
    }
    path_reply_and_log(s, r, call, "sender");
}

static bool rcpt_check(struct session *s, struct verb_call *call)
{
    if (need_helo(s)) return false;
    if (need_auth(s, "RCPT")) return false;
    if (!s->has_mail_from) {
        session_reply(s, "503 Error: need MAIL command");
        return false;
    }
    if (s->opt->rcpt_limit && s->rcpt_count >= (size_t)s->opt->rcpt_limit) {
        session_reply(s, "452 4.5.3 Error: too many recipients");
        return false;
    }
    const char *syntaxerr = s->extended_smtp
                                ? "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
                                : "501 Syntax: RCPT TO: <address>";
    struct addr_result a = {call->addr_buf, 0, NULL, 0};
    if (!parse_path(s, "TO:", call->arg, call->arg_len, syntaxerr, &a, SMTP_ADDR_MAX)) return false;
    struct mail_param ps[MAX_PARAMS];
    int np = path_params(call, &a, ps);
    if (np != 0) {
        session_reply(s, np < 0 ? syntaxerr
                                : "555 RCPT TO parameters not recognized or not implemented");
        return false;
    }
    return true;
}

static void rcpt_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    if (r->outcome == HOOK_MISSING) {
        lsession_append_string(s, LS_ENVELOPE, "rcpt_tos", call->addr, call->addr_len);
        lsession_append_words(s, LS_ENVELOPE, "rcpt_options", call->opts, call->opts_len);
        s->rcpt_count++;
        session_reply(s, reply_ok);
    }
    path_reply_and_log(s, r, call, "recip");
}

/* ---------------------------------------------------------------- DATA */

static bool data_check(struct session *s, struct verb_call *call)
{
    if (need_helo(s)) return false;
    if (need_auth(s, "DATA")) return false;
    if (s->rcpt_count == 0) {
        session_reply(s, "503 Error: need RCPT command");
        return false;
    }
    return no_arg(s, call, "DATA");
}

static void data_proceed(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)r;
    (void)call;
    if (!session_data_get(s)) return; /* out of memory: a 451 went out */
    session_reply(s, "354 End data with <CR><LF>.<CR><LF>");
    session_begin_data(s);
}

const char *verbs_message_refusal(struct session *s)
{
    const char *refusal = NULL;
    switch (s->data->verdict) {
    case DATA_TOO_LONG:
        refusal = "500 Line too long (see RFC5321 4.5.3.1.6)";
        break;
    case DATA_TOO_MUCH:
        refusal = "552 Error: Too much mail data";
        break;
    case DATA_BARE_NEWLINE:
        /* Says what to do: curl shows only "Weird server reply" otherwise. */
        refusal = "550 5.5.2 Error: bare CR or LF in message data; use CRLF line endings";
        break;
    /* data_memory_limit: temporary, the client keeps the message and retries. */
    case DATA_NO_MEMORY:
        refusal = "452 4.3.1 Error: insufficient system storage";
        break;
    case DATA_OK:
        break;
    }
    if (refusal) log_msg(LOG_INFO, s->sid, "message refused: %s", refusal);
    return refusal;
}

void verbs_message_to_envelope(struct session *s)
{
    const char *content = buf_head(&s->data->content);
    size_t n = buf_len(&s->data->content);
    lua_State *L = s->policy->vm.L;
    lsession_push_table(s, L, LS_ENVELOPE);
    lua_pushlstring(L, content ? content : "", n);
    lua_pushvalue(L, -1);
    lbind_rawsetfield(L, -3, "content");
    lbind_rawsetfield(L, -2, "original_content");
    lua_pop(L, 1);
}

/* The reader's verdict, and the message into the envelope for handle_DATA. */
static bool message_check(struct session *s, struct verb_call *call)
{
    (void)call;
    const char *refusal = verbs_message_refusal(s);
    if (refusal) {
        session_data_end(s);
        session_reset_envelope(s);
        session_reply(s, refusal);
        return false;
    }
    verbs_message_to_envelope(s);
    return true;
}

void verbs_message_log(struct session *s, size_t size, size_t n_rcpt, const char *outcome,
                       size_t outcome_len)
{
    char from[300] = "";
    lua_State *L = s->policy->vm.L;
    lsession_push_table(s, L, LS_ENVELOPE);
    lbind_rawgetfield(L, -1, "mail_from");
    size_t n = 0;
    const char *f = lua_tolstring(L, -1, &n);
    if (f) log_escape(f, n, from, sizeof from);
    lua_pop(L, 2);
    char esc[400];
    log_msg(LOG_INFO, s->sid, "message: %zu bytes from <%s> for %zu recipient%s: %s", size, from,
            n_rcpt, n_rcpt == 1 ? "" : "s",
            log_escape(outcome, outcome_len > 80 ? 80 : outcome_len, esc, sizeof esc));
}

static void message_proceed(struct session *s, const struct hook_result *r,
                            const struct verb_call *call)
{
    (void)call;
    size_t size = buf_len(&s->data->content);
    session_data_end(s);
    if (r->outcome != HOOK_FAILED) {
        /* One line per message: size, sender, recipients, and the reply. */
        const char *reply = r->outcome == HOOK_STATUS ? r->status : reply_ok;
        size_t reply_len = r->outcome == HOOK_STATUS ? r->len : strlen(reply_ok);
        if (reply[0] == '2') s->messages++;
        verbs_message_log(s, size, s->rcpt_count, reply, reply_len);
    }
    session_reset_envelope(s);
    reply_status_or(s, r, reply_ok);
}

/* ---------------------------------------------------------------- the table */

static size_t auth_line_max(const struct session *s)
{
    (void)s;
    return AUTH_LINE_MAX; /* RFC 4954 4 (fix) */
}

/* aiosmtpd's smtp_* methods; the table lists them in its (alphabetical)
 * order, as HELP does. */
/* One initializer per row: clang-format would put a field per line. */
/* clang-format off */
const struct verb verbs_row_auth = {"AUTH", "AUTH <mechanism>", VERB_SECRET_ARG, auth_line_max,
                                    NULL, VERB_NO_HOOK, HOOK_RETURNS_STATUS, NULL, auth_proceed};
const struct verb verbs_row_data = {"DATA", "DATA", 0, NULL, data_check, VERB_NO_HOOK,
                                    HOOK_RETURNS_STATUS, NULL, data_proceed};
static const struct verb smtp_row_ehlo = {
    "EHLO", "EHLO hostname", VERB_KEEP_ARG | VERB_BEFORE_STARTTLS, NULL, ehlo_check, HOOK_EHLO,
    HOOK_RETURNS_LINES, verbs_ehlo_push, verbs_ehlo_proceed};
const struct verb verbs_row_expn = {"EXPN", NULL, 0, NULL, NULL, VERB_NO_HOOK,
                                    HOOK_RETURNS_STATUS, NULL, expn_proceed};
static const struct verb smtp_row_helo = {"HELO", "HELO hostname", VERB_KEEP_ARG, NULL,
                                          helo_check, HOOK_HELO, HOOK_RETURNS_STATUS, push_arg,
                                          helo_proceed};
const struct verb verbs_row_help = {"HELP", "HELP [command]", 0, NULL, help_check, VERB_NO_HOOK,
                                    HOOK_RETURNS_STATUS, NULL, help_proceed};
const struct verb verbs_row_mail = {"MAIL", "MAIL FROM: <address>",
                                    VERB_KEEP_PATH | VERB_HELP_PARAMS, mail_line_max, mail_check,
                                    HOOK_MAIL, HOOK_RETURNS_STATUS, push_path, mail_proceed};
const struct verb verbs_row_noop = {"NOOP", "NOOP [ignored]", VERB_BEFORE_STARTTLS, NULL, NULL,
                                    HOOK_NOOP, HOOK_RETURNS_STATUS, push_arg, noop_proceed};
const struct verb verbs_row_quit = {"QUIT", "QUIT", VERB_BEFORE_STARTTLS | VERB_WHEN_REFUSED,
                                    NULL, quit_check, HOOK_QUIT, HOOK_RETURNS_STATUS, NULL,
                                    quit_proceed};
const struct verb verbs_row_rcpt = {"RCPT", "RCPT TO: <address>",
                                    VERB_KEEP_PATH | VERB_HELP_PARAMS, NULL, rcpt_check, HOOK_RCPT,
                                    HOOK_RETURNS_STATUS, push_path, rcpt_proceed};
const struct verb verbs_row_rset = {"RSET", "RSET", 0, NULL, rset_check, HOOK_RSET,
                                    HOOK_RETURNS_STATUS, NULL, rset_proceed};
const struct verb verbs_row_starttls = {"STARTTLS", "STARTTLS",
                                        VERB_BEFORE_STARTTLS | VERB_NEEDS_TLS, NULL,
                                        starttls_check, VERB_NO_HOOK, HOOK_RETURNS_STATUS, NULL,
                                        starttls_proceed};
const struct verb verbs_row_vrfy = {"VRFY", "VRFY <address>", 0, NULL, vrfy_check, HOOK_VRFY,
                                    HOOK_RETURNS_STATUS, push_addr, vrfy_proceed};

static const struct verb *const smtp_rows[] = {
    &verbs_row_auth, &verbs_row_data, &smtp_row_ehlo, &verbs_row_expn,     &smtp_row_helo,
    &verbs_row_help, &verbs_row_mail, &verbs_row_noop, &verbs_row_quit,    &verbs_row_rcpt,
    &verbs_row_rset, &verbs_row_starttls, &verbs_row_vrfy,
};
/* clang-format on */

/* The end of DATA: handle_DATA(server, session, envelope). */
static const struct verb smtp_message = {
    "DATA", NULL, 0, NULL, message_check, HOOK_DATA, HOOK_RETURNS_STATUS, NULL, message_proceed,
};

const struct verb_table verbs_smtp = {
    .rows = smtp_rows,
    .n_rows = (int)(sizeof smtp_rows / sizeof smtp_rows[0]),
    .message = &smtp_message,
    .hello = "HELO",
    .extensions = NULL,
    .lmtp = false,
    .session_init = verbs_session_init,
    .dispatch = verbs_dispatch,
    .message_done = verbs_message,
};

/* ---------------------------------------------------------------- dispatch */

/* A command_call_limit as a per-session counter (int: the session is kept
 * small; a limit beyond INT_MAX is no limit in practice). */
static int call_budget_of(long limit) { return limit > INT_MAX ? INT_MAX : (int)limit; }

void verbs_session_init(struct session *s)
{
    int n = s->verbs->n_rows < SESSION_COMMANDS_MAX ? s->verbs->n_rows : SESSION_COMMANDS_MAX;
    for (int i = 0; i < n; i++)
        s->call_budget[i] = call_budget_of(options_call_limit(s->opt, s->verbs->rows[i]->name));
}

static int find_command(const struct verb_table *t, const char *name, size_t n)
{
    for (int i = 0; i < t->n_rows; i++)
        if (strlen(t->rows[i]->name) == n && !memcmp(t->rows[i]->name, name, n)) return i;
    return -1;
}

/* The budgets of unknown names are out of line, from the first unknown
 * command to the session's end (session_free frees them): an idle
 * connection holds only what it needs (bench (d)). NULL (and a 451) if
 * memory ran out. */
static struct session_unknown_budgets *unknown_budgets_get(struct session *s)
{
    if (!s->unknown_budget && !(s->unknown_budget = calloc(1, sizeof *s->unknown_budget)))
        session_reply(s, "451 4.3.0 Error: local error in processing");
    return s->unknown_budget;
}

static bool spend_call_budget(struct session *s, int cmd, const char *name)
{
    if (!s->opt->call_limit_enforced) return true;
    int *budget = NULL;
    if (cmd >= 0)
        budget = &s->call_budget[cmd];
    else {
        struct session_unknown_budgets *u = unknown_budgets_get(s);
        if (!u) return false;
        for (int i = 0; i < u->n && !budget; i++)
            if (!strcmp(u->rows[i].name, name)) budget = &u->rows[i].budget;
        if (!budget && u->n < SMTP_BOGUS_LIMIT && strlen(name) < sizeof u->rows[0].name) {
            int i = u->n++;
            snprintf(u->rows[i].name, sizeof u->rows[i].name, "%s", name);
            u->rows[i].budget = call_budget_of(options_call_limit(s->opt, name));
            budget = &u->rows[i].budget;
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

static void log_command(struct session *s, const char *line, size_t len, const struct verb *v,
                        const char *arg, size_t arg_len)
{
    if (!log_enabled(LOG_DEBUG)) return;
    char esc[1024];
    if (v && (v->flags & VERB_SECRET_ARG) && arg_len > 0) {
        /* Log only the mechanism: an initial response is a credential. */
        size_t mech = 0;
        while (mech < arg_len && !isspace((unsigned char)arg[mech]))
            mech++;
        bool has_response = false;
        for (size_t i = mech; i < arg_len; i++)
            if (!isspace((unsigned char)arg[i])) has_response = true;
        char m[64];
        log_escape(arg, mech, m, sizeof m);
        log_msg(LOG_DEBUG, s->sid, ">> %s %s%s", v->name, m, has_response ? " ********" : "");
        return;
    }
    log_msg(LOG_DEBUG, s->sid, ">> %s", log_escape(line, len, esc, sizeof esc));
}

static bool is_space_byte(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

void verbs_dispatch(struct session *s, const char *line, size_t len)
{
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
        while (arg_len && is_space_byte((unsigned char)*arg))
            arg++, arg_len--;
        while (arg_len && is_space_byte((unsigned char)arg[arg_len - 1]))
            arg_len--;
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
    for (size_t i = 0; i < name_len; i++)
        name[i] = (char)toupper((unsigned char)line[i]);
    name[name_len] = '\0';
    const struct verb_table *t = s->verbs;
    int cmd = cmd_len < sizeof name ? find_command(t, name, cmd_len) : -1;
    const struct verb *v = cmd >= 0 ? t->rows[cmd] : NULL;
    log_command(s, line, len, v, arg, arg_len);

    size_t max = v && v->line_max ? v->line_max(s) : SMTP_LINE_MAX;
    if (len > max) {
        session_reply(s, "500 Command line too long");
        return;
    }
    if (s->tls_refused && !(v && (v->flags & VERB_WHEN_REFUSED))) {
        session_reply(s, "554 Command refused due to lack of security");
        return;
    }
    if (s->opt->require_starttls && s->host->tls && !s->tls_active &&
        !(v && (v->flags & VERB_BEFORE_STARTTLS))) {
        session_reply(s, "530 Must issue a STARTTLS command first");
        return;
    }
    if (!spend_call_budget(s, cmd, name)) return;
    if (!v) {
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
    char addr_buf[SMTP_ADDR_MAX];
    char opts_buf[AUTH_LINE_MAX + 1];
    struct verb_call call = {arg, arg_len, NULL, 0, NULL, 0, addr_buf, opts_buf};
    if (v->check && !v->check(s, &call)) return;
    verbs_run(s, v, &call);
}

void verbs_message(struct session *s)
{
    const struct verb *v = s->verbs->message;
    struct verb_call call = {NULL, 0, NULL, 0, NULL, 0, NULL, NULL};
    if (v->check && !v->check(s, &call)) return;
    verbs_run(s, v, &call);
}
