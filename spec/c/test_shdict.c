/* test_shdict.c — the shared dictionaries of src/async/shdict.c on their
 * own: every operation and answer, TTL expiry, LRU eviction, "no memory",
 * the value limits, the structures' invariants after each case, a region
 * seen through a second mapping (as a worker maps the master's), and the
 * robust lock: a child process that dies holding it does not wedge the
 * parent. Order of events, never elapsed time, is what is asserted. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "shdict.h"

static char why[256];

#define CHECK_SANE(d) CHECK(shdict_check(d, why, sizeof why), "%s", why)

static struct shdict_value str(const char *s)
{
    return (struct shdict_value){.type = SHDICT_STRING, .str = s, .len = strlen(s)};
}
static struct shdict_value num(double x)
{
    return (struct shdict_value){.type = SHDICT_NUMBER, .number = x};
}

static struct shdict_region *one(const char *name, long size)
{
    struct shdict_spec sp = {.size = size};
    strcpy(sp.name, name);
    char err[256];
    struct shdict_region *r = shdict_region_create(&sp, 1, err, sizeof err);
    if (!r) fprintf(stderr, "region: %s\n", err);
    return r;
}

static struct shdict_buf buf;

static void test_basic(void)
{
    case_begin("get/set/add/delete with each value type");
    struct shdict_region *r = one("d", 64 * 1024);
    struct shdict *d = shdict_region_find(r, "d", 1);
    CHECK(d != NULL, "");
    CHECK(shdict_region_find(r, "e", 1) == NULL, "");
    struct shdict_value v;
    CHECK(shdict_get(d, "k", 1, &v, &buf) == SHDICT_NOT_FOUND, "");
    struct shdict_value s = str("hello");
    CHECK(shdict_set(d, "k", 1, &s, 0, false) == SHDICT_OK, "");
    CHECK(shdict_get(d, "k", 1, &v, &buf) == SHDICT_OK && v.type == SHDICT_STRING && v.len == 5 &&
              !memcmp(v.str, "hello", 5),
          "");
    struct shdict_value n = num(2.5);
    CHECK(shdict_set(d, "n", 1, &n, 0, false) == SHDICT_OK, "");
    CHECK(shdict_get(d, "n", 1, &v, &buf) == SHDICT_OK && v.type == SHDICT_NUMBER &&
              v.number == 2.5,
          "");
    struct shdict_value b = {.type = SHDICT_BOOLEAN, .boolean = false};
    CHECK(shdict_set(d, "b", 1, &b, 0, false) == SHDICT_OK, "");
    CHECK(shdict_get(d, "b", 1, &v, &buf) == SHDICT_OK && v.type == SHDICT_BOOLEAN && !v.boolean,
          "");
    CHECK(shdict_set(d, "k", 1, &n, 0, true) == SHDICT_EXISTS, "");
    CHECK(shdict_get(d, "k", 1, &v, &buf) == SHDICT_OK && v.type == SHDICT_STRING, "add kept it");
    CHECK(shdict_set(d, "new", 3, &n, 0, true) == SHDICT_OK, "");
    /* A longer string than the block holds moves the entry. */
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    struct shdict_value bs = str(big);
    CHECK(shdict_set(d, "k", 1, &bs, 0, false) == SHDICT_OK, "");
    CHECK(shdict_get(d, "k", 1, &v, &buf) == SHDICT_OK && v.len == sizeof big - 1, "");
    CHECK(shdict_count(d) == 4, "count %zu", shdict_count(d));
    shdict_delete(d, "k", 1);
    shdict_delete(d, "absent", 6);
    CHECK(shdict_get(d, "k", 1, &v, &buf) == SHDICT_NOT_FOUND, "");
    struct shdict_value nil = {.type = SHDICT_NIL};
    CHECK(shdict_set(d, "n", 1, &nil, 0, false) == SHDICT_OK, "");
    CHECK(shdict_get(d, "n", 1, &v, &buf) == SHDICT_NOT_FOUND, "set nil deletes");
    CHECK_SANE(d);
    shdict_flush_all(d);
    CHECK(shdict_count(d) == 0, "");
    CHECK(shdict_get(d, "b", 1, &v, &buf) == SHDICT_NOT_FOUND, "");
    CHECK_SANE(d);
    shdict_region_close(r);
    case_end();
}

