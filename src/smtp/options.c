/* options.c — option defaults, types and parsing. One table lists every
 * option with its type, so the script path and the command-line path check
 * exactly the same things. */
#include "options.h"

#include "dns.h"
#include "pool.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <strings.h>
#include <unistd.h>

/* aiosmtpd's defaults (smtp.py): DATA_SIZE_DEFAULT = 2**25, timeout 300,
 * CALL_LIMIT_DEFAULT = 20; auth_failure_limit is ours (auth-api.md 4.6). */
#define DEFAULT_DATA_SIZE_LIMIT 33554432L
#define DEFAULT_TIMEOUT 300.0
#define DEFAULT_CALL_LIMIT 20L
#define DEFAULT_AUTH_FAILURE_LIMIT 5L
/* auth_fail_penalty's delays as Dovecot and OpenSMTPD have them. */
#define DEFAULT_AUTH_FAIL_PENALTY_SCALE 1.0
/* auth_fail_limit_per_client's fields when a table leaves one out. */
#define DEFAULT_AUTH_FAIL_LIMIT_COUNT 10L
#define DEFAULT_AUTH_FAIL_LIMIT_WINDOW 600.0
/* Ours: how long a suspended hook may wait, and the Lua heap of a generation. */
#define DEFAULT_HOOK_TIMEOUT 60.0
/* smtpd.timer.at/every pending at once in one generation (OpenResty's
 * lua_max_pending_timers has the same default). */
#define DEFAULT_MAX_TIMERS 1024L
#define DEFAULT_LUA_MEMORY_LIMIT 256L
/* Limits (ours; Postfix's defaults in spirit): at most 1000 sessions, 100
 * from one address; a command line completes within 60 s; DATA averages at
 * least 256 bytes/s; 100 recipients (RFC 5321 4.5.3.1.8's minimum); 20
 * error replies. */
#define DEFAULT_MAX_CONNECTIONS 1000L
#define DEFAULT_MAX_CONNECTIONS_PER_IP 100L
#define DEFAULT_COMMAND_TIMEOUT 60.0
#define DEFAULT_DATA_RATE_MIN 256L
#define DEFAULT_DATA_RATE_GRACE 30.0
#define DEFAULT_RCPT_LIMIT 100L
#define DEFAULT_ERROR_LIMIT 20L
/* What all sessions of one process may buffer for DATA: eight messages of
 * the default data_size_limit. */
#define DEFAULT_DATA_MEMORY_LIMIT (256L * 1024 * 1024)
/* async-api.md 4: the longest line a cosocket "*l" receive returns. */
#define DEFAULT_SOCKET_LINE_MAX 65536L
#define DEFAULT_TLS_TICKET_LIFETIME 3600L
#define DEFAULT_TLS_SESSION_CACHE_SIZE 1000L
/* DNS: five seconds a query (as resolv.conf's default), 10000 answers. */
#define DEFAULT_RESOLVER_TIMEOUT 5.0
#define DEFAULT_RESOLVER_CACHE_SIZE 10000L
/* A cache larger than this is a typo, not a plan. */
#define RESOLVER_CACHE_SIZE_MAX 10000000L

/* UNIX-domain listeners: owner and group may connect (delivery.md 5). */
#define DEFAULT_UNIX_SOCKET_MODE 0660L
#define UNIX_SOCKET_MODE_MAX 0777L

/* The thread pool (async-api.md 6): 0 threads = max(1, CPUs / workers). */
#define DEFAULT_THREAD_POOL_SIZE 0L
#define DEFAULT_THREAD_POOL_QUEUE ((long)POOL_DEFAULT_QUEUE)
#define MAX_THREAD_POOL_QUEUE 1000000L

enum opt_type { T_BOOL, T_INT, T_NUMBER, T_STRING, T_LIST /* struct name_list */, T_CALL_LIMIT,
                T_BARE_NEWLINE,
                T_NUMBER0 /* 0 allowed: "no limit" */, T_SIZE /* bytes, or "64m" */,
                T_SHARED_DICT /* { name = size, ... } or "name:size,..." */,
                T_RESOLVER /* "ip[:port],..." */,
                T_CRYPT_COST /* "bcrypt=12,argon2_memory=256m" or a table */,
                T_MODE /* file permission bits as an octal string ("0660") */,
                T_PROMPTS /* two strings: { "Username:", "Password:" } or "Username:,Password:" */,
                T_FAIL_LIMIT /* { count = 10, window = 600 }, "count=10,window=600", false */ };

/* One row per option: its name, type and the field it sets. A new option is
 * one row here, one field in struct options and, if it has one, its
 * default in options_init_defaults; nothing else. */
struct opt_def {
    const char *name;
    enum opt_type type;
    size_t offset;       /* of the field in struct options */
    size_t given_offset; /* of a bool set when the option is given, or NOT_TRACKED */
};

#define NOT_TRACKED ((size_t)-1)
#define OPT(name, type, field) {name, type, offsetof(struct options, field), NOT_TRACKED}

