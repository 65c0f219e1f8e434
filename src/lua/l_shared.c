/* l_shared.c — smtpd.shared.NAME (async-api.md 7): the Lua face of the
 * shared dictionaries in src/async/shdict.c. Every method checks its
 * arguments (raising on a programming error), makes one atomic call into
 * the dictionary, and only then touches Lua: no Lua allocation happens while
 * the dictionary's lock is held, so a Lua error can never leave it locked.
 * None yields. Knows no SMTP.
 *
 * The dictionaries are created from the options of the generation loaded at
 * start-up, i.e. after its top level ran. While that first top level runs,
 * its calls go to provisional dictionaries of the same names (private to
 * this process); once the real ones exist, what they hold is copied over
 * (l_shared_startup_end). `smtpd.shared.NAME` taken at the top level and
 * kept for the hooks finds the real dictionary at its first call there. */
#include "l_shared.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lua_vm.h"
#include "shdict.h"

#define SHARED_DICT_MT "smtpd.shared_dict"

struct l_dict {
    struct shdict *d; /* NULL until found */
    char name[SHDICT_NAME_MAX];
};

/* Where a get copies a string value before Lua sees it: one buffer per
 * generation (a reload's top level runs on the builder thread while the
 * loop's hooks run on the current generation), freed with its state. */
struct get_buf {
    struct vm_resource res;
    struct shdict_buf buf;
};
static const char get_buf_kind;

static void get_buf_close(struct vm_resource *r, struct vm *vm)
{
    struct get_buf *b = (struct get_buf *)r;
    free(b->buf.data);
    free(b);
}

static struct shdict_buf *get_buf_of(lua_State *L)
{
    struct vm *vm = vm_of(L);
    struct vm_resource *r = vm_resource_find(vm, &get_buf_kind);
    if (!r) {
        struct get_buf *b = calloc(1, sizeof *b);
        if (!b) luaL_error(L, "smtpd.shared: out of memory");
        b->res.kind = &get_buf_kind;
        b->res.close = get_buf_close;
        vm_resource_add(vm, &b->res);
        r = &b->res;
    }
    return &((struct get_buf *)r)->buf;
}

/* The start-up load's provisional dictionaries (main thread only, before
 * the loop runs). Sparse: only the pages a top level writes are used. */
#define PROVISIONAL_SIZE (16L * 1024 * 1024)
static bool startup;
static struct {
    char name[SHDICT_NAME_MAX];
    struct shdict_region *r;
} provisional[SHDICT_MAX];
static size_t n_provisional;

void l_shared_startup_begin(void)
{
    startup = true;
}

static struct shdict *provisional_dict(lua_State *L, const char *name)
{
    for (size_t i = 0; i < n_provisional; i++)
        if (!strcmp(provisional[i].name, name))
            return shdict_region_find(provisional[i].r, name, strlen(name));
    if (n_provisional == SHDICT_MAX)
        luaL_error(L, "smtpd.shared: more than %d dictionaries used at the top level", SHDICT_MAX);
    struct shdict_spec sp = {.size = PROVISIONAL_SIZE};
    strcpy(sp.name, name);
    char err[256];
    struct shdict_region *r = shdict_region_create(&sp, 1, err, sizeof err);
    if (!r) luaL_error(L, "smtpd.shared.%s: %s", name, err);
    strcpy(provisional[n_provisional].name, name);
    provisional[n_provisional++].r = r;
    return shdict_region_find(r, name, strlen(name));
}

bool l_shared_startup_end(char *err, size_t errlen)
{
    bool ok = true;
    for (size_t i = 0; i < n_provisional; i++) {
        const char *name = provisional[i].name;
        struct shdict *d = shdict_region_find(shdict_process_region(), name, strlen(name));
        if (!d && ok) {
            snprintf(err, errlen,
                     "smtpd.shared.%s is used at the top level of the script, but the "
                     "option shared_dict does not declare it",
                     name);
            ok = false;
        }
        if (d) shdict_copy_into(d, shdict_region_find(provisional[i].r, name, strlen(name)));
        shdict_region_close(provisional[i].r);
    }
    n_provisional = 0;
    startup = false;
    return ok;
}