static void test_incr(void)
{
    case_begin("incr: not found, init, not a number");
    struct shdict_region *r = one("d", 64 * 1024);
    struct shdict *d = shdict_region_find(r, "d", 1);
    double out;
    CHECK(shdict_incr(d, "c", 1, 1, NULL, 0, &out) == SHDICT_NOT_FOUND, "");
    double init = 10;
    CHECK(shdict_incr(d, "c", 1, 2, &init, 0, &out) == SHDICT_OK && out == 12, "out %g", out);
    CHECK(shdict_incr(d, "c", 1, -5, &init, 0, &out) == SHDICT_OK && out == 7, "init ignored");
    struct shdict_value s = str("x");
    shdict_set(d, "s", 1, &s, 0, false);
    CHECK(shdict_incr(d, "s", 1, 1, &init, 0, &out) == SHDICT_NOT_A_NUMBER, "");
    CHECK_SANE(d);
    shdict_region_close(r);
    case_end();
}

static void pause_ms(long ms)
{
    nanosleep(&(struct timespec){0, ms * 1000000}, NULL);
}

static void test_ttl(void)
{
    case_begin("ttl, expire and expiry");
    struct shdict_region *r = one("d", 64 * 1024);
    struct shdict *d = shdict_region_find(r, "d", 1);
    struct shdict_value s = str("v"), v;
    double left;
    CHECK(shdict_ttl(d, "k", 1, &left) == SHDICT_NOT_FOUND, "");
    CHECK(shdict_expire(d, "k", 1, 5) == SHDICT_NOT_FOUND, "");
    shdict_set(d, "k", 1, &s, 0, false);
    CHECK(shdict_ttl(d, "k", 1, &left) == SHDICT_OK && left == 0, "no expiry is 0");
    CHECK(shdict_expire(d, "k", 1, 100) == SHDICT_OK, "");
    CHECK(shdict_ttl(d, "k", 1, &left) == SHDICT_OK && left > 0 && left <= 100, "left %g", left);
    CHECK(shdict_expire(d, "k", 1, 0) == SHDICT_OK, "");
    CHECK(shdict_ttl(d, "k", 1, &left) == SHDICT_OK && left == 0, "");
    shdict_set(d, "short", 5, &s, 0.05, false);
    shdict_set(d, "long", 4, &s, 1000, false);
    CHECK(shdict_get(d, "short", 5, &v, &buf) == SHDICT_OK, "present before it expires");
    /* Poll (bounded) until it expires: the order of events is the point. */
    int polls = 0;
    while (shdict_get(d, "short", 5, &v, &buf) == SHDICT_OK && polls < 500)
        pause_ms(10), polls++;
    CHECK(polls < 500, "expired within the bound");
    CHECK(shdict_ttl(d, "short", 5, &left) == SHDICT_NOT_FOUND, "");
    CHECK(shdict_get(d, "long", 4, &v, &buf) == SHDICT_OK, "the longer ttl is still there");
    /* An expired key can be added again. */
    shdict_set(d, "again", 5, &s, 0.02, false);
    while (shdict_get(d, "again", 5, &v, &buf) == SHDICT_OK && polls < 1000)
        pause_ms(10), polls++;
    CHECK(shdict_set(d, "again", 5, &s, 0, true) == SHDICT_OK, "add after expiry");
    CHECK_SANE(d);
    shdict_region_close(r);
    case_end();
}

