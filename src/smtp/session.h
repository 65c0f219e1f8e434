/* session.h — one SMTP session: the state machine of one connection.
 * Owns the state, replies, the mail transaction, the idle timer and the
 * deferred close; the verbs are a table in verbs.c that the session reads
 * through s->verbs. Must not include mbedTLS or touch sockets directly (it
 * talks to struct conn). */
#ifndef LUASMTPD_SESSION_H
#define LUASMTPD_SESSION_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#include "buf.h"
#include "data.h"
#include "lua_hook.h"
#include "smtp_limits.h"

struct conn;
struct policy;
struct options;
struct tls_config;
struct verb;
struct verb_table;

enum session_state {
    SESSION_COMMAND, /* reading command lines */
    SESSION_DATA,    /* reading message text after 354 */
    SESSION_TLS_HANDSHAKE, /* STARTTLS or implicit TLS: input belongs to TLS */
    SESSION_PROXY,   /* waiting for the PROXY protocol header */
    SESSION_CLOSING, /* a close is scheduled; input is ignored */
};

struct session;

/* The client's next line as a wait kind: while a hook waits on it, the
 * pump hands the next line to `deliver` instead of reading a command
 * (server:challenge_auth; AUTH supplies the decoding). */
struct session_line_wait {
    struct hook_wait wait; /* armed while s->hook.wait points here */
    void (*deliver)(struct session *s, const char *line, size_t len, bool too_long);
};

#define SESSION_SECRETS_MAX 8
/* "unix:" and a socket path (sun_path: 108 bytes), or an IP address. */
#define SESSION_PEER_MAX 120

/* A client on a UNIX-domain listener (session_new). */
struct session_unix_peer {
    long pid, uid, gid; /* SO_PEERCRED, -1 when unknown */
};
/* Rows a verb table may have (one command_call_limit budget each). */
#define SESSION_COMMANDS_MAX 16
/* An address rendered by addr_parse: re-quoting can double a local part, so
 * twice the longest MAIL argument plus quotes and NUL. */
#define SMTP_ADDR_MAX                                                                          \
    (2 * (SMTP_LINE_MAX + SMTP_MAIL_SIZE_EXTRA + SMTP_MAIL_SMTPUTF8_EXTRA) + 3)

/* What a session needs from the process that accepts it, which embeds
 * one (the app layer's server): the loop, the current generation and TLS
 * configuration, the process-wide DATA budget, and how the session reports
 * its start, its end and its client address. A session never includes the
 * server itself. */
struct session_host {
    struct ev_loop *loop;
    struct policy *policy;     /* the current generation; new sessions use it */
    struct tls_config *tls;    /* STARTTLS (NULL: none); replaced on reload */
    struct data_budget data_budget; /* message text all sessions buffer */
    unsigned long next_session_id;
    size_t n_sessions;
    double drain_timeout;      /* seconds a retired generation's sessions may go on */
    void (*session_added)(struct session_host *h, struct session *s);
    void (*session_removed)(struct session_host *h, struct session *s);
    /* Counts a session from ip; returns the count including it (0: no memory). */
    long (*ip_acquire)(struct session_host *h, const char *ip);
    void (*ip_release)(struct session_host *h, const char *ip);
};

/* The commands a session reads, chosen by its listener (verbs.c has SMTP's,
 * lmtp.c LMTP's). The session calls only these; no verb asks which table it
 * is in: what differs is a field here. */
struct verb;
struct verb_table {
    const struct verb *const *rows; /* indexed by command; the index is also the
                                       slot of its command_call_limit budget */
    int n_rows;
    const struct verb *message; /* the end of DATA: the message is in */
    const char *hello;          /* the greeting "503 Error: send %s first" names */
    const char *const *extensions; /* keywords the extended greeting adds (NULL-ended) */
    bool lmtp;                  /* session.lmtp in hooks */
    void (*session_init)(struct session *s);                         /* budgets */
    void (*dispatch)(struct session *s, const char *line, size_t len); /* one command line */
    void (*message_done)(struct session *s);                          /* DATA is complete */
};

/* Blocks a session allocates only for a rare or short phase, out of line:
 * an idle connection holds only what it needs (bench (d) measures it). */
struct auth_hold; /* an auth_fail_penalty hold (auth.c) */
/* command_call_limit budgets of the few unknown names seen before the bogus
 * limit (verbs.c), from the first unknown command to the session's end. */