static struct shdict *check_dict(lua_State *L, const char *method)
{
    struct l_dict *ud = luaL_testudata(L, 1, SHARED_DICT_MT);
    if (!ud)
        luaL_error(L, "%s: expected a shared dictionary as self, got %s (call it as d:%s(...))",
                   method, luaL_typename(L, 1), method);
    if (ud->d) return ud->d;
    ud->d = shdict_region_find(shdict_process_region(), ud->name, strlen(ud->name));
    if (ud->d) return ud->d;
    /* Not kept in ud: the provisional one goes once the real one exists. */
    struct vm *vm = vm_of(L);
    if (startup && vm && vm->loading) return provisional_dict(L, ud->name);
    luaL_error(L,
               "smtpd.shared.%s: no such shared dictionary (declare it in the option "
               "shared_dict)",
               ud->name);
    return NULL;
}

static const char *check_key(lua_State *L, int idx, size_t *len)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "expected a string key, got %s", luaL_typename(L, idx)));
    const char *k = lua_tolstring(L, idx, len);
    if (*len == 0) luaL_argerror(L, idx, "the key is empty");
    if (*len > SHDICT_KEY_MAX)
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "the key is longer than %d bytes", SHDICT_KEY_MAX));
    return k;
}

static void check_value(lua_State *L, int idx, struct shdict_value *v)
{
    memset(v, 0, sizeof *v);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        v->type = SHDICT_NIL;
        break;
    case LUA_TBOOLEAN:
        v->type = SHDICT_BOOLEAN;
        v->boolean = lua_toboolean(L, idx);
        break;
    case LUA_TNUMBER:
        v->type = SHDICT_NUMBER;
        v->number = lua_tonumber(L, idx);
        break;
    case LUA_TSTRING:
        v->type = SHDICT_STRING;
        v->str = lua_tolstring(L, idx, &v->len);
        if (v->len > SHDICT_VALUE_MAX)
            luaL_argerror(L, idx, "a string value is at most 1 MiB (1048576 bytes)");
        break;
    default:
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "expected a string, number or boolean, got %s",
                                      luaL_typename(L, idx)));
    }
}

static double check_ttl(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx)) return 0;
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_argerror(
            L, idx, lua_pushfstring(L, "expected a ttl in seconds, got %s", luaL_typename(L, idx)));
    double t = lua_tonumber(L, idx);
    if (!(t >= 0 && t <= SHDICT_TTL_MAX))
        luaL_argerror(L, idx, "expected a ttl in seconds between 0 (none) and 1e9");
    return t;
}

static double check_number(lua_State *L, int idx, const char *what)
{
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "expected %s, got %s", what, luaL_typename(L, idx)));
    double x = lua_tonumber(L, idx);
    if (!isfinite(x)) luaL_argerror(L, idx, lua_pushfstring(L, "%s must be finite", what));
    return x;
}