static const struct opt_def opt_defs[] = {
    OPT("hostname", T_STRING, hostname),
    OPT("ident", T_STRING, ident),
    OPT("data_size_limit", T_INT, data_size_limit),
    OPT("enable_SMTPUTF8", T_BOOL, enable_smtputf8),
    /* The CLI's default (on with --tlscert) yields to a script that says. */
    {"require_starttls", T_BOOL, offsetof(struct options, require_starttls),
     offsetof(struct options, require_starttls_set)},
    OPT("timeout", T_NUMBER, timeout),
    OPT("auth_required", T_BOOL, auth_required),
    OPT("auth_require_tls", T_BOOL, auth_require_tls),
    OPT("auth_exclude_mechanism", T_LIST, auth_exclude_mechanism),
    OPT("auth_mechanisms", T_LIST, auth_mechanisms),
    OPT("auth_login_prompts", T_PROMPTS, auth_login_prompts),
    OPT("command_call_limit", T_CALL_LIMIT, call_limits),
    OPT("auth_failure_limit", T_INT, auth_failure_limit),
    OPT("auth_allow_authzid", T_BOOL, auth_allow_authzid),
    OPT("auth_fail_penalty", T_BOOL, auth_fail_penalty),
    OPT("auth_fail_penalty_scale", T_NUMBER, auth_fail_penalty_scale),
    OPT("auth_fail_limit_per_client", T_FAIL_LIMIT, auth_fail_limit_per_client),
    OPT("auth_fail_store", T_STRING, auth_fail_store),
    OPT("bare_newline", T_BARE_NEWLINE, bare_newline),
    OPT("proxy_protocol_timeout", T_NUMBER, proxy_protocol_timeout),
    OPT("hook_timeout", T_NUMBER, hook_timeout),
    OPT("lua_memory_limit", T_INT, lua_memory_limit),
    OPT("max_timers", T_INT, max_timers),
    OPT("max_connections", T_INT, max_connections),
    OPT("max_connections_per_ip", T_INT, max_connections_per_ip),
    OPT("command_timeout", T_NUMBER0, command_timeout),
    OPT("data_rate_min", T_INT, data_rate_min),
    OPT("data_rate_grace", T_NUMBER, data_rate_grace),
    OPT("rcpt_limit", T_INT, rcpt_limit),
    OPT("error_limit", T_INT, error_limit),
    OPT("data_memory_limit", T_SIZE, data_memory_limit),
    OPT("tls_ticket_lifetime", T_INT, tls_ticket_lifetime),
    OPT("tls_session_cache_size", T_INT, tls_session_cache_size),
    OPT("shared_dict", T_SHARED_DICT, shared_dict),
    OPT("resolver", T_RESOLVER, resolver),
    OPT("resolver_timeout", T_NUMBER, resolver_timeout),
    OPT("resolver_cache_size", T_INT, resolver_cache_size),
    OPT("thread_pool_size", T_INT, thread_pool_size),
    OPT("thread_pool_queue", T_INT, thread_pool_queue),
    OPT("crypt_max_cost", T_CRYPT_COST, crypt_max_cost),
    OPT("socket_line_max", T_SIZE, socket_line_max),
    OPT("lmtp", T_BOOL, lmtp),
    OPT("unix_socket_mode", T_MODE, unix_socket_mode),
    {NULL, 0, 0, NOT_TRACKED},
};

static const char *const type_names[] = {
    "a boolean", "a non-negative integer", "a positive number", "a string",
    "a list of strings", "an integer or a table of integers",
    "one of \"reject\", \"normalize\", \"keep\"", "a non-negative number (0 = none)",
    "a size in bytes (an integer, or a string such as \"64m\", \"512k\", \"1g\")",
    "a table of name = size (e.g. { cache = \"10m\" }; on the command line \"cache:10m,other:1m\")",
    "a string listing DNS servers (\"127.0.0.1:5353,[::1]:53\")",
    /* One literal: clang warns about concatenation in an array of strings. */
    "a table or a string of costs (\"bcrypt=12,scrypt=16,rounds=500000,argon2_memory=256m\")",
    "an octal string of permission bits from \"0000\" to \"0777\" (e.g. \"0660\")",
    "a list of two strings (the user name and password prompts, e.g. { \"Username:\", \"Password:\" })",
    "false or a table { count = N, window = SECONDS } (on the command line \"count=10,window=600\")",
};

