/* shdict.h — shared dictionaries (async-api.md 7): named key/value stores
 * in ONE memfd mapped MAP_SHARED by the master and every worker, created
 * once at start-up before the workers are started and inherited by them, so
 * they survive reloads and worker restarts. Each dictionary has a robust
 * process-shared mutex (a process killed while holding it does not wedge
 * the others), a chained hash table, an LRU list and a buddy allocator inside
 * its fixed size: no malloc for entries. Values are strings (up to
 * SHDICT_VALUE_MAX), numbers (double) and booleans, with optional TTLs on
 * CLOCK_MONOTONIC (system-wide on Linux, so shared across processes).
 *
 * C only: no lua_State here. Every operation takes the lock, works and
 * unlocks before it returns; none blocks on anything but the lock. */
#ifndef LUASMTPD_SHDICT_H
#define LUASMTPD_SHDICT_H

#include <stdbool.h>
#include <stddef.h>

#define SHDICT_NAME_MAX 32           /* bytes of a name, with the NUL */
#define SHDICT_MAX 16                /* dictionaries in a region */
#define SHDICT_SIZE_MIN (32L * 1024) /* the header, buckets and a few entries */
#define SHDICT_SIZE_MAX (1024L * 1024 * 1024)
#define SHDICT_KEY_MAX 65535
#define SHDICT_VALUE_MAX (1024L * 1024)
#define SHDICT_TTL_MAX 1e9 /* seconds (31 years): no overflow in ns */

struct shdict_spec {
    char name[SHDICT_NAME_MAX]; /* [A-Za-z_][A-Za-z0-9_]* */
    long size;                  /* bytes, SHDICT_SIZE_MIN..SHDICT_SIZE_MAX */
};

enum shdict_type { SHDICT_NIL, SHDICT_STRING, SHDICT_NUMBER, SHDICT_BOOLEAN };

struct shdict_value {
    enum shdict_type type;
    double number;
    bool boolean;
    const char *str; /* SHDICT_STRING: len bytes (in a shdict_buf after a get) */
    size_t len;
};

/* Where a get copies a string value (the caller keeps it between calls and
 * frees data with free()). */
struct shdict_buf {
    char *data;
    size_t cap;
};

enum shdict_status {
    SHDICT_OK,
    SHDICT_EVICTED,   /* stored, after evicting live least recently used entries */
    SHDICT_NO_MEMORY, /* does not fit even after evicting */
    SHDICT_EXISTS,    /* add: the key is there */
    SHDICT_NOT_FOUND,
    SHDICT_NOT_A_NUMBER /* incr on a value that is not a number */
};

struct shdict;
struct shdict_region;

/* True when name (len bytes) is [A-Za-z_][A-Za-z0-9_]* and fits. */
bool shdict_name_valid(const char *name, size_t len);

/* A new region holding the n dictionaries (empty), in a close-on-exec memfd.
 * NULL with a message in err. The caller owns it. */
struct shdict_region *shdict_region_create(const struct shdict_spec *specs, size_t n, char *err,
                                           size_t errlen);
/* Maps a region another process created (an inherited descriptor). */
struct shdict_region *shdict_region_attach(int fd, char *err, size_t errlen);
/* Unmaps and closes it. */
void shdict_region_close(struct shdict_region *r);
int shdict_region_fd(const struct shdict_region *r);
/* True when r (NULL: no dictionaries) holds exactly these names and sizes;
 * otherwise false and `why` names the first difference ("'a' 1m -> 2m",
 * "added 'b'", "removed 'c'"). */
bool shdict_region_same(const struct shdict_region *r, const struct shdict_spec *specs, size_t n,
                        char *why, size_t whylen);
/* The dictionary of that name, or NULL. */
struct shdict *shdict_region_find(const struct shdict_region *r, const char *name, size_t len);

/* The process's region (NULL: none declared, or not yet created). Set once
 * at start-up by the app layer. */
struct shdict_region *shdict_process_region(void);
void shdict_process_set(struct shdict_region *r);

/* d:get(key): OK with *v filled (a string is copied into buf) or NOT_FOUND;
 * NO_MEMORY if buf cannot grow. Refreshes the entry's LRU position. */
enum shdict_status shdict_get(struct shdict *d, const char *key, size_t klen,
                              struct shdict_value *v, struct shdict_buf *buf);
/* d:set / d:add (add: EXISTS when a live entry has the key). ttl seconds,
 * 0 = none. A SHDICT_NIL value deletes. OK, EVICTED or NO_MEMORY. */
enum shdict_status shdict_set(struct shdict *d, const char *key, size_t klen,
                              const struct shdict_value *v, double ttl, bool add);
/* d:incr: *out = the new value. A missing key is NOT_FOUND unless init is
 * given: then it is created as *init + n with init_ttl. NOT_A_NUMBER for a
 * value of another type. */
enum shdict_status shdict_incr(struct shdict *d, const char *key, size_t klen, double n,
                               const double *init, double init_ttl, double *out);
void shdict_delete(struct shdict *d, const char *key, size_t klen);
/* Seconds left in *left (0: no expiry), or NOT_FOUND. */
enum shdict_status shdict_ttl(struct shdict *d, const char *key, size_t klen, double *left);
/* Sets a new ttl (0: none) on a live entry, or NOT_FOUND. */
enum shdict_status shdict_expire(struct shdict *d, const char *key, size_t klen, double ttl);
void shdict_flush_all(struct shdict *d);

/* Copies every live entry of src into dst (as set would, with what is
 * left of its ttl), least recently used first so dst keeps the order. src
 * must be a dictionary no other process uses (its lock is held throughout
 * while dst's is taken per entry). Returns the entries that did not fit. */
size_t shdict_copy_into(struct shdict *dst, struct shdict *src);

/* Entries stored (expired ones not yet reclaimed included). */
size_t shdict_count(struct shdict *d);
/* Times the lock was taken over from a process that died holding it. */
unsigned shdict_recoveries(struct shdict *d);
/* Walks the structures (blocks tile the arena, free lists, hash chains,
 * LRU list, counts); false with the first broken invariant in why. For the
 * unit tests and the fuzz target. */
bool shdict_check(struct shdict *d, char *why, size_t whylen);

/* Test-only: takes the lock and returns with it held; mutating marks the
 * dictionary as mid-update, as if the holder were killed inside a write. */
void shdict_test_hold_lock(struct shdict *d, bool mutating);

#endif
