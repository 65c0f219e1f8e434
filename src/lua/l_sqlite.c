/* l_sqlite.c — smtpd.sqlite.open(path [, {readonly = true}]) and the db
 * object's query and exec (async-api.md 6). A db object is only a path and
 * a mode: every statement runs on the thread pool (l_job), and each pool
 * thread keeps its own SQLite connection per path and mode, opened lazily
 * on that thread and closed when the thread exits (so no connection is
 * ever used by two threads). Parameters are copied from Lua into C values
 * and bound with sqlite3_bind_*, never interpolated; rows come back as C
 * values and become Lua tables on the loop. Knows no SMTP. */
#include "l_sqlite.h"

#include <lauxlib.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "l_job.h"
#include "lua_vm.h"

/* Connections a pool thread keeps open (least recently used closed first). */
#define SQLITE_CONNS_PER_THREAD 16
/* How long a statement waits for another connection's lock (another pool
 * thread, worker or process writing the same file), in milliseconds. */
#define SQLITE_BUSY_TIMEOUT_MS 5000
/* What a row and a cell of a result cost as Lua values, roughly (a table
 * with its hash part; a key slot and a value), for the result budget. */
#define ROW_LUA_BYTES 64
#define CELL_LUA_BYTES 48
/* Parameters one call binds (SQLite's own default limit is 32766). */
#define SQLITE_MAX_PARAMS 999

/* ------------------------------------------------------ the pool side */

struct sqlite_conn {
    struct sqlite_conn *next;
    char *path;
    bool readonly;
    sqlite3 *db;
    dev_t dev; /* the file it opened: one renamed over it is reopened */
    ino_t ino;
};

static pthread_key_t conn_key;
static pthread_once_t conn_once = PTHREAD_ONCE_INIT;

/* A pool thread exits (pool_shutdown): close its connections. */
static void conns_close(void *head)
{
    for (struct sqlite_conn *c = head, *next; c; c = next) {
        next = c->next;
        sqlite3_close_v2(c->db);
        free(c->path);
        free(c);
    }
}

static void conn_key_create(void) { pthread_key_create(&conn_key, conns_close); }

/* This thread's connection for path and mode, opened if needed; NULL with
 * SQLite's message in err. A file replaced since (a user store rebuilt and
 * renamed into place) is opened again: the old connection would go on
 * reading the old file. */