void options_init_defaults(struct options *o)
{
    memset(o, 0, sizeof *o);
    o->data_size_limit = DEFAULT_DATA_SIZE_LIMIT;
    o->timeout = DEFAULT_TIMEOUT;
    o->auth_require_tls = true;
    o->call_limit_default = DEFAULT_CALL_LIMIT;
    o->auth_failure_limit = DEFAULT_AUTH_FAILURE_LIMIT;
    o->auth_fail_penalty = true; /* mechanisms.md 3: default on */
    o->auth_fail_penalty_scale = DEFAULT_AUTH_FAIL_PENALTY_SCALE;
    o->bare_newline = BARE_NEWLINE_REJECT;
    o->hook_timeout = DEFAULT_HOOK_TIMEOUT;
    o->lua_memory_limit = DEFAULT_LUA_MEMORY_LIMIT;
    o->max_timers = DEFAULT_MAX_TIMERS;
    o->max_connections = DEFAULT_MAX_CONNECTIONS;
    o->max_connections_per_ip = DEFAULT_MAX_CONNECTIONS_PER_IP;
    o->command_timeout = DEFAULT_COMMAND_TIMEOUT;
    o->data_rate_min = DEFAULT_DATA_RATE_MIN;
    o->data_rate_grace = DEFAULT_DATA_RATE_GRACE;
    o->data_memory_limit = DEFAULT_DATA_MEMORY_LIMIT;
    o->rcpt_limit = DEFAULT_RCPT_LIMIT;
    o->error_limit = DEFAULT_ERROR_LIMIT;
    o->tls_ticket_lifetime = DEFAULT_TLS_TICKET_LIFETIME;
    o->tls_session_cache_size = DEFAULT_TLS_SESSION_CACHE_SIZE;
    o->resolver_timeout = DEFAULT_RESOLVER_TIMEOUT;
    o->resolver_cache_size = DEFAULT_RESOLVER_CACHE_SIZE;
    o->thread_pool_size = DEFAULT_THREAD_POOL_SIZE;
    o->thread_pool_queue = DEFAULT_THREAD_POOL_QUEUE;
    passhash_limits_default(&o->crypt_max_cost);
    o->socket_line_max = DEFAULT_SOCKET_LINE_MAX;
    o->unix_socket_mode = DEFAULT_UNIX_SOCKET_MODE;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

bool options_copy(struct options *dst, const struct options *src)
{
    *dst = *src;
    dst->hostname = dup_or_null(src->hostname);
    dst->ident = dup_or_null(src->ident);
    dst->resolver = dup_or_null(src->resolver);
    dst->auth_fail_store = dup_or_null(src->auth_fail_store);
    for (size_t i = 0; i < src->auth_exclude_mechanism.n; i++)
        dst->auth_exclude_mechanism.names[i] = dup_or_null(src->auth_exclude_mechanism.names[i]);
    for (size_t i = 0; i < src->auth_mechanisms.n; i++)
        dst->auth_mechanisms.names[i] = dup_or_null(src->auth_mechanisms.names[i]);
    for (int i = 0; i < 2; i++) {
        const char *t = src->auth_login_prompts.text[i];
        dst->auth_login_prompts.text[i] = NULL;
        if (t && (dst->auth_login_prompts.text[i] = malloc(src->auth_login_prompts.len[i] + 1)))
            memcpy(dst->auth_login_prompts.text[i], t, src->auth_login_prompts.len[i] + 1);
    }
    return true;
}

void options_free(struct options *o)
{
    free(o->hostname);
    free(o->ident);
    free(o->resolver);
    free(o->auth_fail_store);
    for (size_t i = 0; i < o->auth_exclude_mechanism.n; i++) free(o->auth_exclude_mechanism.names[i]);
    for (size_t i = 0; i < o->auth_mechanisms.n; i++) free(o->auth_mechanisms.names[i]);
    for (int i = 0; i < 2; i++) free(o->auth_login_prompts.text[i]);
    memset(o, 0, sizeof *o);
}

/* The field an option sets, by its row. */
static void *opt_field(struct options *o, const struct opt_def *d) { return (char *)o + d->offset; }
#define INT_FIELD(o, d) ((long *)opt_field(o, d))
#define NUMBER_FIELD(o, d) ((double *)opt_field(o, d))
#define BOOL_FIELD(o, d) ((bool *)opt_field(o, d))
#define STRING_FIELD(o, d) ((char **)opt_field(o, d))

/* Notes that the option was given (for options whose default depends on it). */
static void opt_given(struct options *o, const struct opt_def *d)
{
    if (d->given_offset != NOT_TRACKED) *(bool *)((char *)o + d->given_offset) = true;
}

static const struct opt_def *opt_find(const char *name)
{
    for (const struct opt_def *d = opt_defs; d->name; d++)
        if (strcmp(d->name, name) == 0) return d;
    return NULL;
}

static bool unknown_option(const char *name, char *err, size_t errlen)
{
    snprintf(err, errlen, "unknown option '%s'", name);
    return false;
}

static bool wrong_type(const struct opt_def *d, char *err, size_t errlen)
{
    snprintf(err, errlen, "option '%s' must be %s", d->name, type_names[d->type]);
    return false;
}

static void set_string(char **slot, const char *v)
{
    free(*slot);
    *slot = strdup(v);
}

#define LIST_FIELD(o, d) ((struct name_list *)opt_field(o, d))

static void clear_list(struct name_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->names[i]);
    l->n = 0;
    l->given = true;
}

