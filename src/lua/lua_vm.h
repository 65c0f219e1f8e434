/* lua_vm.h — one Lua state of a policy generation, without SMTP: LuaJIT's
 * allocator wrapped to count the heap (the limit applies only while a hook
 * runs), the sandbox, the embedded library in package.preload, the load
 * budget for a script's top level, and the pool of finished coroutines.
 * Knows no SMTP; the policy (a generation) embeds one. */
#ifndef LUASMTPD_LUA_VM_H
#define LUASMTPD_LUA_VM_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

#include "passhash.h"
#include "pool.h"

#define VM_POOL_MAX 64

struct vm;

/* Something a generation owns in C beside its Lua state: the timers, the
 * socket pools. Kept in the vm's list, found again by `kind` (the address
 * of a static in the owning file), told when the generation goes live on
 * the loop, when a reload or shutdown retires it, and when its state
 * closes. Resources are the way the async bindings stay per generation
 * (design.md "Policy generations"). */
struct vm_resource {
    const void *kind;
    struct vm_resource *next, *prev;
    /* The generation was installed on vm->loop (a resource made while the
     * script loaded, on the builder thread, may start its events now). May
     * be NULL. */
    void (*attach)(struct vm_resource *r, struct vm *vm);
    /* A reload or shutdown replaced the generation: let pending work end
     * (timers run once with premature = true, idle pooled sockets close).
     * May be NULL. */
    void (*retire)(struct vm_resource *r, struct vm *vm);
    /* The state is about to close: stop every event and free r. */
    void (*close)(struct vm_resource *r, struct vm *vm);
};

struct vm {
    lua_State *L;
    /* Memory: the limit is enforced only while a hook runs (vm_enter_hook),
     * so C code outside protected calls never meets an allocation failure. */
    void *base_alloc;
    void *base_alloc_ud;
    size_t heap_bytes;
    size_t heap_limit; /* bytes, 0 = none */
    bool in_hook;
    /* Finished coroutines kept for reuse (design.md: coroutines are pooled). */
    struct {
        lua_State *co;
        int ref;
    } pool[VM_POOL_MAX];
    int n_pool;
    /* The generation's life on the loop (vm_attach, vm_retire). */
    struct ev_loop *loop; /* NULL until attached (while loading, in -t) */
    double hook_timeout;  /* seconds a hook may stay suspended in all, 0 = none */
    /* Seconds a run started by the generation's retirement (a timer's
     * premature run) may stay suspended, 0 = none; the tighter of this and
     * hook_timeout applies (--drain-timeout, set by the app). */
    double drain_timeout;
    long max_timers;      /* smtpd.timer.at/every pending at once, 0 = no limit */
    size_t socket_line_max; /* the longest line a cosocket receive returns, 0 = default */
    bool loading;         /* the script's top level runs */
    /* DNS (l_dns.c): the generation's resolver options. resolver points
     * into the owner's options (NULL: /etc/resolv.conf). */
    const char *resolver;
    double resolver_timeout;   /* seconds per query */
    long resolver_cache_size;  /* entries, 0 = no cache */
    bool retired;
    struct vm_resource *resources;
    /* What the thread-pool bindings read (async-api.md 6), from the
     * generation's options: the pool's size and queue, and the costliest
     * hash smtpd.crypt.verify works on. */
    struct pool_config thread_pool;
    struct passhash_limits crypt_max_cost;
    /* The owner's reference count (the policy's): work that outlives the
     * session that started it (a timer's run) holds the generation. */
    void (*hold)(void *owner);
    void (*release)(void *owner);
    void *owner;
};

/* A fresh state: counting allocator, standard libraries, the sandbox and the
 * embedded Lua library preloaded. False (err set) if memory runs out. */
bool vm_open(struct vm *vm, char *err, size_t errlen);
/* Closes the state (every ref, pooled coroutine and table goes with it). */
void vm_close(struct vm *vm);

/* lua_pcall of the chunk below its nargs arguments with errfunc, the JIT
 * off and a count hook that raises once `budget` seconds have passed: a top
 * level that never returns cannot hang a load. Thread-safe for one state per
 * thread. */
int vm_pcall_with_budget(struct vm *vm, int nargs, int nresults, int errfunc, double budget);

static inline void vm_enter_hook(struct vm *vm) { vm->in_hook = true; }
static inline void vm_leave_hook(struct vm *vm) { vm->in_hook = false; }
/* Near the memory limit, collect before a hook runs rather than let it fail
 * for garbage that a collection would free. */
void vm_make_room(struct vm *vm);

/* The vm a state (or any of its coroutines) belongs to. */
struct vm *vm_of(lua_State *L);

/* The generation goes live on loop: every resource's attach. */
void vm_attach(struct vm *vm, struct ev_loop *loop);
/* The generation was replaced (reload) or the process stops: every
 * resource's retire, once. May resume Lua. */
void vm_retire(struct vm *vm);
static inline void vm_hold(struct vm *vm)
{
    if (vm->hold) vm->hold(vm->owner);
}
static inline void vm_release(struct vm *vm)
{
    if (vm->release) vm->release(vm->owner);
}

void vm_resource_add(struct vm *vm, struct vm_resource *r);
void vm_resource_remove(struct vm *vm, struct vm_resource *r);
/* The resource of that kind, or NULL. */
struct vm_resource *vm_resource_find(struct vm *vm, const void *kind);

/* A coroutine from the pool (or a new one), anchored by *ref. */
lua_State *vm_coroutine_get(struct vm *vm, int *ref);
/* Returns a coroutine that finished normally. */
void vm_coroutine_put(struct vm *vm, lua_State *co, int ref);
/* Releases a coroutine that errored or was abandoned. */
void vm_coroutine_drop(struct vm *vm, int ref);

/* Registers the `smtpd` module and the embedded Lua library in L's
 * package.preload. */
void vm_preload(lua_State *L);

#endif