struct session_unknown_budgets {
    int n;
    struct {
        char name[16];
        int budget;
    } rows[SMTP_BOGUS_LIMIT];
};

/* Fields are grouped by size (pointers and 8-byte values, then 4-byte
 * ones, then the flags) so the struct has no holes: check with
 *   gdb -batch -ex 'ptype /o struct session' build/luasmtpd */
struct session {
    unsigned long id;
    char sid[24];          /* "s<id>", the log prefix */
    struct session_host *host; /* what the accepting process lends it */
    struct conn *conn;
    struct policy *policy; /* the generation this session started on (held) */
    const struct options *opt;
    char peer_host[SESSION_PEER_MAX]; /* an IP, or "unix:" and the listener's path */
    /* The client's address from a PROXY header (INET/INET6), or NULL: AUTH
     * penalties, limits and the failure log line count the real client,
     * not the proxy in front of it. */
    char *proxy_client;

    size_t rcpt_count;
    struct tls_config *pending_implicit_tls; /* TLS to start once PROXY is read */
    ev_tstamp proxy_deadline;
    long errors;           /* error replies sent (error_limit) */
    ev_tstamp line_started; /* first byte of an unfinished command line, or 0 */
    /* data_rate_min is judged per window of data_rate_grace seconds: when
     * the current one began, and the octets received by then. */
    ev_tstamp data_window_start;
    size_t data_window_bytes;
    long auth_failures;

    /* command_call_limit budgets, for known commands by index ... */
    int call_budget[SESSION_COMMANDS_MAX];
    /* ... and for unknown names (NULL until the first unknown command). */
    struct session_unknown_budgets *unknown_budget;

    struct hook_state hook;
    struct session_line_wait line_wait;
    char *auth_initial;     /* copy of the initial response (a secret), or NULL */
    size_t auth_initial_len;
    /* The login the running AUTH's mechanism handed its authenticator
     * (server:_auth_login), for the failure log line; never the password.
     * Malloc'd (at most AUTH_LOGIN_LOG_MAX bytes), NULL outside an AUTH. */
    char *auth_login;
    size_t auth_login_len;
    /* auth_fail_penalty (auth.c): a held 535 and the timer that holds the
     * session's input, NULL when there is neither. */
    struct auth_hold *auth_hold;
    /* Strings that must never reach a log line (AUTH initial response and
     * the like), scrubbed from hook error messages: SESSION_SECRETS_MAX
     * slots, NULL until the first secret and again once they are cleared. */
    char **secrets;
    /* The DATA reader: NULL until the session's first DATA (an idle
     * connection holds only what it needs: bench (d)), then kept for its
     * next messages (session_data_get/_end/_free). */
    struct data_reader *data;

    /* The commands this listener speaks (SMTP's or LMTP's table), and
     * the row whose hook is running (NULL when none is). */
    const struct verb_table *verbs;
    const struct verb *verb_running;

    /* What a command hands to its continuation across a hook call. The
     * bytes are copied at dispatch (session_pending_keep): a hook that
     * suspends outlives the input buffer and the dispatcher's stack. They
     * are released when the command proceeds. */
    void *hook_after;       /* command_after_fn of the running hook */
    char *pending;          /* argument, then address, then parameters */
    /* The block pending lives in, kept between commands while small: a
     * malloc and free per command cost more than the bytes it holds. */
    char *pending_buf;
    const char *close_reason; /* for the one "closed" log line */
    ev_timer idle;
    ev_tstamp last_activity;
    struct session *next, *prev; /* the server's registry */

    uint32_t pending_arg_len;
    uint32_t pending_addr_len;
    uint32_t pending_opts_len; /* upper-cased parameters */
    uint32_t pending_cap;      /* pending_buf's size */
    int hook_returns;       /* enum hook_returns of the running hook */
    /* How many replies the running command's answer is (LMTP's end of DATA:
     * one per recipient; 0 counts as 1): a hook error's reply is sent so
     * many times. The command that sets it resets it when it proceeds. */
    unsigned reply_copies;
    unsigned messages;        /* accepted in this session */
    enum session_state state;
    int peer_port;
    /* A UNIX-domain client: what the kernel says of it (SO_PEERCRED; -1,
     * (uid_t)-1 and (gid_t)-1 when it cannot tell). Its connections count
     * to no address. */
    pid_t peer_pid;
    uid_t peer_uid;
    gid_t peer_gid;
    int bogus_budget;
    /* Lua: the server handle box and the session/envelope tables. */
    int server_ref, session_ref, envelope_ref;
    int auth_mech_index;    /* mechanism chosen for this AUTH */