static sqlite3 *conn_get(const char *path, bool readonly, char *err, size_t errlen)
{
    pthread_once(&conn_once, conn_key_create);
    struct sqlite_conn *head = pthread_getspecific(conn_key), **pp = &head, *c;
    struct stat st;
    bool have_st = stat(path, &st) == 0;
    int n = 0;
    for (; (c = *pp); pp = &c->next, n++) {
        if (c->readonly == readonly && !strcmp(c->path, path)) {
            *pp = c->next;
            if (have_st && st.st_dev == c->dev && st.st_ino == c->ino) {
                c->next = head; /* to the front: most recently used */
                pthread_setspecific(conn_key, c);
                return c->db;
            }
            c->next = NULL;
            conns_close(c);
            pthread_setspecific(conn_key, head);
            break;
        }
    }
    n = 0;
    for (c = head; c; c = c->next) n++;
    sqlite3 *db = NULL;
    int flags = (readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
                SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close_v2(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, SQLITE_BUSY_TIMEOUT_MS);
    /* Created by the open (read-write mode) if it was missing. */
    if (!have_st) have_st = stat(path, &st) == 0;
    c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        sqlite3_close_v2(db);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->readonly = readonly;
    c->db = db;
    c->dev = have_st ? st.st_dev : 0;
    c->ino = have_st ? st.st_ino : 0;
    c->next = head;
    head = c;
    if (n >= SQLITE_CONNS_PER_THREAD) {
        /* Close the least recently used: the last of the list. */
        struct sqlite_conn **last = &head->next;
        while ((*last)->next) last = &(*last)->next;
        conns_close(*last);
        *last = NULL;
    }
    pthread_setspecific(conn_key, head);
    return db;
}

/* One C value: a parameter, or a column of a row. */
struct sql_value {
    int type; /* SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL */
    union {
        int64_t i;
        double d;
        struct {
            char *p;
            size_t n;
        } s;
    } u;
};

enum sql_op { SQL_OPEN, SQL_QUERY, SQL_EXEC };

struct sql_job {
    struct l_job job; /* first */
    enum sql_op op;
    bool readonly;
    char *path;
    char *sql;
    size_t sql_len;
    struct sql_value *params;
    int n_params;
    /* Results. */
    bool ok;
    char err[256];
    int64_t changes;
    int n_cols;
    char **cols;
    struct sql_value *cells; /* n_rows * n_cols */
    size_t n_rows, cap_rows;
    /* A result the hook's Lua heap could not hold is refused on the thread
     * rather than built on the loop: lua_memory_limit in bytes (0 = none),
     * against an estimate of what the rows cost as Lua tables. */
    size_t max_bytes, bytes;
};

static void value_free(struct sql_value *v)
{
    if (v->type == SQLITE_TEXT || v->type == SQLITE_BLOB) free(v->u.s.p);
}

static bool bind_params(struct sql_job *j, sqlite3_stmt *st, int *next)
{
    int want = sqlite3_bind_parameter_count(st);
    for (int k = 1; k <= want; k++, (*next)++) {
        if (*next >= j->n_params) {
            snprintf(j->err, sizeof j->err, "%d parameters expected, %d given", *next + want - k + 1,
                     j->n_params);
            return false;
        }
        struct sql_value *v = &j->params[*next];
        int rc;
        switch (v->type) {
        case SQLITE_INTEGER: rc = sqlite3_bind_int64(st, k, v->u.i); break;
        case SQLITE_FLOAT: rc = sqlite3_bind_double(st, k, v->u.d); break;
        case SQLITE_TEXT: rc = sqlite3_bind_text(st, k, v->u.s.p, (int)v->u.s.n, SQLITE_STATIC); break;
        default: rc = sqlite3_bind_null(st, k); break;
        }
        if (rc != SQLITE_OK) {
            snprintf(j->err, sizeof j->err, "%s", sqlite3_errstr(rc));
            return false;
        }
    }
    return true;
}

static bool copy_column(struct sql_value *v, sqlite3_stmt *st, int c)
{
    v->type = sqlite3_column_type(st, c);
    switch (v->type) {
    case SQLITE_INTEGER: v->u.i = sqlite3_column_int64(st, c); return true;
    case SQLITE_FLOAT: v->u.d = sqlite3_column_double(st, c); return true;
    case SQLITE_TEXT:
    case SQLITE_BLOB: {
        const void *p = v->type == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, c)
                                               : sqlite3_column_blob(st, c);
        size_t n = (size_t)sqlite3_column_bytes(st, c);
        v->u.s.p = malloc(n + 1);
        if (!v->u.s.p) {
            v->type = SQLITE_NULL;
            return false;
        }
        if (n) memcpy(v->u.s.p, p, n);
        v->u.s.p[n] = '\0';
        v->u.s.n = n;
        return true;
    }
    default: v->type = SQLITE_NULL; return true;
    }
}

static bool keep_row(struct sql_job *j, sqlite3_stmt *st)
{
    if (!j->cols) {
        j->n_cols = sqlite3_column_count(st);
        j->cols = calloc((size_t)j->n_cols + 1, sizeof *j->cols);
        if (!j->cols) return false;
        for (int c = 0; c < j->n_cols; c++) {
            const char *name = sqlite3_column_name(st, c);
            if (!(j->cols[c] = strdup(name ? name : ""))) return false;
        }
    }
    if (j->n_rows == j->cap_rows) {
        size_t cap = j->cap_rows ? j->cap_rows * 2 : 8;
        struct sql_value *cells = realloc(j->cells, cap * (size_t)j->n_cols * sizeof *cells);
        if (!cells && j->n_cols) return false;
        j->cells = cells;
        j->cap_rows = cap;
    }
    struct sql_value *row = j->cells + j->n_rows * (size_t)j->n_cols;
    j->n_rows++;
    for (int c = 0; c < j->n_cols; c++) row[c].type = SQLITE_NULL;
    j->bytes += ROW_LUA_BYTES + (size_t)j->n_cols * CELL_LUA_BYTES;
    for (int c = 0; c < j->n_cols; c++) {
        if (!copy_column(&row[c], st, c)) return false;
        if (row[c].type == SQLITE_TEXT || row[c].type == SQLITE_BLOB) j->bytes += row[c].u.s.n;
    }
    if (j->max_bytes && j->bytes > j->max_bytes) {
        snprintf(j->err, sizeof j->err, "result larger than lua_memory_limit (%zu MiB)",
                 j->max_bytes / (1024 * 1024));
        return false;
    }
    return true;
}

