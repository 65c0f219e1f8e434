/* lmtp.c — LMTP (RFC 2033) as a second verb table: LHLO instead of
 * HELO/EHLO (which get 500), and after DATA one reply per accepted
 * recipient, in RCPT order (delivery.md 4). Every other command is SMTP's
 * row itself (verbs_internal.h); LHLO reuses EHLO's steps and hook
 * (handle_EHLO, as aiosmtpd's LMTP.smtp_LHLO calls smtp_EHLO). Must not
 * touch the connection or the session's state directly: it goes through
 * session_internal.h, as verbs.c does. */
#include "lmtp.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_bind.h"
#include "lua_session.h"
#include "status_line.h"
#include "verbs.h"
#include "verbs_internal.h"

static const char *const lmtp_reply_ok = "250 OK";
/* A recipient whose status handle_DATA's table lacks: the hook's error, for
 * that recipient only (the client keeps the message for it and retries). */
static const char *const lmtp_reply_missing = "451 4.3.0 Error: local error in processing";

/* ---------------------------------------------------------------- LHLO, HELO, EHLO */

static bool lhlo_check(struct session *s, struct verb_call *call)
{
    return verbs_extended_hello_check(s, call, "501 Syntax: LHLO hostname");
}

/* RFC 2033 4.1: HELO and EHLO are not LMTP commands; the replies are
 * aiosmtpd's LMTP class's. */
static void helo_refused(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)r;
    (void)call;
    session_reply(s, "500 Error: command \"HELO\" not recognized");
}

static void ehlo_refused(struct session *s, const struct hook_result *r,
                         const struct verb_call *call)
{
    (void)r;
    (void)call;
    session_reply(s, "500 Error: command \"EHLO\" not recognized");
}

/* One initializer per row: clang-format would put a field per line. */
/* clang-format off */
static const struct verb lmtp_row_ehlo = {"EHLO", NULL, 0, NULL, NULL, VERB_NO_HOOK,
                                          HOOK_RETURNS_STATUS, NULL, ehlo_refused};
static const struct verb lmtp_row_helo = {"HELO", NULL, 0, NULL, NULL, VERB_NO_HOOK,
                                          HOOK_RETURNS_STATUS, NULL, helo_refused};
static const struct verb lmtp_row_lhlo = {
    "LHLO", "LHLO hostname", VERB_KEEP_ARG | VERB_BEFORE_STARTTLS, NULL, lhlo_check, HOOK_EHLO,
    HOOK_RETURNS_LINES, verbs_ehlo_push, verbs_ehlo_proceed};
/* clang-format on */

/* ---------------------------------------------------------------- the end of DATA */

/* The recipients the replies are for, kept at the end of DATA as the
 * command's argument: each a 32-bit length and its bytes, in RCPT order.
 * A hook that edits envelope.rcpt_tos cannot change how many replies the
 * client counts on. */
static bool keep_recipients(struct session *s, struct verb_call *call)
{
    lua_State *L = s->policy->vm.L;
    lsession_push_table(s, L, LS_ENVELOPE);
    lbind_rawgetfield(L, -1, "rcpt_tos");
    size_t n = lua_type(L, -1) == LUA_TTABLE ? lua_objlen(L, -1) : 0;
    size_t total = 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        size_t len = 0;
        if (lua_type(L, -1) == LUA_TSTRING) lua_tolstring(L, -1, &len);
        total += sizeof(uint32_t) + len;
        lua_pop(L, 1);
    }
    char *buf = malloc(total ? total : 1);
    bool ok = buf != NULL;
    size_t at = 0;
    for (size_t i = 1; ok && i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        size_t len = 0;
        const char *a = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : "";
        uint32_t l32 = (uint32_t)len;
        memcpy(buf + at, &l32, sizeof l32);
        memcpy(buf + at + sizeof l32, a, len);
        at += sizeof l32 + len;
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    /* session_pending_keep replies 451 itself when memory runs out. */
    ok = ok ? session_pending_keep(s, buf, total, NULL, 0, NULL, 0) : false;
    free(buf);
    if (!ok) return false;
    call->arg = session_pending_arg(s);
    call->arg_len = s->pending_arg_len;
    return true;
}

/* Calls fn for each kept recipient in order; returns how many there are. */
static size_t each_recipient(const struct verb_call *call,
                             void (*fn)(struct session *s, const char *a, size_t n, void *ud),
                             struct session *s, void *ud)
{
    size_t count = 0;
    for (size_t at = 0; call->arg && at + sizeof(uint32_t) <= call->arg_len; count++) {
        uint32_t len;
        memcpy(&len, call->arg + at, sizeof len);
        at += sizeof len;
        if (fn) fn(s, call->arg + at, len, ud);
        at += len;
    }
    return count;
}

/* The reader's verdict (one reply per recipient when it refuses), the
 * recipients kept, and the message into the envelope for handle_DATA. */
