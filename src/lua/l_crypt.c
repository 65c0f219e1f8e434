/* l_crypt.c — smtpd.crypt.verify(password, hash) and
 * smtpd.crypt.hash(password [, method]) (async-api.md 6). Each call
 * validates its arguments, checks that the hook may wait, answers at once
 * what needs no hashing (a NUL in the password, a hash no library knows,
 * a cost above crypt_max_cost), and otherwise runs the hashing on the
 * thread pool (l_job) while the hook waits. The password is copied into
 * the job and wiped when the job is freed; it never reaches a log line.
 * Knows no SMTP. */
#include "l_crypt.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "l_job.h"
#include "lua_vm.h"
#include "passhash.h"

struct crypt_job {
    struct l_job job; /* first */
    bool hashing;
    enum passhash_kind kind;     /* verify */
    enum passhash_method method; /* hash */
    char *pw;
    size_t pwlen;
    char *hash;   /* verify: the stored hash; hash: the result */
    int verdict;  /* verify: passhash_verify's result */
    char err[128];
};

static void crypt_run(struct l_job *lj)
{
    struct crypt_job *j = (struct crypt_job *)lj;
    if (j->hashing) {
        j->hash = passhash_hash(j->method, j->pw, j->pwlen, j->err, sizeof j->err);
        return;
    }
    j->verdict = passhash_verify(j->kind, j->pw, j->pwlen, j->hash, j->err, sizeof j->err);
}

static int crypt_push(struct l_job *lj, lua_State *co)
{
    struct crypt_job *j = (struct crypt_job *)lj;
    if (j->hashing) {
        if (j->hash) {
            lua_pushstring(co, j->hash);
            return 1;
        }
        lua_pushnil(co);
        lua_pushstring(co, j->err);
        return 2;
    }
    if (j->verdict >= 0) {
        lua_pushboolean(co, j->verdict == 1);
        return 1;
    }
    lua_pushnil(co);
    if (j->verdict == -1) lua_pushliteral(co, "unsupported hash");
    else lua_pushstring(co, j->err);
    return 2;
}

static void crypt_free(struct l_job *lj)
{
    struct crypt_job *j = (struct crypt_job *)lj;
    passhash_wipe(j->pw, j->pwlen);
    free(j->pw);
    free(j->hash);
    free(j);
}

static struct crypt_job *crypt_job_new(lua_State *L, const char *what, const char *pw,
                                       size_t pwlen)
{
    struct crypt_job *j = calloc(1, sizeof *j);
    if (j) j->pw = malloc(pwlen + 1);
    if (!j || !j->pw) {
        free(j);
        luaL_error(L, "%s: out of memory", what);
        return NULL;
    }
    memcpy(j->pw, pw, pwlen);
    j->pw[pwlen] = '\0';
    j->pwlen = pwlen;
    l_job_init(&j->job, what, crypt_run, crypt_push, crypt_free);
    return j;
}

static int fail(lua_State *L, const char *err)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* smtpd.crypt.verify(password, hash) -> true | false | nil, err. Yields. */
static int l_crypt_verify(lua_State *L)
{
    size_t pwlen, hlen;
    luaL_checktype(L, 1, LUA_TSTRING);
    luaL_checktype(L, 2, LUA_TSTRING);
    const char *pw = lua_tolstring(L, 1, &pwlen);
    const char *hash = lua_tolstring(L, 2, &hlen);
    struct hook_state *h = hook_wait_check(L, "smtpd.crypt.verify");
    /* crypt(3) would verify the part before the NUL. */
    if (memchr(pw, '\0', pwlen)) return fail(L, "password contains NUL");
    enum passhash_kind kind;
    switch (passhash_classify(hash, hlen, &vm_of(L)->crypt_max_cost, &kind)) {
    case PASSHASH_UNSUPPORTED: return fail(L, "unsupported hash");
    case PASSHASH_TOO_COSTLY: return fail(L, "cost too high");
    case PASSHASH_OK: break;
    }
    struct crypt_job *j = crypt_job_new(L, "smtpd.crypt.verify", pw, pwlen);
    j->kind = kind;
    if (!(j->hash = strdup(hash))) {
        crypt_free(&j->job);
        return luaL_error(L, "smtpd.crypt.verify: out of memory");
    }
    return l_job_yield(L, h, &j->job);
}

/* smtpd.crypt.hash(password [, method]) -> encoded hash | nil, err. Yields. */
static int l_crypt_hash(lua_State *L)
{
    size_t pwlen;
    luaL_checktype(L, 1, LUA_TSTRING);
    const char *pw = lua_tolstring(L, 1, &pwlen);
    const char *name = luaL_optstring(L, 2, NULL);
    enum passhash_method m = passhash_method_parse(name);
    if (m == PASSHASH_METHOD_UNKNOWN)
        return luaL_argerror(L, 2, lua_pushfstring(L, "unknown method '%s' (expected %s)", name,
                                                   passhash_method_names));
    struct hook_state *h = hook_wait_check(L, "smtpd.crypt.hash");
    /* SCRAM secrets (mechanisms.md) come with SCRAM itself. */
    if (!passhash_method_supported(m)) return fail(L, "unsupported method");
    if (memchr(pw, '\0', pwlen)) return fail(L, "password contains NUL");
    struct crypt_job *j = crypt_job_new(L, "smtpd.crypt.hash", pw, pwlen);
    j->hashing = true;
    j->method = m;
    return l_job_yield(L, h, &j->job);
}

static const luaL_Reg crypt_functions[] = {
    {"verify", l_crypt_verify},
    {"hash", l_crypt_hash},
    {NULL, NULL},
};

void l_crypt_register(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_newtable(L);
    luaL_register(L, NULL, crypt_functions);
    lua_setfield(L, -2, "crypt");
    lua_pop(L, 1);
}