/* Runs one statement to its end; keeps its rows for a query. */
static bool run_statement(struct sql_job *j, sqlite3 *db, sqlite3_stmt *st)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (j->op == SQL_QUERY && !keep_row(j, st)) {
            if (!j->err[0]) snprintf(j->err, sizeof j->err, "out of memory");
            return false;
        }
    }
    if (rc != SQLITE_DONE) {
        snprintf(j->err, sizeof j->err, "%s", sqlite3_errmsg(db));
        return false;
    }
    if (!sqlite3_stmt_readonly(st)) j->changes += sqlite3_changes(db);
    return true;
}

static bool only_space(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != ';') return false;
    return true;
}

/* query: one statement; exec: one or more, the parameters bound in order
 * across them. Each call is its own transaction: a BEGIN left open is
 * rolled back (the next call may run on another thread's connection). */
static void sql_run(struct l_job *lj)
{
    struct sql_job *j = (struct sql_job *)lj;
    sqlite3 *db = conn_get(j->path, j->readonly, j->err, sizeof j->err);
    if (!db) return;
    if (j->op == SQL_OPEN) {
        /* Make SQLite read the file now: a file that is no database fails
         * here rather than at the first statement. */
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) !=
                SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW) {
            snprintf(j->err, sizeof j->err, "%s", sqlite3_errmsg(db));
            sqlite3_finalize(st);
            return;
        }
        sqlite3_finalize(st);
        j->ok = true;
        return;
    }
    const char *sql = j->sql, *end = j->sql + j->sql_len;
    int next = 0, statements = 0;
    bool ok = true;
    while (ok && !only_space(sql, end)) {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        if (sqlite3_prepare_v2(db, sql, (int)(end - sql), &st, &tail) != SQLITE_OK) {
            snprintf(j->err, sizeof j->err, "%s", sqlite3_errmsg(db));
            ok = false;
            break;
        }
        if (!st) { /* a comment or nothing */
            sql = tail;
            continue;
        }
        statements++;
        if (j->op == SQL_QUERY && !only_space(tail, end)) {
            snprintf(j->err, sizeof j->err, "query runs one statement (exec runs several)");
            ok = false;
        } else {
            ok = bind_params(j, st, &next) && run_statement(j, db, st);
        }
        sqlite3_finalize(st);
        sql = tail;
    }
    if (ok && next < j->n_params) {
        snprintf(j->err, sizeof j->err, "%d parameters expected, %d given", next, j->n_params);
        ok = false;
    }
    if (!sqlite3_get_autocommit(db)) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        if (ok)
            snprintf(j->err, sizeof j->err,
                     "transaction left open and rolled back (BEGIN and COMMIT go in one exec)");
        ok = false;
    }
    (void)statements;
    j->ok = ok;
}

/* ------------------------------------------------------ the loop side */

struct sqlite_db {
    bool readonly;
    char path[]; /* NUL-terminated */
};

static void push_value(lua_State *co, const struct sql_value *v)
{
    switch (v->type) {
    case SQLITE_INTEGER: lua_pushnumber(co, (lua_Number)v->u.i); break;
    case SQLITE_FLOAT: lua_pushnumber(co, v->u.d); break;
    case SQLITE_TEXT:
    case SQLITE_BLOB: lua_pushlstring(co, v->u.s.p, v->u.s.n); break;
    default: lua_pushnil(co); break;
    }
}

