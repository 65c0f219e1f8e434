/* options.h — the SMTP options of auth-api.md section 6 (aiosmtpd's keyword
 * arguments plus luasmtpd's own): defaults, validation, and setting them
 * from a handler script's `options` table or from `-o NAME=VALUE`.
 * Command-line values win: policy.c applies the script's table first, then
 * the command line's. Must not touch sessions. */
#ifndef LUASMTPD_OPTIONS_H
#define LUASMTPD_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include "shdict.h"
#include "passhash.h"

struct lua_State;

#define OPTIONS_MAX_EXCLUDED 16 /* names in a mechanism list option */
#define OPTIONS_MAX_CALL_LIMITS 24
#define OPTIONS_NAME_MAX 32

enum bare_newline_mode { BARE_NEWLINE_REJECT, BARE_NEWLINE_NORMALIZE, BARE_NEWLINE_KEEP };

/* A list of mechanism names (upper-cased), in the order given. */
struct name_list {
    char *names[OPTIONS_MAX_EXCLUDED];
    size_t n;
    bool given; /* set by the script or -o (an empty list is a choice too) */
};

/* LOGIN's two prompts (auth_login_prompts); NULL: aiosmtpd's bytes. */
struct login_prompts {
    char *text[2];
    size_t len[2];
};

/* auth_fail_limit_per_client (mechanisms.md 3): past `count` failed AUTHs
 * from an address within `window` seconds, 454 until the window ends. */
struct fail_limit {
    bool enabled;
    long count;
    double window;
};
/* The shared dictionary auth_fail_limit_per_client counts in, declared by
 * options_finalize when the option is set (and the script did not). */
#define OPTIONS_AUTH_FAIL_DICT "_auth_fail"
#define OPTIONS_AUTH_FAIL_DICT_SIZE (1024L * 1024)

struct call_limit {
    char command[OPTIONS_NAME_MAX];
    long limit;
};

struct options {
    char *hostname;            /* NULL: the machine's FQDN, filled in at start */
    char *ident;               /* greeting suffix; NULL: "luasmtpd <version>" */
    long data_size_limit;      /* 0 = none */
    bool enable_smtputf8;
    bool require_starttls;
    bool require_starttls_set; /* set by the script or -o: the CLI default yields */
    double timeout;            /* idle seconds before 421 and close */
    bool auth_required;
    bool auth_require_tls;
    struct name_list auth_exclude_mechanism;
    struct name_list auth_mechanisms; /* what EHLO offers, in order (mechanisms.md 2) */
    struct login_prompts auth_login_prompts;
    bool call_limit_enforced;  /* command_call_limit given */
    long call_limit_default;   /* "*" (20 if a table omits it) */
    struct call_limit call_limits[OPTIONS_MAX_CALL_LIMITS];
    size_t n_call_limits;
    long auth_failure_limit;   /* 0 = unlimited */
    bool auth_allow_authzid;
    bool auth_fail_penalty;       /* delay AUTH after failures, pause before 535 */
    double auth_fail_penalty_scale; /* multiplies those delays (tests: 0.01) */
    struct fail_limit auth_fail_limit_per_client;
    char *auth_fail_store;     /* "redis://host:port[/db]": count there, not in _auth_fail */
    enum bare_newline_mode bare_newline;
    double proxy_protocol_timeout; /* 0 = PROXY protocol off */
    double hook_timeout;       /* seconds a hook may stay suspended on an event */
    long lua_memory_limit;     /* MiB a generation's Lua heap may use in hooks; 0 = none */
    long max_timers;           /* smtpd.timer.at/every pending at once; 0 = no limit */
    /* Limits on what a client controls (0 = none). */
    long max_connections;      /* in total */
    long max_connections_per_ip;
    double command_timeout;    /* seconds to complete one command line once begun */
    long data_rate_min;        /* bytes/s a DATA transfer must keep up, per window */
    double data_rate_grace;    /* the window (seconds) over which data_rate_min is judged */
    long data_memory_limit;    /* bytes of message text all sessions of a process buffer */
    long socket_line_max;      /* bytes: the longest line a cosocket receive returns */
    long rcpt_limit;           /* recipients per message */
    long error_limit;          /* error replies per session before 421 */
    long tls_ticket_lifetime;  /* seconds per ticket key period; 0 = no session tickets */
    long tls_session_cache_size; /* sessions a worker's ID cache keeps; 0 = no cache */
    /* shared_dict: the dictionaries (async-api.md 7), sorted by name. Read
     * from the generation loaded at start-up; a reload may not change it. */
    struct shdict_spec shared_dict[SHDICT_MAX];
    size_t n_shared_dict;
    /* DNS (async-api.md 5). */
    char *resolver;            /* "ip[:port],..." or NULL: /etc/resolv.conf */
    double resolver_timeout;   /* seconds for a whole query */
    long resolver_cache_size;  /* answers cached per process; 0 = no cache */
    /* The thread pool (async-api.md 6). */
    long thread_pool_size;     /* threads per process; 0 = max(1, CPUs / workers) */
    long thread_pool_queue;    /* jobs that may wait for a thread before calls get "busy" */
    struct passhash_limits crypt_max_cost; /* the costliest hash smtpd.crypt.verify works on */
    /* LMTP (RFC 2033) instead of SMTP for connections accepted from now on
     * (--lmtp is -o lmtp=true, which wins over the script). */
    bool lmtp;
    /* Permission bits of a UNIX-domain listener's socket file ("0660"),
     * read from the generation loaded at start-up, when the file is made. */
    long unix_socket_mode;
};

void options_init_defaults(struct options *o);
/* Deep copy; dst must be uninitialised or freed. Returns false on ENOMEM. */
bool options_copy(struct options *dst, const struct options *src);
void options_free(struct options *o);

/* Applies `name = value` from the Lua value at stack index idx (type-checked).
 * On error writes a message to err and returns false. */
bool options_set_lua(struct options *o, const char *name, struct lua_State *L, int idx,
                     char *err, size_t errlen);

/* Applies a command-line "-o NAME=VALUE" (value parsed by the option's type). */
bool options_set_string(struct options *o, const char *name, const char *value, char *err,
                        size_t errlen);

/* Fills what the options leave open (hostname: the machine's FQDN; ident)
 * and checks combinations. Returns false with a message on error. */
bool options_finalize(struct options *o, char *err, size_t errlen);

/* The budget of `command` under command_call_limit. */
long options_call_limit(const struct options *o, const char *command);

/* True when mechanism `name` (upper case) is in auth_exclude_mechanism. */
bool options_mechanism_excluded(const struct options *o, const char *name);

#endif