static bool lmtp_message_check(struct session *s, struct verb_call *call)
{
    const char *refusal = verbs_message_refusal(s);
    size_t n = s->rcpt_count;
    if (refusal) {
        session_data_end(s);
        session_reset_envelope(s);
        for (size_t i = 0; i < n; i++)
            session_reply(s, refusal);
        return false;
    }
    if (!keep_recipients(s, call)) {
        /* One 451 went out; the client counts on one per recipient. */
        for (size_t i = 1; i < n; i++)
            session_reply(s, lmtp_reply_missing);
        session_data_end(s);
        session_reset_envelope(s);
        return false;
    }
    s->reply_copies = (unsigned)n;
    verbs_message_to_envelope(s);
    return true;
}

struct lmtp_replies {
    const struct hook_result *r;
    size_t delivered;
};

/* One recipient's reply: the hook's status for all, its table's entry for
 * this one (a missing or invalid entry is a hook error for it), or OK. */
static void reply_for(struct session *s, const char *addr, size_t len, void *ud)
{
    struct lmtp_replies *out = ud;
    const struct hook_result *r = out->r;
    const char *status = lmtp_reply_ok;
    size_t status_len = strlen(lmtp_reply_ok);
    if (r->outcome == HOOK_STATUS) {
        status = r->status;
        status_len = r->len;
    } else if (r->outcome == HOOK_TABLE) {
        lua_State *co = r->co;
        lua_pushlstring(co, addr, len);
        lua_rawget(co, 1);
        size_t n = 0;
        const char *line = lua_type(co, -1) == LUA_TSTRING ? lua_tolstring(co, -1, &n) : NULL;
        if (line && status_line_valid(line, n)) {
            status = line;
            status_len = n;
        } else {
            char esc[600];
            log_msg(LOG_ERROR, s->sid,
                    "hook handle_DATA failed for <%s>: its table has %s for this recipient; "
                    "expected a status line (the client gets 451 for it)",
                    log_escape(addr, len, esc, sizeof esc),
                    line ? "a string that is not one status line" : luaL_typename(co, -1));
            status = lmtp_reply_missing;
            status_len = strlen(lmtp_reply_missing);
        }
        /* The string stays on co's stack until the reply is queued. */
        session_reply_len(s, status, status_len);
        lua_pop(co, 1);
        if (status[0] == '2') out->delivered++;
        return;
    }
    session_reply_len(s, status, status_len);
    if (status[0] == '2') out->delivered++;
}

static void lmtp_message_proceed(struct session *s, const struct hook_result *r,
                                 const struct verb_call *call)
{
    size_t size = buf_len(&s->data->content);
    session_data_end(s);
    s->reply_copies = 0;
    if (r->outcome != HOOK_FAILED) { /* a failed hook's 451s went out already */
        struct lmtp_replies out = {r, 0};
        size_t n = each_recipient(call, reply_for, s, &out);
        if (out.delivered) s->messages++;
        char outcome[64];
        int len = snprintf(outcome, sizeof outcome, "LMTP: %zu of %zu recipient%s delivered",
                           out.delivered, n, n == 1 ? "" : "s");
        verbs_message_log(s, size, n, outcome, (size_t)len);
    }
    session_reset_envelope(s);
    session_pending_release(s);
}

/* The end of DATA: handle_DATA(server, session, envelope), whose status or
 * table of statuses by recipient answers each recipient. */
/* clang-format off */
static const struct verb lmtp_message = {
    "DATA", NULL, 0, NULL, lmtp_message_check, HOOK_DATA, HOOK_RETURNS_STATUS_OR_TABLE, NULL,
    lmtp_message_proceed,
};
/* clang-format on */

/* ---------------------------------------------------------------- the table */

/* SMTP's rows, with LHLO for the greetings, in alphabetical order as HELP
 * lists them. */
/* clang-format off */
static const struct verb *const lmtp_rows[] = {
    &verbs_row_auth, &verbs_row_data, &lmtp_row_ehlo,  &verbs_row_expn, &lmtp_row_helo,
    &verbs_row_help, &lmtp_row_lhlo,  &verbs_row_mail, &verbs_row_noop, &verbs_row_quit,
    &verbs_row_rcpt, &verbs_row_rset, &verbs_row_starttls, &verbs_row_vrfy,
};
/* clang-format on */

/* RFC 2033 4.1: an LMTP server supports PIPELINING and ENHANCEDSTATUSCODES. */
static const char *const lmtp_extensions[] = {"ENHANCEDSTATUSCODES", NULL};

const struct verb_table verbs_lmtp = {
    .rows = lmtp_rows,
    .n_rows = (int)(sizeof lmtp_rows / sizeof lmtp_rows[0]),
    .message = &lmtp_message,
    .hello = "LHLO",
    .extensions = lmtp_extensions,
    .lmtp = true,
    .session_init = verbs_session_init,
    .dispatch = verbs_dispatch,
    .message_done = verbs_message,
};