    bool peer_unix;
    /* Protocol state mirrored from the Lua tables (which hooks may change). */
    bool has_host_name;    /* session.host_name is set (non-empty) */
    bool extended_smtp;    /* last greeting was EHLO */
    bool authenticated;
    bool has_mail_from;    /* a mail transaction is open */
    bool tls_active;
    bool tls_peer_verified; /* the client's certificate verified against --tls-client-ca */
    bool greeted;          /* the 220 greeting went out */
    bool ip_counted;       /* holds an ip_acquire() count */
    bool tls_refused;      /* handle_STARTTLS said no */
    bool wait_log_response; /* challenge_auth(..., log_client_response=true) */
    bool discard_line;      /* dropping the rest of an over-long line */
    bool auth_in_progress;  /* an AUTH command is being processed */
    bool auth_final_sent;   /* a final (non-334) reply went out during AUTH */
    bool pumping;           /* inside session_pump(): don't re-enter */
    bool shutting_down;     /* server stop requested: close after this command */
};

/* Creates a session for an accepted socket and sends the greeting. A
 * UNIX-domain client has unix_peer (peer_host "unix:PATH", port 0), a TCP
 * one NULL. Returns NULL (socket closed) if memory runs out. */
struct session *session_new(struct session_host *host, const struct verb_table *verbs, int fd,
                            const char *peer_host, int peer_port,
                            const struct session_unix_peer *unix_peer,
                            struct tls_config *implicit_tls);

/* Sends one reply line (CRLF added). Lines queue and leave together when the
 * session next flushes, so replies to pipelined commands share one write. */
void session_reply(struct session *s, const char *line);
void session_replyf(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void session_reply_len(struct session *s, const char *line, size_t len);

/* Schedules a close after pending replies are flushed. */
void session_close(struct session *s, const char *why);

/* Processes buffered input until it runs out or a hook suspends. May resume
 * Lua. */
void session_pump(struct session *s);

/* Server shutdown: idle sessions get 421 now, busy ones after their command. */
void session_shutdown(struct session *s);

/* Remembers a string that must be scrubbed from log lines of this session. */
void session_add_secret(struct session *s, const char *p, size_t n);
/* Remembers the secret part of decoded SASL bytes: PLAIN's password (after
 * the last NUL), or a whole challenge response; never the login. */
void session_add_decoded_secret(struct session *s, const char *p, size_t n);
void session_clear_secrets(struct session *s);
/* Replaces every remembered secret in msg (NUL-terminated, in place). */
void session_scrub(struct session *s, char *msg);

/* Fresh envelope (connect, HELO, EHLO, RSET, STARTTLS, after DATA). */
void session_reset_envelope(struct session *s);

/* Makes the suspended hook's wait the client's next line: the pump hands
 * it to deliver. Call from a binding after hook_wait_begin() with
 * &s->line_wait.wait. */
void session_await_line(struct session *s,
                        void (*deliver)(struct session *s, const char *line, size_t len,
                                        bool too_long));

/* Logs a failed hook: the text at co's top, scrubbed and escaped, as
 * "hook <name> failed<what>: ...". Every hook error goes through it. */
void session_log_hook_error(struct session *s, lua_State *co, const char *name, const char *what);

/* The reply for a hook that failed (auth-api.md section 5), honouring
 * handle_exception. The error value is on top of co's stack. */
void session_reply_hook_error(struct session *s, lua_State *co, bool in_auth);

/* The address AUTH defences count and log: the PROXY header's client when
 * there was one, else the TCP peer. */
static inline const char *session_client_addr(const struct session *s)
{
    return s->proxy_client ? s->proxy_client : s->peer_host;
}
/* Whether that address is counted at all: UNIX-domain clients (without a
 * PROXY header naming an INET client) are local and exempt. */
static inline bool session_client_counted(const struct session *s)
{
    return s->proxy_client || !s->peer_unix;
}

#endif