static bool add_to_list(struct name_list *l, const char *option, const char *name, size_t len,
                        char *err, size_t errlen)
{
    if (len == 0) return true;
    if (l->n == OPTIONS_MAX_EXCLUDED) {
        snprintf(err, errlen, "option '%s' lists too many names", option);
        return false;
    }
    char *s = strndup(name, len);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (char *p = s; *p; p++) *p = (char)toupper((unsigned char)*p);
    l->names[l->n++] = s;
    return true;
}

static void set_prompt(struct login_prompts *lp, int i, const char *v, size_t n)
{
    free(lp->text[i]);
    lp->text[i] = malloc(n + 1);
    lp->len[i] = 0;
    if (!lp->text[i]) return;
    memcpy(lp->text[i], v, n);
    lp->text[i][n] = '\0';
    lp->len[i] = n;
}

static bool add_call_limit(struct options *o, const char *cmd, size_t len, long n, char *err,
                           size_t errlen)
{
    if (len == 1 && cmd[0] == '*') {
        o->call_limit_default = n;
        return true;
    }
    if (len == 0 || len >= OPTIONS_NAME_MAX || o->n_call_limits == OPTIONS_MAX_CALL_LIMITS) {
        snprintf(err, errlen, "option 'command_call_limit' has a bad command name");
        return false;
    }
    struct call_limit *cl = &o->call_limits[o->n_call_limits++];
    for (size_t i = 0; i < len; i++) cl->command[i] = (char)toupper((unsigned char)cmd[i]);
    cl->command[len] = '\0';
    cl->limit = n;
    return true;
}

static bool parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0) return false;
    *out = v;
    return true;
}

/* "123", "64k", "64m", "1g" (case-insensitive, powers of 1024). */
static bool parse_size(const char *s, long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0) return false;
    long long unit = 1;
    switch (tolower((unsigned char)*end)) {
    case '\0': break;
    case 'k': unit = 1024LL, end++; break;
    case 'm': unit = 1024LL * 1024, end++; break;
    case 'g': unit = 1024LL * 1024 * 1024, end++; break;
    default: return false;
    }
    if (*end || v > (long long)(LONG_MAX / unit)) return false;
    *out = (long)(v * unit);
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes")) *out = true;
    else if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no")) *out = false;
    else return false;
    return true;
}

static bool parse_bare_newline(const char *s, enum bare_newline_mode *out)
{
    if (!strcmp(s, "reject")) *out = BARE_NEWLINE_REJECT;
    else if (!strcmp(s, "normalize")) *out = BARE_NEWLINE_NORMALIZE;
    else if (!strcmp(s, "keep")) *out = BARE_NEWLINE_KEEP;
    else return false;
    return true;
}

/* One dictionary of shared_dict: name checked, size parsed and bounded. */
static bool add_shared_dict(struct options *o, const char *name, size_t len, long size,
                            char *err, size_t errlen)
{
    if (!shdict_name_valid(name, len)) {
        snprintf(err, errlen,
                 "option 'shared_dict': bad dictionary name '%.*s' (letters, digits and _, not "
                 "starting with a digit, at most %d bytes)",
                 (int)(len > 64 ? 64 : len), name, SHDICT_NAME_MAX - 1);
        return false;
    }
    for (size_t i = 0; i < o->n_shared_dict; i++) {
        if (strlen(o->shared_dict[i].name) == len && !memcmp(o->shared_dict[i].name, name, len)) {
            snprintf(err, errlen, "option 'shared_dict': dictionary '%.*s' is declared twice",
                     (int)len, name);
            return false;
        }
    }
    if (o->n_shared_dict == SHDICT_MAX) {
        snprintf(err, errlen, "option 'shared_dict': at most %d dictionaries", SHDICT_MAX);
        return false;
    }
    if (size < SHDICT_SIZE_MIN || size > SHDICT_SIZE_MAX) {
        snprintf(err, errlen, "option 'shared_dict': the size of '%.*s' must be between %ldk and "
                 "%ldm, got %ld bytes", (int)len, name, SHDICT_SIZE_MIN / 1024,
                 SHDICT_SIZE_MAX / (1024 * 1024), size);
        return false;
    }
    struct shdict_spec *sp = &o->shared_dict[o->n_shared_dict++];
    memcpy(sp->name, name, len);
    sp->name[len] = '\0';
    sp->size = size;
    return true;
}

static int shared_dict_cmp(const void *a, const void *b)
{
    return strcmp(((const struct shdict_spec *)a)->name, ((const struct shdict_spec *)b)->name);
}

static void sort_shared_dicts(struct options *o)
{
    qsort(o->shared_dict, o->n_shared_dict, sizeof o->shared_dict[0], shared_dict_cmp);
}

/* One key of crypt_max_cost: `v` is its value as text (the -o form and a
 * script's strings) or, when `text` is NULL, the number x. */
