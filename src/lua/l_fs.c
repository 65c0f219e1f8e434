/* l_fs.c — smtpd.fs.deliver_maildir(dir, bytes) and smtpd.fs.append(path,
 * bytes): the file writes and fsyncs of the maildir and mbox handlers run
 * on the thread pool (l_job) while the hook waits, so a slow disk does not
 * stall the loop. Also smtpd.log(level, message), so Lua modules (the
 * client's opportunistic TLS, the handlers) log through the server's log
 * with the hook's session id. The message bytes are copied into the job
 * and never logged. Knows no SMTP. */
#include "l_fs.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "fsdeliver.h"
#include "l_job.h"
#include "log.h"

struct fs_job {
    struct l_job job; /* first */
    bool maildir;
    char *path;
    char *data;
    size_t len;
    int rc;
    char name[512];
    char err[512];
};

static void fs_run(struct l_job *lj)
{
    struct fs_job *j = (struct fs_job *)lj;
    if (j->maildir)
        j->rc = fsdeliver_maildir(j->path, j->data, j->len, j->name, sizeof j->name, j->err,
                                  sizeof j->err);
    else
        j->rc = fsdeliver_append(j->path, j->data, j->len, j->err, sizeof j->err);
}

static int fs_push(struct l_job *lj, lua_State *co)
{
    struct fs_job *j = (struct fs_job *)lj;
    if (j->rc == 0) {
        if (j->maildir) lua_pushstring(co, j->name);
        else lua_pushboolean(co, 1);
        return 1;
    }
    lua_pushnil(co);
    lua_pushstring(co, j->err);
    return 2;
}

static void fs_free(struct l_job *lj)
{
    struct fs_job *j = (struct fs_job *)lj;
    free(j->path);
    free(j->data);
    free(j);
}

static int fs_submit(lua_State *L, bool maildir, const char *what)
{
    size_t plen, dlen;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_checklstring(L, 2, &dlen);
    if (plen == 0 || memchr(path, '\0', plen))
        return luaL_argerror(L, 1, "expected a path without NUL");
    struct hook_state *h = hook_wait_check(L, what);
    struct fs_job *j = calloc(1, sizeof *j);
    if (j) {
        j->path = strdup(path);
        j->data = malloc(dlen ? dlen : 1);
    }
    if (!j || !j->path || !j->data) {
        if (j) fs_free(&j->job);
        return luaL_error(L, "%s: out of memory", what);
    }
    memcpy(j->data, data, dlen);
    j->len = dlen;
    j->maildir = maildir;
    l_job_init(&j->job, what, fs_run, fs_push, fs_free);
    return l_job_yield(L, h, &j->job);
}

/* smtpd.fs.deliver_maildir(dir, bytes) -> name | nil, err. Yields. */
static int l_fs_deliver_maildir(lua_State *L)
{
    return fs_submit(L, true, "smtpd.fs.deliver_maildir");
}

/* smtpd.fs.append(path, bytes) -> true | nil, err. Yields. */
static int l_fs_append(lua_State *L) { return fs_submit(L, false, "smtpd.fs.append"); }

/* smtpd.log(level, message): level "error", "warn", "info" or "debug". */
static int l_log(lua_State *L)
{
    static const char *const levels[] = {"error", "warn", "info", "debug", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    size_t n;
    const char *msg = luaL_checklstring(L, 2, &n);
    if (!log_enabled(level)) return 0;
    char esc[2048];
    struct hook_state *h = hook_running(L);
    log_msg((enum log_level)level, h && h->sid ? h->sid : NULL, "%s",
            log_escape(msg, n, esc, sizeof esc));
    return 0;
}

static const luaL_Reg fs_functions[] = {
    {"deliver_maildir", l_fs_deliver_maildir},
    {"append", l_fs_append},
    {NULL, NULL},
};

void l_fs_register(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fs_functions);
    lua_setfield(L, -2, "fs");
    lua_pushcfunction(L, l_log);
    lua_setfield(L, -2, "log");
    lua_pop(L, 1);
}
