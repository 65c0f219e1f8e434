/* lua_vm.h — one Lua state of a policy generation, without SMTP: LuaJIT's
 * allocator wrapped to count the heap (the limit applies only while a hook
 * runs), the sandbox, the embedded library in package.preload, the load
 * budget for a script's top level, and the pool of finished coroutines.
 * Knows no SMTP; the policy (a generation) embeds one. */
#ifndef LUASMTPD_LUA_VM_H
#define LUASMTPD_LUA_VM_H

#include <stdbool.h>
#include <stddef.h>

#include <lua.h>

#define VM_POOL_MAX 64

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