static bool set_crypt_cost(struct passhash_limits *l, const char *key, size_t keylen,
                           const char *text, double x, char *err, size_t errlen)
{
    long n;
    bool size = keylen == 13 && !strncmp(key, "argon2_memory", 13);
    if (text) {
        if (!(size ? parse_size(text, &n) : parse_long(text, &n))) goto bad_value;
    } else {
        if (x < 0 || x != (double)(long)x) goto bad_value;
        n = (long)x;
    }
#define KEY(s) (keylen == sizeof(s) - 1 && !strncmp(key, s, keylen))
    if (KEY("bcrypt") && n >= 4 && n <= 31) l->bcrypt = (int)n;
    else if (KEY("scrypt") && n >= 1 && n <= 63) l->scrypt = (int)n;
    else if (KEY("rounds") && n >= 1) l->rounds = n;
    else if (size && n >= 1024) l->argon2_memory_kib = n / 1024;
    else if (KEY("argon2_time") && n >= 1 && n <= INT_MAX) l->argon2_time = (int)n;
    else if (KEY("argon2_lanes") && n >= 1 && n <= INT_MAX) l->argon2_lanes = (int)n;
    else if (KEY("bcrypt") || KEY("scrypt") || KEY("rounds") || size || KEY("argon2_time") ||
             KEY("argon2_lanes"))
        goto bad_value;
    else {
        snprintf(err, errlen,
                 "option 'crypt_max_cost' has an unknown key '%.*s' (bcrypt, scrypt, rounds, "
                 "argon2_memory, argon2_time, argon2_lanes)",
                 (int)keylen, key);
        return false;
    }
#undef KEY
    return true;
bad_value:
    snprintf(err, errlen,
             "option 'crypt_max_cost': %.*s must be %s", (int)keylen, key,
             size ? "a size of at least 1k (bytes, or \"256m\")"
             : keylen == 6 && !strncmp(key, "bcrypt", 6) ? "an integer from 4 to 31 (log2 of the rounds)"
             : keylen == 6 && !strncmp(key, "scrypt", 6) ? "an integer from 1 to 63 (log2 of N)"
                                                          : "a positive integer");
    return false;
}

/* One field of auth_fail_limit_per_client, its value as text. */
static bool set_fail_limit(struct fail_limit *fl, const char *key, size_t klen, const char *val,
                           char *err, size_t errlen)
{
    char *end;
    if (klen == 5 && !memcmp(key, "count", 5)) {
        long n = strtol(val, &end, 10);
        if (end == val || *end || n < 1) {
            snprintf(err, errlen, "option 'auth_fail_limit_per_client': count must be a positive "
                                  "integer");
            return false;
        }
        fl->count = n;
        return true;
    }
    if (klen == 6 && !memcmp(key, "window", 6)) {
        double x = strtod(val, &end);
        if (end == val || *end || !(x > 0) || x > SHDICT_TTL_MAX) {
            snprintf(err, errlen, "option 'auth_fail_limit_per_client': window must be a positive "
                                  "number of seconds");
            return false;
        }
        fl->window = x;
        return true;
    }
    snprintf(err, errlen, "option 'auth_fail_limit_per_client': unknown field '%.*s' (count, window)",
             (int)klen, key);
    return false;
}

