/* verbs_internal.h — what the verb tables share (verbs.c has SMTP's,
 * lmtp.c LMTP's): the row type, the call a row's functions see, and the
 * rows and row functions a second table reuses rather than copies. Must not
 * be included outside the verb tables (verbs.c, lmtp.c). */
#ifndef LUASMTPD_VERBS_INTERNAL_H
#define LUASMTPD_VERBS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "session.h"
#include "session_internal.h"

/* What a command line carries to its hook and its continuation. At
 * dispatch the pointers are into the input buffer and the dispatcher's
 * stack; after a hook they are into the session's kept copy. */
struct verb_call {
    const char *arg; /* the argument; NULL when none was given */
    size_t arg_len;
    const char *addr; /* MAIL, RCPT, VRFY: the parsed address */
    size_t addr_len;
    const char *opts; /* MAIL, RCPT: the upper-cased parameters */
    size_t opts_len;
    char *addr_buf; /* dispatch only: room for addr (SMTP_ADDR_MAX) */
    char *opts_buf; /* ... and for opts (AUTH_LINE_MAX + 1) */
};

#define VERB_NO_HOOK (-1)

enum verb_flags {
    VERB_KEEP_ARG = 1 << 0,        /* proceed reads call->arg after a hook */
    VERB_KEEP_PATH = 1 << 1,       /* ... call->addr and call->opts */
    VERB_BEFORE_STARTTLS = 1 << 2, /* allowed while require_starttls waits */
    VERB_WHEN_REFUSED = 1 << 3,    /* allowed after handle_STARTTLS refused */
    VERB_NEEDS_TLS = 1 << 4,       /* listed by HELP only if TLS is configured */
    VERB_HELP_PARAMS = 1 << 5,     /* HELP adds the mail-parameters after EHLO */
    VERB_SECRET_ARG = 1 << 6,      /* log only the first word (AUTH) */
};

struct verb {
    const char *name;
    const char *syntax; /* HELP text (aiosmtpd's @syntax); NULL: not listed */
    unsigned flags;
    /* The longest line this command may be; NULL: SMTP_LINE_MAX. */
    size_t (*line_max)(const struct session *s);
    /* The state check: replies and returns false when the command stops
     * here; may fill call->addr/opts. NULL: always goes on. */
    bool (*check)(struct session *s, struct verb_call *call);
    int hook;                  /* enum hook_id, or VERB_NO_HOOK */
    enum hook_returns returns; /* what the hook is expected to return */
    /* Pushes the hook's arguments after (server, session, envelope);
     * returns how many. NULL: none. */
    int (*push)(struct session *s, lua_State *co, const struct verb_call *call);
    /* Goes on with the result: HOOK_MISSING is the default. */
    void (*proceed)(struct session *s, const struct hook_result *r, const struct verb_call *call);
};

/* The rows both tables list as they are (aiosmtpd's smtp_* methods). */
extern const struct verb verbs_row_auth, verbs_row_data, verbs_row_expn, verbs_row_help,
    verbs_row_mail, verbs_row_noop, verbs_row_quit, verbs_row_rcpt, verbs_row_rset,
    verbs_row_starttls, verbs_row_vrfy;

/* EHLO's steps, which LHLO shares: the greeting's state reset (replies
 * `syntax` and returns false without a hostname), handle_EHLO's arguments
 * (the hostname and the default lines of s->verbs) and its proceed. */
bool verbs_extended_hello_check(struct session *s, struct verb_call *call, const char *syntax);
int verbs_ehlo_push(struct session *s, lua_State *co, const struct verb_call *call);
void verbs_ehlo_proceed(struct session *s, const struct hook_result *r,
                        const struct verb_call *call);

/* The end of DATA: the reader's refusal (logged; the caller replies and
 * resets), or NULL when the message is in. */
const char *verbs_message_refusal(struct session *s);
/* Puts the message into envelope.content and envelope.original_content. */
void verbs_message_to_envelope(struct session *s);
/* Logs the one line per message: size, sender, n recipients, `outcome`. */
void verbs_message_log(struct session *s, size_t size, size_t n, const char *outcome,
                       size_t outcome_len);

#endif
