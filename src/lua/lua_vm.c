/* lua_vm.c — the Lua state of one generation (lua_vm.h). Must not know
 * SMTP, sessions or the policy that embeds it. */
#include "lua_vm.h"

#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdio.h>

#include "clock.h"
#include "embedded.h"
#include "lua_bind.h"
#include "lua_sandbox.h"

/* The allocator every generation runs on: LuaJIT's own, counted. */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct vm *vm = ud;
    lua_Alloc base = (lua_Alloc)vm->base_alloc;
    size_t old = ptr ? osize : 0;
    if (nsize > old && vm->in_hook && vm->heap_limit &&
        vm->heap_bytes + (nsize - old) > vm->heap_limit)
        return NULL; /* LuaJIT raises "not enough memory" in the hook */
    void *r = base(vm->base_alloc_ud, ptr, osize, nsize);
    if (r || nsize == 0) vm->heap_bytes = vm->heap_bytes - old + nsize;
    return r;
}

bool vm_open(struct vm *vm, char *err, size_t errlen)
{
    vm->L = luaL_newstate();
    if (!vm->L) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    lua_State *L = vm->L;
    lua_Alloc base = lua_getallocf(L, &vm->base_alloc_ud);
    vm->base_alloc = (void *)base;
    vm->heap_bytes = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    lua_setallocf(L, vm_alloc, vm);
    luaL_openlibs(L);
    l_sandbox_open(L);
    vm_preload(L);
    vm->thread_pool = (struct pool_config){0, POOL_DEFAULT_QUEUE};
    passhash_limits_default(&vm->crypt_max_cost);
    return true;
}

struct vm *vm_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud); /* vm_open installs vm_alloc with the vm as ud */
    return ud;
}

void vm_attach(struct vm *vm, struct ev_loop *loop)
{
    vm->loop = loop;
    for (struct vm_resource *r = vm->resources, *next; r; r = next) {
        next = r->next;
        if (r->attach) r->attach(r, vm);
    }
}

void vm_retire(struct vm *vm)
{
    if (vm->retired) return;
    vm->retired = true;
    for (struct vm_resource *r = vm->resources, *next; r; r = next) {
        next = r->next; /* retire may remove r */
        if (r->retire) r->retire(r, vm);
    }
}

void vm_resource_add(struct vm *vm, struct vm_resource *r)
{
    r->prev = NULL;
    r->next = vm->resources;
    if (r->next) r->next->prev = r;
    vm->resources = r;
}

void vm_resource_remove(struct vm *vm, struct vm_resource *r)
{
    if (r->prev) r->prev->next = r->next;
    else if (vm->resources == r) vm->resources = r->next;
    if (r->next) r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

struct vm_resource *vm_resource_find(struct vm *vm, const void *kind)
{
    for (struct vm_resource *r = vm->resources; r; r = r->next)
        if (r->kind == kind) return r;
    return NULL;
}

void vm_close(struct vm *vm)
{
    if (!vm->L) return;
    while (vm->resources) {
        struct vm_resource *r = vm->resources;
        vm_resource_remove(vm, r);
        r->close(r, vm);
    }
    /* LuaJIT frees its memory arena on close only when its own allocator is
     * installed: put it back, or every generation leaks. */
    if (vm->base_alloc) lua_setallocf(vm->L, (lua_Alloc)vm->base_alloc, vm->base_alloc_ud);
    lua_close(vm->L);
    vm->L = NULL;
}

/* Per thread: a reload builds on a thread of its own while the loop runs. */
static __thread double load_deadline, load_budget;

/* Count hook while a top level runs (the JIT is off then, so the hook fires
 * even in tight loops). */
static void load_budget_hook(lua_State *L, lua_Debug *ar)
{
    if (clock_monotonic() > load_deadline)
        luaL_error(L, "the script's top level did not finish within %.1f s", load_budget);
}

int vm_pcall_with_budget(struct vm *vm, int nargs, int nresults, int errfunc, double budget)
{
    lua_State *L = vm->L;
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    load_budget = budget;
    load_deadline = clock_monotonic() + budget;
    lua_sethook(L, load_budget_hook, LUA_MASKCOUNT, 10000);
    vm->loading = true;
    int rc = lua_pcall(L, nargs, nresults, errfunc);
    vm->loading = false;
    lua_sethook(L, NULL, 0, 0);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_ON);
    return rc;
}

void vm_make_room(struct vm *vm)
{
    if (vm->heap_limit && vm->heap_bytes > vm->heap_limit / 4 * 3) lua_gc(vm->L, LUA_GCCOLLECT, 0);
}

lua_State *vm_coroutine_get(struct vm *vm, int *ref)
{
    if (vm->n_pool > 0) {
        vm->n_pool--;
        *ref = vm->pool[vm->n_pool].ref;
        return vm->pool[vm->n_pool].co;
    }
    lua_State *co = lua_newthread(vm->L);
    *ref = luaL_ref(vm->L, LUA_REGISTRYINDEX); /* anchors the thread */
    return co;
}

void vm_coroutine_put(struct vm *vm, lua_State *co, int ref)
{
    lua_settop(co, 0);
    if (vm->n_pool == VM_POOL_MAX) {
        luaL_unref(vm->L, LUA_REGISTRYINDEX, ref);
        return;
    }
    vm->pool[vm->n_pool].co = co;
    vm->pool[vm->n_pool].ref = ref;
    vm->n_pool++;
}

void vm_coroutine_drop(struct vm *vm, int ref) { luaL_unref(vm->L, LUA_REGISTRYINDEX, ref); }

/* package.preload loader for an embedded module; upvalue 1 is its index. */
static int load_embedded(lua_State *L)
{
    const struct embedded_file *f = &embedded_files[lua_tointeger(L, lua_upvalueindex(1))];
    char chunkname[128];
    snprintf(chunkname, sizeof chunkname, "=[luasmtpd] %s", f->name);
    if (luaL_loadbuffer(L, f->data, f->size, chunkname)) return lua_error(L);
    lua_pushstring(L, f->name);
    lua_call(L, 1, 1);
    return 1;
}

void vm_preload(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_smtpd);
    lua_setfield(L, -2, "smtpd");
    for (int i = 0; embedded_files[i].name; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, embedded_files[i].name);
    }
    lua_pop(L, 2);
}