bool options_set_string(struct options *o, const char *name, const char *v, char *err,
                        size_t errlen)
{
    const struct opt_def *d = opt_find(name);
    if (!d) return unknown_option(name, err, errlen);
    bool b;
    long n;
    switch (d->type) {
    case T_BOOL:
        if (!parse_bool(v, &b)) return wrong_type(d, err, errlen);
        *BOOL_FIELD(o, d) = b;
        opt_given(o, d);
        return true;
    case T_INT:
        if (!parse_long(v, &n)) return wrong_type(d, err, errlen);
        *INT_FIELD(o, d) = n;
        return true;
    case T_NUMBER:
    case T_NUMBER0: {
        char *end;
        double x = strtod(v, &end);
        if (end == v || *end || !(d->type == T_NUMBER0 ? x >= 0 : x > 0))
            return wrong_type(d, err, errlen);
        *NUMBER_FIELD(o, d) = x;
        return true;
    }
    case T_STRING:
        set_string(STRING_FIELD(o, d), v);
        return true;
    case T_MODE: {
        /* Octal digits only: "660" and "0660" are the same, "0x1b0" is not. */
        char *end;
        errno = 0;
        long mode = strtol(v, &end, 8);
        if (!*v || *end || errno || strspn(v, "01234567") != strlen(v) || mode < 0 ||
            mode > UNIX_SOCKET_MODE_MAX)
            return wrong_type(d, err, errlen);
        *INT_FIELD(o, d) = mode;
        return true;
    }
    case T_LIST:
        clear_list(LIST_FIELD(o, d));
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ", ");
            if (!add_to_list(LIST_FIELD(o, d), d->name, p, len, err, errlen)) return false;
            p += len;
            p += strspn(p, ", ");
        }
        return true;
    case T_PROMPTS: {
        const char *comma = strchr(v, ',');
        if (!comma || strchr(comma + 1, ',')) return wrong_type(d, err, errlen);
        struct login_prompts *lp = opt_field(o, d);
        set_prompt(lp, 0, v, (size_t)(comma - v));
        set_prompt(lp, 1, comma + 1, strlen(comma + 1));
        return true;
    }
    case T_CALL_LIMIT:
        o->call_limit_enforced = true;
        o->n_call_limits = 0;
        o->call_limit_default = DEFAULT_CALL_LIMIT;
        if (parse_long(v, &n)) {
            o->call_limit_default = n;
            return true;
        }
        /* "MAIL=5,RCPT=10,*=20" */
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ",");
            const char *eq = memchr(p, '=', len);
            char num[32];
            size_t nlen = eq ? (size_t)(p + len - eq - 1) : 0;
            if (!eq || nlen == 0 || nlen >= sizeof num) return wrong_type(d, err, errlen);
            memcpy(num, eq + 1, nlen);
            num[nlen] = '\0';
            if (!parse_long(num, &n)) return wrong_type(d, err, errlen);
            if (!add_call_limit(o, p, (size_t)(eq - p), n, err, errlen)) return false;
            p += len;
            if (*p == ',') p++;
        }
        return true;
    case T_BARE_NEWLINE:
        if (!parse_bare_newline(v, &o->bare_newline)) return wrong_type(d, err, errlen);
        return true;
    case T_FAIL_LIMIT: {
        struct fail_limit *fl = opt_field(o, d);
        if (parse_bool(v, &b) && !b) {
            fl->enabled = false;
            return true;
        }
        struct fail_limit nl = {true, DEFAULT_AUTH_FAIL_LIMIT_COUNT, DEFAULT_AUTH_FAIL_LIMIT_WINDOW};
        /* "count=10,window=600" */
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ",");
            const char *eq = memchr(p, '=', len);
            char val[32];
            size_t vlen = eq ? (size_t)(p + len - eq - 1) : 0;
            if (!eq || vlen == 0 || vlen >= sizeof val) return wrong_type(d, err, errlen);
            memcpy(val, eq + 1, vlen);
            val[vlen] = '\0';
            size_t klen = (size_t)(eq - p);
            if (!set_fail_limit(&nl, p, klen, val, err, errlen)) return false;
            p += len;
            if (*p == ',') p++;
        }
        *fl = nl;
        return true;
    }
    case T_SIZE:
        if (!parse_size(v, &n)) return wrong_type(d, err, errlen);
        *INT_FIELD(o, d) = n;
        return true;
    case T_SHARED_DICT:
        /* "cache:10m,other:1m"; "" declares none. */
        o->n_shared_dict = 0;
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ",");
            const char *colon = memchr(p, ':', len);
            char num[32];
            size_t nlen = colon ? (size_t)(p + len - colon - 1) : 0;
            if (!colon || nlen == 0 || nlen >= sizeof num) return wrong_type(d, err, errlen);
            memcpy(num, colon + 1, nlen);
            num[nlen] = '\0';
            if (!parse_size(num, &n)) return wrong_type(d, err, errlen);
            if (!add_shared_dict(o, p, (size_t)(colon - p), n, err, errlen)) return false;
            p += len;
            if (*p == ',') p++;
        }
        sort_shared_dicts(o);
        return true;
    case T_RESOLVER:
        if (!dns_servers_valid(v, err, errlen)) return false;
        set_string(STRING_FIELD(o, d), v);
        return true;
    case T_CRYPT_COST: {
        /* A whole value: what it leaves out is the default. */
        struct passhash_limits l;
        passhash_limits_default(&l);
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ",");
            const char *eq = memchr(p, '=', len);
            char val[32];
            size_t vlen = eq ? (size_t)(p + len - eq - 1) : 0;
            if (!eq || eq == p || vlen == 0 || vlen >= sizeof val) return wrong_type(d, err, errlen);
            memcpy(val, eq + 1, vlen);
            val[vlen] = '\0';
            if (!set_crypt_cost(&l, p, (size_t)(eq - p), val, 0, err, errlen)) return false;
            p += len;
            if (*p == ',') p++;
        }
        o->crypt_max_cost = l;
        return true;
    }
    }
    return false;
}

static bool lua_is_integer(lua_State *L, int idx, long *out)
{
    if (lua_type(L, idx) != LUA_TNUMBER) return false;
    lua_Number x = lua_tonumber(L, idx);
    if (x < 0 || x != (lua_Number)(long)x) return false;
    *out = (long)x;
    return true;
}

