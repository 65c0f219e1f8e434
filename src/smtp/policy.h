/* policy.h — one policy generation: a lua_State with the handler script
 * loaded and validated, its hook references, its AUTH mechanism registry and
 * its effective options. Sessions hold a reference to the generation they
 * started on; reload builds a new one beside it. Must not run per-session
 * hooks (lua_hook.c does). */
#ifndef LUASMTPD_POLICY_H
#define LUASMTPD_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "lua_vm.h"
#include "options.h"

struct lua_State;

enum hook_id {
    HOOK_HELO,
    HOOK_EHLO,
    HOOK_MAIL,
    HOOK_RCPT,
    HOOK_DATA,
    HOOK_RSET,
    HOOK_QUIT,
    HOOK_NOOP,
    HOOK_VRFY,
    HOOK_STARTTLS,
    HOOK_PROXY,
    HOOK_AUTH,
    HOOK_EXCEPTION,
    HOOK_AUTHENTICATOR,
    HOOK_COUNT
};

/* "handle_HELO", …, "handle_exception", "authenticator". */
extern const char *const policy_hook_names[HOOK_COUNT];

#define MECHANISM_NAME_MAX 64

/* When a shipped mechanism may be offered (mechanisms.md 2). */
enum mechanism_needs {
    MECH_NEEDS_NOTHING,
    MECH_NEEDS_BINDING,  /* -PLUS: a TLS session whose channel binding we check */
    MECH_NEEDS_PEERCERT, /* EXTERNAL: a verified client certificate */
};

struct mechanism {
    char name[MECHANISM_NAME_MAX]; /* upper case, [A-Z0-9_-]+ */
    int ref;                       /* the Lua function, in the registry */
    bool builtin;                  /* shipped with luasmtpd (PLAIN, LOGIN, lua/smtpd/mechanisms/) */
    enum mechanism_needs needs;
    char label[MECHANISM_NAME_MAX + 24]; /* for logs: "mechanism PLAIN (built-in)" */
};

/* A command-line option override: "-o name=value" and the named flags. */
struct option_override {
    const char *name;
    const char *value;
};


struct policy {
    struct vm vm; /* the generation's Lua state (vm.L) */
    int refcount;
    unsigned generation;
    char *script_name;         /* path, or "(default handler)" */
    int hook_ref[HOOK_COUNT];  /* LUA_NOREF when the script does not define it */
    /* smtpd.auth_fail_store's over and failed, with auth_fail_store set
     * (LUA_NOREF otherwise): the AUTH path runs them as hooks. */
    int fail_store_over_ref, fail_store_failed_ref;
    /* Sorted by name, exclusions applied; in the order of auth_mechanisms
     * when that option is given. */
    struct mechanism *mechs;
    size_t n_mechs;
    struct options opt;
    /* Set when a reload replaced this generation (ev time); 0 while current. */
    double retired_at;
};

/* Seconds a script's top level may run while loading (a reload or start-up
 * refuses a script that takes longer). */
extern double policy_load_timeout;

/* The handler's arguments (`luasmtpd --handler F -- ARG...`): every
 * generation's chunk gets them as `...`, so a reload sees the same ones. */
extern const char *const *policy_script_args;
extern int policy_n_script_args;


/* What every generation is built with, the same at start-up and on every
 * reload: the command line's option overrides, and the function that
 * registers the Lua classes and bindings of this program in a fresh state
 * (the server class, smtpd.sleep, ...; the app layer chooses them). */
struct policy_inputs {
    const struct option_override *ov;
    size_t n_ov;
    void (*register_classes)(struct lua_State *L);
};

/* Builds a generation from the script at path (NULL: the embedded default
 * handler), applying options: defaults, then the script's `options`, then
 * in->ov. On failure returns NULL and writes a message with file:line to
 * err. The returned generation has refcount 1 (the caller's). */
struct policy *policy_load(const char *path, const struct policy_inputs *in, char *err,
                           size_t errlen);

/* The same from the script's bytes (path names the chunk and the folder
 * `require` searches; NULL with src NULL: the embedded default handler).
 * Touches no global state but the generation counter, so a builder thread
 * may call it while the loop runs (one build at a time). */
struct policy *policy_load_source(const char *path, const char *src, size_t len,
                                  const struct policy_inputs *in, char *err, size_t errlen);

/* Reads a script file whole: a malloc'd NUL-terminated copy, or NULL with a
 * message ("cannot open PATH: ...") in err. */
char *policy_read_script(const char *path, size_t *len, char *err, size_t errlen);

void policy_hold(struct policy *p);
/* The generation goes live on the loop (start-up, a reload's swap): its
 * resources made while loading (timers) start. */
void policy_attach(struct policy *p, struct ev_loop *loop);
/* A reload replaced it, or the process stops: marks it retired at `now`
 * (sessions on it get drain_timeout) and retires its resources (pending
 * timers run once with premature = true). May resume Lua. */
void policy_retire(struct policy *p, double now);
/* Drops a reference; the lua_State is closed with the last one. */
void policy_release(struct policy *p);

static inline bool policy_has_hook(const struct policy *p, enum hook_id h)
{
    return p->hook_ref[h] != -2 /* LUA_NOREF */;
}

/* Case-insensitive lookup (auth-api.md 4.2 row 8 fix); -1 when unknown. */
int policy_find_mechanism(const struct policy *p, const char *name, size_t len);

#endif