static void test_eviction(void)
{
    case_begin("LRU eviction says evicted; a recently read key survives");
    struct shdict_region *r = one("d", SHDICT_SIZE_MIN);
    struct shdict *d = shdict_region_find(r, "d", 1);
    char key[32], val[200];
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = 0;
    struct shdict_value s = str(val), v;
    enum shdict_status st = SHDICT_OK;
    int i;
    for (i = 0; i < 10000 && st == SHDICT_OK; i++) {
        snprintf(key, sizeof key, "k%d", i);
        st = shdict_set(d, key, strlen(key), &s, 0, false);
        /* k0 is read after every write: it stays the most recently used. */
        CHECK(shdict_get(d, "k0", 2, &v, &buf) == SHDICT_OK, "k0 at %d", i);
    }
    CHECK(st == SHDICT_EVICTED, "the dictionary filled up and evicted (status %d after %d)", st, i);
    CHECK(shdict_get(d, "k1", 2, &v, &buf) == SHDICT_NOT_FOUND, "the least recently used went");
    CHECK(shdict_get(d, "k0", 2, &v, &buf) == SHDICT_OK, "the recently read stayed");
    CHECK(shdict_get(d, key, strlen(key), &v, &buf) == SHDICT_OK, "the new one is in");
    CHECK_SANE(d);
    case_end();

    case_begin("no memory: a value that cannot fit even after evicting everything");
    size_t big_len = SHDICT_SIZE_MIN;
    char *big = malloc(big_len);
    memset(big, 'b', big_len);
    struct shdict_value b = {.type = SHDICT_STRING, .str = big, .len = big_len};
    size_t before = shdict_count(d);
    CHECK(shdict_set(d, "big", 3, &b, 0, false) == SHDICT_NO_MEMORY, "");
    CHECK(shdict_count(d) == before, "nothing evicted for a hopeless value");
    CHECK(shdict_set(d, "k0", 2, &b, 0, false) == SHDICT_NO_MEMORY, "");
    CHECK(shdict_get(d, "k0", 2, &v, &buf) == SHDICT_OK, "the old value stays");
    CHECK_SANE(d);
    free(big);
    shdict_region_close(r);
    case_end();

    case_begin("a 1 MiB value in a 3m dictionary, after eviction of everything else");
    r = one("m", 3 * 1024 * 1024);
    d = shdict_region_find(r, "m", 1);
    big = malloc(SHDICT_VALUE_MAX);
    memset(big, 'm', SHDICT_VALUE_MAX);
    b.str = big, b.len = SHDICT_VALUE_MAX;
    CHECK(shdict_set(d, "a", 1, &b, 0, false) == SHDICT_OK, "");
    CHECK(shdict_set(d, "b", 1, &b, 0, false) == SHDICT_EVICTED, "one 2 MiB block: a goes");
    CHECK(shdict_get(d, "b", 1, &v, &buf) == SHDICT_OK && v.len == SHDICT_VALUE_MAX &&
              v.str[SHDICT_VALUE_MAX - 1] == 'm',
          "");
    CHECK_SANE(d);
    free(big);
    shdict_region_close(r);
    case_end();
}

static void test_region(void)
{
    case_begin("a second mapping of the descriptor sees the same data; same-set checks");
    struct shdict_spec sp[2] = {{"a", 64 * 1024}, {"b", 128 * 1024}};
    char err[256];
    struct shdict_region *r = shdict_region_create(sp, 2, err, sizeof err);
    CHECK(r != NULL, "%s", err);
    int fd2 = dup(shdict_region_fd(r));
    struct shdict_region *r2 = shdict_region_attach(fd2, err, sizeof err);
    CHECK(r2 != NULL, "%s", err);
    struct shdict_value s = str("shared"), v;
    shdict_set(shdict_region_find(r, "b", 1), "k", 1, &s, 0, false);
    CHECK(shdict_get(shdict_region_find(r2, "b", 1), "k", 1, &v, &buf) == SHDICT_OK && v.len == 6,
          "");
    CHECK(shdict_region_same(r2, sp, 2, why, sizeof why), "%s", why);
    struct shdict_spec other[2] = {{"a", 64 * 1024}, {"b", 256 * 1024}};
    CHECK(!shdict_region_same(r2, other, 2, why, sizeof why) && !strcmp(why, "'b' 128k -> 256k"),
          "%s", why);
    CHECK(!shdict_region_same(r2, sp, 1, why, sizeof why) && !strcmp(why, "removed 'b'"), "%s",
          why);
    struct shdict_spec three[3] = {{"a", 64 * 1024}, {"b", 128 * 1024}, {"c", 64 * 1024}};
    CHECK(!shdict_region_same(r2, three, 3, why, sizeof why) && !strcmp(why, "added 'c'"), "%s",
          why);
    CHECK(shdict_region_same(NULL, sp, 0, why, sizeof why), "");
    CHECK(shdict_region_attach(0, err, sizeof err) == NULL, "stdin is no region");
    CHECK(shdict_name_valid("_a1", 3) && !shdict_name_valid("1a", 2) &&
              !shdict_name_valid("a-b", 3) && !shdict_name_valid("", 0),
          "");
    shdict_region_close(r2);
    shdict_region_close(r);
    case_end();
}