bool options_set_lua(struct options *o, const char *name, lua_State *L, int idx, char *err,
                     size_t errlen)
{
    const struct opt_def *d = opt_find(name);
    if (!d) return unknown_option(name, err, errlen);
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    int t = lua_type(L, idx);
    long n;
    switch (d->type) {
    case T_BOOL:
        if (t != LUA_TBOOLEAN) return wrong_type(d, err, errlen);
        return options_set_string(o, name, lua_toboolean(L, idx) ? "true" : "false", err, errlen);
    case T_INT:
        if (!lua_is_integer(L, idx, &n)) return wrong_type(d, err, errlen);
        *INT_FIELD(o, d) = n;
        return true;
    case T_NUMBER:
    case T_NUMBER0:
        if (t != LUA_TNUMBER ||
            !(d->type == T_NUMBER0 ? lua_tonumber(L, idx) >= 0 : lua_tonumber(L, idx) > 0))
            return wrong_type(d, err, errlen);
        *NUMBER_FIELD(o, d) = lua_tonumber(L, idx);
        return true;
    case T_STRING:
    case T_RESOLVER:
    case T_MODE:
        if (t != LUA_TSTRING) return wrong_type(d, err, errlen);
        return options_set_string(o, name, lua_tostring(L, idx), err, errlen);
    case T_LIST:
        if (t == LUA_TSTRING) return options_set_string(o, name, lua_tostring(L, idx), err, errlen);
        if (t != LUA_TTABLE) return wrong_type(d, err, errlen);
        clear_list(LIST_FIELD(o, d));
        for (int i = 1;; i++) {
            lua_rawgeti(L, idx, i);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                break;
            }
            if (lua_type(L, -1) != LUA_TSTRING) {
                lua_pop(L, 1);
                return wrong_type(d, err, errlen);
            }
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            bool ok = add_to_list(LIST_FIELD(o, d), d->name, s, len, err, errlen);
            lua_pop(L, 1);
            if (!ok) return false;
        }
        return true;
    case T_CALL_LIMIT:
        o->call_limit_enforced = true;
        o->n_call_limits = 0;
        o->call_limit_default = DEFAULT_CALL_LIMIT;
        if (lua_is_integer(L, idx, &n)) {
            o->call_limit_default = n;
            return true;
        }
        if (t != LUA_TTABLE) return wrong_type(d, err, errlen);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING || !lua_is_integer(L, -1, &n)) {
                lua_pop(L, 2);
                return wrong_type(d, err, errlen);
            }
            size_t len;
            const char *cmd = lua_tolstring(L, -2, &len);
            if (!add_call_limit(o, cmd, len, n, err, errlen)) {
                lua_pop(L, 2);
                return false;
            }
            lua_pop(L, 1);
        }
        return true;
    case T_BARE_NEWLINE:
        if (t != LUA_TSTRING || !parse_bare_newline(lua_tostring(L, idx), &o->bare_newline))
            return wrong_type(d, err, errlen);
        return true;
    case T_SIZE:
        if (t == LUA_TSTRING) return options_set_string(o, name, lua_tostring(L, idx), err, errlen);
        if (!lua_is_integer(L, idx, &n)) return wrong_type(d, err, errlen);
        *INT_FIELD(o, d) = n;
        return true;
    case T_SHARED_DICT:
        if (t == LUA_TSTRING) return options_set_string(o, name, lua_tostring(L, idx), err, errlen);
        if (t != LUA_TTABLE) return wrong_type(d, err, errlen);
        o->n_shared_dict = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            size_t len;
            const char *dict = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
            bool ok = dict != NULL;
            if (ok && lua_type(L, -1) == LUA_TSTRING) ok = parse_size(lua_tostring(L, -1), &n);
            else if (ok) ok = lua_is_integer(L, -1, &n);
            if (!ok) {
                lua_pop(L, 2);
                return wrong_type(d, err, errlen);
            }
            if (!add_shared_dict(o, dict, len, n, err, errlen)) {
                lua_pop(L, 2);
                return false;
            }
            lua_pop(L, 1);
        }
        sort_shared_dicts(o);
        return true;
    case T_FAIL_LIMIT: {
        struct fail_limit *fl = opt_field(o, d);
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
            fl->enabled = false;
            return true;
        }
        if (t != LUA_TTABLE) return wrong_type(d, err, errlen);
        struct fail_limit nl = {true, DEFAULT_AUTH_FAIL_LIMIT_COUNT, DEFAULT_AUTH_FAIL_LIMIT_WINDOW};
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TNUMBER) {
                lua_pop(L, 2);
                return wrong_type(d, err, errlen);
            }
            size_t klen;
            const char *key = lua_tolstring(L, -2, &klen);
            char val[64];
            snprintf(val, sizeof val, "%.17g", lua_tonumber(L, -1));
            bool ok = set_fail_limit(&nl, key, klen, val, err, errlen);
            lua_pop(L, 1);
            if (!ok) {
                lua_pop(L, 1);
                return false;
            }
        }
        *fl = nl;
        return true;
    }
    case T_PROMPTS: {
        if (t != LUA_TTABLE || lua_objlen(L, idx) != 2) return wrong_type(d, err, errlen);
        struct login_prompts *lp = opt_field(o, d);
        for (int i = 0; i < 2; i++) {
            lua_rawgeti(L, idx, i + 1);
            size_t n;
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
            if (v) set_prompt(lp, i, v, n);
            lua_pop(L, 1);
            if (!v) return wrong_type(d, err, errlen);
        }
        return true;
    }
    case T_CRYPT_COST: {
        if (t == LUA_TSTRING) return options_set_string(o, name, lua_tostring(L, idx), err, errlen);
        if (t != LUA_TTABLE) return wrong_type(d, err, errlen);
        struct passhash_limits l;
        passhash_limits_default(&l);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            int vt = lua_type(L, -1);
            if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TNUMBER && vt != LUA_TSTRING)) {
                lua_pop(L, 2);
                return wrong_type(d, err, errlen);
            }
            size_t klen;
            const char *key = lua_tolstring(L, -2, &klen);
            bool ok = set_crypt_cost(&l, key, klen, vt == LUA_TSTRING ? lua_tostring(L, -1) : NULL,
                                     vt == LUA_TNUMBER ? lua_tonumber(L, -1) : 0, err, errlen);
            lua_pop(L, 1);
            if (!ok) {
                lua_pop(L, 1);
                return false;
            }
        }
        o->crypt_max_cost = l;
        return true;
    }
    }
    return false;
}