static void push_db(lua_State *L, const char *path, bool readonly)
{
    size_t n = strlen(path);
    struct sqlite_db *db = lua_newuserdata(L, sizeof *db + n + 1);
    db->readonly = readonly;
    memcpy(db->path, path, n + 1);
    luaL_getmetatable(L, L_SQLITE_DB_MT);
    lua_setmetatable(L, -2);
}

static int sql_push(struct l_job *lj, lua_State *co)
{
    struct sql_job *j = (struct sql_job *)lj;
    if (!j->ok) {
        lua_pushnil(co);
        lua_pushstring(co, j->err);
        return 2;
    }
    switch (j->op) {
    case SQL_OPEN: push_db(co, j->path, j->readonly); return 1;
    case SQL_EXEC: lua_pushnumber(co, (lua_Number)j->changes); return 1;
    case SQL_QUERY: break;
    }
    lua_createtable(co, (int)j->n_rows, 0);
    for (size_t r = 0; r < j->n_rows; r++) {
        lua_createtable(co, 0, j->n_cols);
        const struct sql_value *row = j->cells + r * (size_t)j->n_cols;
        for (int c = 0; c < j->n_cols; c++) {
            if (row[c].type == SQLITE_NULL) continue; /* a NULL column is an absent key */
            push_value(co, &row[c]);
            lua_setfield(co, -2, j->cols[c]);
        }
        lua_rawseti(co, -2, (int)r + 1);
    }
    return 1;
}

static void sql_free(struct l_job *lj)
{
    struct sql_job *j = (struct sql_job *)lj;
    for (int i = 0; i < j->n_params; i++) value_free(&j->params[i]);
    free(j->params);
    for (size_t k = 0; k < j->n_rows * (size_t)j->n_cols; k++) value_free(&j->cells[k]);
    free(j->cells);
    if (j->cols)
        for (int c = 0; c < j->n_cols; c++) free(j->cols[c]);
    free(j->cols);
    free(j->path);
    free(j->sql);
    free(j);
}

static struct sql_job *sql_job_new(lua_State *L, const char *what, enum sql_op op,
                                   const char *path, bool readonly)
{
    struct sql_job *j = calloc(1, sizeof *j);
    if (!j || !(j->path = strdup(path))) {
        free(j);
        luaL_error(L, "%s: out of memory", what);
        return NULL;
    }
    j->op = op;
    j->readonly = readonly;
    j->max_bytes = vm_of(L)->heap_limit;
    l_job_init(&j->job, what, sql_run, sql_push, sql_free);
    return j;
}

static struct sqlite_db *check_db(lua_State *L, int idx)
{
    struct sqlite_db *db = luaL_testudata(L, idx, L_SQLITE_DB_MT);
    if (!db)
        luaL_argerror(L, idx, lua_pushfstring(L, "expected %s, got %s", L_SQLITE_DB_MT,
                                              luaL_typename(L, idx)));
    return db;
}

/* smtpd.sqlite.open(path [, {readonly = true}]) -> db | nil, err. Yields. */
static int l_sqlite_open(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TSTRING);
    size_t len;
    const char *path = lua_tolstring(L, 1, &len);
    if (len == 0 || memchr(path, '\0', len)) return luaL_argerror(L, 1, "expected a file path");
    bool readonly = false;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "readonly");
        if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
            return luaL_argerror(L, 2, "readonly must be a boolean");
        readonly = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    struct hook_state *h = hook_wait_check(L, "smtpd.sqlite.open");
    struct sql_job *j = sql_job_new(L, "smtpd.sqlite.open", SQL_OPEN, path, readonly);
    return l_job_yield(L, h, &j->job);
}

/* Copies the Lua arguments from index `first` on into j's parameters;
 * raises (before anything is queued) for a type SQLite cannot take. */