static int fail(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

static int stored(lua_State *L, enum shdict_status st, const char *exists_err)
{
    switch (st) {
    case SHDICT_OK:
        lua_pushboolean(L, 1);
        return 1;
    case SHDICT_EVICTED:
        lua_pushboolean(L, 1);
        lua_pushliteral(L, "evicted");
        return 2;
    case SHDICT_EXISTS:
        return fail(L, exists_err);
    default:
        return fail(L, "no memory");
    }
}

static int l_shared_get(lua_State *L)
{
    struct shdict *d = check_dict(L, "get");
    size_t klen;
    const char *k = check_key(L, 2, &klen);
    struct shdict_value v;
    enum shdict_status st = shdict_get(d, k, klen, &v, get_buf_of(L));
    if (st == SHDICT_NO_MEMORY) return luaL_error(L, "smtpd.shared: out of memory");
    if (st != SHDICT_OK) {
        lua_pushnil(L);
        return 1;
    }
    switch (v.type) {
    case SHDICT_STRING:
        lua_pushlstring(L, v.str, v.len);
        break;
    case SHDICT_NUMBER:
        lua_pushnumber(L, v.number);
        break;
    case SHDICT_BOOLEAN:
        lua_pushboolean(L, v.boolean);
        break;
    default:
        lua_pushnil(L);
    }
    return 1;
}

static int set_or_add(lua_State *L, bool add)
{
    struct shdict *d = check_dict(L, add ? "add" : "set");
    size_t klen;
    const char *k = check_key(L, 2, &klen);
    struct shdict_value v;
    check_value(L, 3, &v);
    if (add && v.type == SHDICT_NIL)
        luaL_argerror(L, 3, "expected a string, number or boolean, got nil");
    double ttl = check_ttl(L, 4);
    return stored(L, shdict_set(d, k, klen, &v, ttl, add), "exists");
}

static int l_shared_set(lua_State *L)
{
    return set_or_add(L, false);
}
static int l_shared_add(lua_State *L)
{
    return set_or_add(L, true);
}

static int l_shared_incr(lua_State *L)
{
    struct shdict *d = check_dict(L, "incr");
    size_t klen;
    const char *k = check_key(L, 2, &klen);
    double n = check_number(L, 3, "a number to add");
    double init, *initp = NULL;
    if (!lua_isnoneornil(L, 4)) {
        init = check_number(L, 4, "an initial number");
        initp = &init;
    }
    double init_ttl = check_ttl(L, 5);
    double out = 0;
    switch (shdict_incr(d, k, klen, n, initp, init_ttl, &out)) {
    case SHDICT_OK:
    case SHDICT_EVICTED:
        lua_pushnumber(L, out);
        return 1;
    case SHDICT_NOT_FOUND:
        return fail(L, "not found");
    case SHDICT_NOT_A_NUMBER:
        return fail(L, "not a number");
    default:
        return fail(L, "no memory");
    }
}

static int l_shared_delete(lua_State *L)
{
    struct shdict *d = check_dict(L, "delete");
    size_t klen;
    const char *k = check_key(L, 2, &klen);
    shdict_delete(d, k, klen);
    return 0;
}

static int l_shared_ttl(lua_State *L)
{
    struct shdict *d = check_dict(L, "ttl");
    size_t klen;
    const char *k = check_key(L, 2, &klen);
    double left;
    if (shdict_ttl(d, k, klen, &left) != SHDICT_OK) return fail(L, "not found");
    lua_pushnumber(L, left);
    return 1;
}

static int l_shared_expire(lua_State *L)
{
    struct shdict *d = check_dict(L, "expire");
    size_t klen;
    const char *k = check_key(L, 2, &klen);
    if (lua_isnoneornil(L, 3))
        luaL_argerror(L, 3, "expected a ttl in seconds (0: none), got no value");
    double ttl = check_ttl(L, 3);
    if (shdict_expire(d, k, klen, ttl) != SHDICT_OK) return fail(L, "not found");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_shared_flush_all(lua_State *L)
{
    shdict_flush_all(check_dict(L, "flush_all"));
    return 0;
}

static int l_shared_tostring(lua_State *L)
{
    struct l_dict *ud = luaL_checkudata(L, 1, SHARED_DICT_MT);
    lua_pushfstring(L, "smtpd.shared.%s", ud->name);
    return 1;
}

/* smtpd.shared[name]: the dictionary object (cached in the table), or nil. */
static int l_shared_index(lua_State *L)
{
    size_t len;
    const char *name = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &len) : NULL;
    if (!name || !shdict_name_valid(name, len)) return 0;
    struct vm *vm = vm_of(L);
    struct shdict *d = shdict_region_find(shdict_process_region(), name, len);
    if (!d && !(vm && vm->loading)) return 0;
    struct l_dict *ud = lua_newuserdata(L, sizeof *ud);
    ud->d = d;
    memcpy(ud->name, name, len);
    ud->name[len] = '\0';
    luaL_getmetatable(L, SHARED_DICT_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

void l_shared_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"get", l_shared_get},
        {"set", l_shared_set},
        {"add", l_shared_add},
        {"incr", l_shared_incr},
        {"delete", l_shared_delete},
        {"ttl", l_shared_ttl},
        {"expire", l_shared_expire},
        {"flush_all", l_shared_flush_all},
        {NULL, NULL},
    };
    luaL_newmetatable(L, SHARED_DICT_MT);
    int mt = lua_gettop(L);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, mt, "__index");
    lua_pushcfunction(L, l_shared_tostring);
    lua_setfield(L, mt, "__tostring");
    lua_pushliteral(L, "smtpd.shared dictionary");
    lua_setfield(L, mt, "__metatable");
    lua_pop(L, 1);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_newtable(L); /* smtpd.shared, its fields made on first use */
    lua_newtable(L);
    int index_mt = lua_gettop(L);
    lua_pushcfunction(L, l_shared_index);
    lua_setfield(L, index_mt, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "shared");
    lua_pop(L, 1);
}