long options_call_limit(const struct options *o, const char *command)
{
    for (size_t i = 0; i < o->n_call_limits; i++)
        if (!strcmp(o->call_limits[i].command, command)) return o->call_limits[i].limit;
    return o->call_limit_default;
}

bool options_mechanism_excluded(const struct options *o, const char *name)
{
    for (size_t i = 0; i < o->auth_exclude_mechanism.n; i++)
        if (!strcasecmp(o->auth_exclude_mechanism.names[i], name)) return true;
    return false;
}

/* socket.getfqdn(), as aiosmtpd uses for its default hostname. */
static char *fqdn(void)
{
    char host[256];
    if (gethostname(host, sizeof host) != 0) return strdup("localhost");
    host[sizeof host - 1] = '\0';
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_flags = AI_CANONNAME;
    if (getaddrinfo(host, NULL, &hints, &res) == 0 && res && res->ai_canonname) {
        char *name = strdup(res->ai_canonname);
        freeaddrinfo(res);
        return name;
    }
    if (res) freeaddrinfo(res);
    return strdup(host);
}

bool options_finalize(struct options *o, char *err, size_t errlen)
{
    /* RFC 5077 5.6: a ticket lifetime hint is at most 7 days. */
    if (o->tls_ticket_lifetime > 604800) {
        snprintf(err, errlen, "option 'tls_ticket_lifetime' must be at most 604800 seconds");
        return false;
    }
    if (o->resolver_cache_size > RESOLVER_CACHE_SIZE_MAX) {
        snprintf(err, errlen, "option 'resolver_cache_size' must be at most %ld",
                 RESOLVER_CACHE_SIZE_MAX);
        return false;
    }
    if (o->thread_pool_size > POOL_MAX_THREADS) {
        snprintf(err, errlen, "option 'thread_pool_size' must be at most %d (0 = one per CPU, "
                 "divided among the workers)", POOL_MAX_THREADS);
        return false;
    }
    if (o->thread_pool_queue > MAX_THREAD_POOL_QUEUE) {
        snprintf(err, errlen, "option 'thread_pool_queue' must be at most %ld",
                 MAX_THREAD_POOL_QUEUE);
        return false;
    }
    if (o->socket_line_max < 1) {
        snprintf(err, errlen, "option 'socket_line_max' must be at least 1 byte");
        return false;
    }
    /* auth_fail_limit_per_client counts in a shared dictionary of its own
     * (or one the script declared under that name). */
    if (o->auth_fail_store) {
        if (strncmp(o->auth_fail_store, "redis://", 8)) {
            snprintf(err, errlen, "option 'auth_fail_store' must be \"redis://host:port[/db]\"");
            return false;
        }
        if (!o->auth_fail_limit_per_client.enabled) {
            snprintf(err, errlen, "option 'auth_fail_store' needs auth_fail_limit_per_client");
            return false;
        }
    }
    if (o->auth_fail_limit_per_client.enabled && !o->auth_fail_store) {
        bool declared = false;
        for (size_t i = 0; i < o->n_shared_dict; i++)
            declared = declared || !strcmp(o->shared_dict[i].name, OPTIONS_AUTH_FAIL_DICT);
        if (!declared) {
            if (!add_shared_dict(o, OPTIONS_AUTH_FAIL_DICT, strlen(OPTIONS_AUTH_FAIL_DICT),
                                 OPTIONS_AUTH_FAIL_DICT_SIZE, err, errlen))
                return false;
            sort_shared_dicts(o);
        }
    }
    if (!o->hostname) o->hostname = fqdn();
    if (!o->ident) o->ident = strdup("luasmtpd " LUASMTPD_VERSION);
    if (!o->hostname || !o->ident) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    for (const char *c = o->hostname; *c; c++) {
        if ((unsigned char)*c <= ' ' || *c == 0x7f) {
            snprintf(err, errlen, "option 'hostname' must not contain spaces or control bytes");
            return false;
        }
    }
    for (const char *c = o->ident; *c; c++) {
        if (*c == '\r' || *c == '\n') {
            snprintf(err, errlen, "option 'ident' must be one line");
            return false;
        }
    }
    return true;
}