static void copy_params(lua_State *L, struct sql_job *j, int first, const char *what)
{
    int n = lua_gettop(L) - first + 1;
    if (n <= 0) return;
    if (n > SQLITE_MAX_PARAMS) {
        sql_free(&j->job);
        luaL_error(L, "%s: more than %d parameters", what, SQLITE_MAX_PARAMS);
    }
    j->params = calloc((size_t)n, sizeof *j->params);
    if (!j->params) {
        sql_free(&j->job);
        luaL_error(L, "%s: out of memory", what);
    }
    for (int i = 0; i < n; i++) {
        int idx = first + i;
        struct sql_value *v = &j->params[i];
        j->n_params = i + 1;
        switch (lua_type(L, idx)) {
        case LUA_TNIL: v->type = SQLITE_NULL; break;
        case LUA_TBOOLEAN:
            v->type = SQLITE_INTEGER;
            v->u.i = lua_toboolean(L, idx);
            break;
        case LUA_TNUMBER: {
            lua_Number x = lua_tonumber(L, idx);
            /* Whole numbers bind as integers (so 1 = 1 in an INTEGER column). */
            if (x == floor(x) && fabs(x) < 9007199254740992.0) {
                v->type = SQLITE_INTEGER;
                v->u.i = (int64_t)x;
            } else {
                v->type = SQLITE_FLOAT;
                v->u.d = x;
            }
            break;
        }
        case LUA_TSTRING: {
            size_t len;
            const char *s = lua_tolstring(L, idx, &len);
            v->type = SQLITE_TEXT;
            v->u.s.p = malloc(len + 1);
            if (!v->u.s.p) {
                v->type = SQLITE_NULL;
                sql_free(&j->job);
                luaL_error(L, "%s: out of memory", what);
            }
            memcpy(v->u.s.p, s, len + 1);
            v->u.s.n = len;
            break;
        }
        default: {
            const char *tn = luaL_typename(L, idx);
            v->type = SQLITE_NULL;
            sql_free(&j->job);
            luaL_argerror(L, idx,
                          lua_pushfstring(L, "expected a string, number, boolean or nil, got %s", tn));
        }
        }
    }
}

static int statement(lua_State *L, enum sql_op op, const char *what)
{
    struct sqlite_db *db = check_db(L, 1);
    luaL_checktype(L, 2, LUA_TSTRING);
    size_t len;
    const char *sql = lua_tolstring(L, 2, &len);
    struct hook_state *h = hook_wait_check(L, what);
    struct sql_job *j = sql_job_new(L, what, op, db->path, db->readonly);
    if (!(j->sql = malloc(len + 1))) {
        sql_free(&j->job);
        return luaL_error(L, "%s: out of memory", what);
    }
    memcpy(j->sql, sql, len + 1);
    j->sql_len = len;
    copy_params(L, j, 3, what);
    return l_job_yield(L, h, &j->job);
}

/* db:query(sql, ...) -> rows | nil, err. Yields. */
static int l_sqlite_query(lua_State *L) { return statement(L, SQL_QUERY, "db:query"); }

/* db:exec(sql, ...) -> changed rows | nil, err. Yields. */
static int l_sqlite_exec(lua_State *L) { return statement(L, SQL_EXEC, "db:exec"); }

static int l_sqlite_tostring(lua_State *L)
{
    struct sqlite_db *db = check_db(L, 1);
    lua_pushfstring(L, "%s (%s%s)", L_SQLITE_DB_MT, db->path, db->readonly ? ", readonly" : "");
    return 1;
}

static const luaL_Reg db_methods[] = {
    {"query", l_sqlite_query},
    {"exec", l_sqlite_exec},
    {NULL, NULL},
};

static const luaL_Reg sqlite_functions[] = {
    {"open", l_sqlite_open},
    {NULL, NULL},
};

/* The db objects' metatable: methods, tostring, and no getmetatable. */
static void db_metatable(lua_State *L)
{
    if (luaL_newmetatable(L, L_SQLITE_DB_MT)) {
        lua_newtable(L);
        luaL_register(L, NULL, db_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_sqlite_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, L_SQLITE_DB_MT);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

void l_sqlite_register(lua_State *L)
{
    db_metatable(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "smtpd");
    lua_call(L, 1, 1);
    lua_newtable(L);
    luaL_register(L, NULL, sqlite_functions);
    lua_setfield(L, -2, "sqlite");
    lua_pop(L, 1);
}