static void test_copy(void)
{
    case_begin("copy_into: live entries with their ttl, in LRU order; expired ones stay behind");
    struct shdict_region *a = one("d", 64 * 1024), *b = one("d", SHDICT_SIZE_MIN);
    struct shdict *src = shdict_region_find(a, "d", 1), *dst = shdict_region_find(b, "d", 1);
    struct shdict_value s = str("x"), n = num(4), v;
    shdict_set(src, "old", 3, &s, 0, false);
    shdict_set(src, "ttl", 3, &n, 1000, false);
    shdict_set(src, "gone", 4, &s, 1e-9, false);
    shdict_set(src, "new", 3, &s, 0, false);
    CHECK(shdict_copy_into(dst, src) == 0, "");
    double left;
    CHECK(shdict_count(dst) == 3, "count %zu", shdict_count(dst));
    CHECK(shdict_ttl(dst, "ttl", 3, &left) == SHDICT_OK && left > 900, "left %g", left);
    CHECK(shdict_get(dst, "ttl", 3, &v, &buf) == SHDICT_OK && v.number == 4, "");
    CHECK(shdict_get(dst, "gone", 4, &v, &buf) == SHDICT_NOT_FOUND, "");
    /* Fill dst: "old" (least recently used in src, and not read since) goes first. */
    char val[200];
    memset(val, 'v', sizeof val - 1);
    val[sizeof val - 1] = 0;
    struct shdict_value big = str(val);
    char key[16];
    enum shdict_status st = SHDICT_OK;
    for (int i = 0; i < 1000 && st == SHDICT_OK; i++) {
        snprintf(key, sizeof key, "f%d", i);
        st = shdict_set(dst, key, strlen(key), &big, 0, false);
    }
    CHECK(st == SHDICT_EVICTED, "");
    CHECK(shdict_get(dst, "old", 3, &v, &buf) == SHDICT_NOT_FOUND, "the oldest went first");
    CHECK_SANE(dst);
    shdict_region_close(a);
    shdict_region_close(b);
    case_end();
}

/* A child that takes the lock and dies holding it (_exit, or SIGKILL while
 * it sleeps): the parent's next operation recovers the lock. */
static void test_robust(bool mutating, bool sigkill)
{
    case_begin("a process that dies holding the lock (%s, %s) does not wedge the others",
               mutating ? "mid-write" : "reading", sigkill ? "SIGKILL" : "_exit");
    struct shdict_region *r = one("d", 64 * 1024);
    struct shdict *d = shdict_region_find(r, "d", 1);
    struct shdict_value s = str("kept"), v;
    shdict_set(d, "k", 1, &s, 0, false);
    int ready[2];
    CHECK(pipe(ready) == 0, "");
    pid_t pid = fork();
    if (pid == 0) {
        shdict_test_hold_lock(d, mutating);
        if (write(ready[1], "x", 1) != 1) _exit(2);
        if (sigkill) pause();
        _exit(0);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "the child holds the lock");
    if (sigkill) kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    close(ready[0]);
    close(ready[1]);
    unsigned before = shdict_recoveries(d);
    CHECK(before == 1, "recovered once, got %u", before);
    enum shdict_status st = shdict_get(d, "k", 1, &v, &buf);
    if (mutating)
        CHECK(st == SHDICT_NOT_FOUND, "a half-made write empties the dictionary");
    else
        CHECK(st == SHDICT_OK && v.len == 4, "a reader's death loses nothing");
    CHECK(shdict_set(d, "after", 5, &s, 0, false) == SHDICT_OK, "usable again");
    CHECK_SANE(d);
    shdict_region_close(r);
    case_end();
}

int main(void)
{
    test_basic();
    test_incr();
    test_ttl();
    test_eviction();
    test_region();
    test_copy();
    test_robust(false, false);
    test_robust(true, false);
    test_robust(true, true);
    free(buf.data);
    return check_report();
}
