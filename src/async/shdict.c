/* shdict.c — the shared dictionaries of shdict.h. Layout of the memfd:
 *
 *   [region header: names, offsets, sizes]   one page
 *   [dictionary 0][dictionary 1]...          each page-aligned, its own size
 *
 * and of one dictionary:
 *
 *   [struct dict: lock, counters, LRU ends, free lists][buckets][arena]
 *
 * The arena is a buddy allocator (blocks of 2^6 .. 2^21 bytes) addressed by
 * 32-bit offsets, so the same bytes mean the same thing in every process
 * whatever address it mapped them at. An entry is one block: its header,
 * the key, the value. Every mutation sets `dirty` first and clears it last:
 * a process that dies holding the lock leaves it set, and the next locker
 * (EOWNERDEAD) resets that dictionary to empty rather than trust a
 * half-made change. Must not know Lua. */
#include "shdict.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REGION_MAGIC 0x4c534844u /* "LSHD" */
#define DICT_MAGIC 0x44494354u   /* "DICT" */
#define SHDICT_VERSION 1u
#define PAGE 4096u
#define MIN_ORDER 6  /* 64-byte blocks: an entry header and a short key and value */
#define MAX_ORDER 21 /* 2 MiB: a 1 MiB value with the longest key */
#define NIL UINT32_MAX
#define BLOCK_FREE 0xF1
#define BLOCK_USED 0xA5
/* Expired entries reclaimed from the LRU tail by each write. */
#define RECLAIM_PER_WRITE 2

struct region_header {
    uint32_t magic, version, n, pad;
    struct {
        char name[SHDICT_NAME_MAX];
        uint64_t offset, size;
    } dict[SHDICT_MAX];
};

struct dict {
    uint32_t magic;
    uint32_t dirty; /* a mutation is under way */
    pthread_mutex_t lock;
    uint64_t size;
    uint32_t nbuckets; /* a power of two */
    uint32_t buckets_off, arena_off, arena_size;
    uint32_t max_order;
    uint32_t lru_head, lru_tail; /* most and least recently used */
    uint32_t free_head[MAX_ORDER + 1];
    uint32_t n_entries;
    uint32_t recoveries;
};

struct free_block {
    uint8_t state, order;
    uint16_t pad;
    uint32_t next, prev;
};

struct entry {
    uint8_t state, order, type, pad;
    uint32_t hash;
    uint32_t key_len, val_len;
    uint32_t hnext;
    uint32_t lru_prev, lru_next;
    uint32_t pad2;
    int64_t expires; /* CLOCK_MONOTONIC ns; 0 = never */
};

struct shdict_region {
    int fd;
    void *base;
    size_t len;
    struct region_header *hdr;
};

/* A dictionary handle is its header in the mapping. */
static struct dict *D(struct shdict *d)
{
    return (struct dict *)d;
}

static struct shdict_region *process_region;
struct shdict_region *shdict_process_region(void)
{
    return process_region;
}
void shdict_process_set(struct shdict_region *r)
{
    process_region = r;
}

bool shdict_name_valid(const char *s, size_t len)
{
    if (len == 0 || len >= SHDICT_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

/* ------------------------------------------------------------ helpers */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t expiry_of(double ttl)
{
    return ttl > 0 ? now_ns() + (int64_t)(ttl * 1e9) + 1 : 0;
}

static uint32_t hash_key(const char *k, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)k[i]) * 16777619u;
    return h;
}

static char *arena(struct dict *h)
{
    return (char *)h + h->arena_off;
}
static uint32_t *buckets(struct dict *h)
{
    return (uint32_t *)((char *)h + h->buckets_off);
}
static struct free_block *fblk(struct dict *h, uint32_t off)
{
    return (struct free_block *)(arena(h) + off);
}
static struct entry *ent(struct dict *h, uint32_t off)
{
    return (struct entry *)(arena(h) + off);
}
static char *ent_key(struct entry *e)
{
    return (char *)(e + 1);
}
static char *ent_val(struct entry *e)
{
    return (char *)(e + 1) + e->key_len;
}
static bool expired(const struct entry *e, int64_t now)
{
    return e->expires && e->expires <= now;
}

static unsigned order_for(size_t bytes)
{
    unsigned k = MIN_ORDER;
    while (k <= MAX_ORDER && ((size_t)1 << k) < bytes)
        k++;
    return k;
}

/* ------------------------------------------------ the buddy allocator */

static void free_push(struct dict *h, uint32_t off, unsigned order)
{
    struct free_block *b = fblk(h, off);
    b->state = BLOCK_FREE;
    b->order = (uint8_t)order;
    b->prev = NIL;
    b->next = h->free_head[order];
    if (b->next != NIL) fblk(h, b->next)->prev = off;
    h->free_head[order] = off;
}

static void free_unlink(struct dict *h, uint32_t off)
{
    struct free_block *b = fblk(h, off);
    if (b->prev != NIL)
        fblk(h, b->prev)->next = b->next;
    else
        h->free_head[b->order] = b->next;
    if (b->next != NIL) fblk(h, b->next)->prev = b->prev;
}

static uint32_t block_alloc(struct dict *h, unsigned order)
{
    unsigned k = order;
    while (k <= h->max_order && h->free_head[k] == NIL)
        k++;
    if (k > h->max_order) return NIL;
    uint32_t off = h->free_head[k];
    free_unlink(h, off);
    while (k > order) {
        k--;
        free_push(h, off + (1u << k), k);
    }
    struct entry *e = ent(h, off);
    e->state = BLOCK_USED;
    e->order = (uint8_t)order;
    return off;
}

static void block_free(struct dict *h, uint32_t off)
{
    unsigned order = ent(h, off)->order;
    while (order < h->max_order) {
        uint32_t buddy = off ^ (1u << order);
        if ((uint64_t)buddy + (1u << order) > h->arena_size) break;
        struct free_block *b = fblk(h, buddy);
        if (b->state != BLOCK_FREE || b->order != order) break;
        free_unlink(h, buddy);
        off = off < buddy ? off : buddy;
        order++;
    }
    free_push(h, off, order);
}

/* Empties the dictionary: every block free, the largest aligned blocks that
 * tile the arena. */
static void dict_reset(struct dict *h)
{
    for (unsigned k = 0; k <= MAX_ORDER; k++)
        h->free_head[k] = NIL;
    uint32_t *b = buckets(h);
    for (uint32_t i = 0; i < h->nbuckets; i++)
        b[i] = NIL;
    h->lru_head = h->lru_tail = NIL;
    h->n_entries = 0;
    uint32_t off = 0;
    while (h->arena_size - off >= (1u << MIN_ORDER)) {
        unsigned k = h->max_order;
        while (k > MIN_ORDER && ((off & ((1u << k) - 1)) || off + (1u << k) > h->arena_size))
            k--;
        free_push(h, off, k);
        off += 1u << k;
    }
}

static bool dict_init(struct dict *h, size_t size)
{
    memset(h, 0, sizeof *h);
    h->size = size;
    uint32_t nb = 64;
    while ((uint64_t)nb * 512 < size && nb < (1u << 22))
        nb <<= 1;
    h->nbuckets = nb;
    h->buckets_off = (uint32_t)((sizeof *h + 63) & ~(size_t)63);
    h->arena_off = (uint32_t)((h->buckets_off + nb * sizeof(uint32_t) + 63) & ~(size_t)63);
    if (h->arena_off + (1u << (MIN_ORDER + 4)) > size) return false;
    h->arena_size = (uint32_t)((size - h->arena_off) & ~(size_t)((1u << MIN_ORDER) - 1));
    h->max_order = MIN_ORDER;
    while (h->max_order < MAX_ORDER && (2u << h->max_order) <= h->arena_size)
        h->max_order++;
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a)) return false;
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&h->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc) return false;
    dict_reset(h);
    h->magic = DICT_MAGIC;
    return true;
}

/* ----------------------------------------------------------- the lock */

static void dict_lock(struct dict *h)
{
    int rc = pthread_mutex_lock(&h->lock);
    if (rc == EOWNERDEAD) {
        /* The holder died. A read leaves nothing half-done; a write might
         * have: start that dictionary over rather than follow a broken link. */
        if (h->dirty) dict_reset(h);
        h->dirty = 0;
        h->recoveries++;
        pthread_mutex_consistent(&h->lock);
    } else if (rc) {
        /* ENOTRECOVERABLE cannot happen: every EOWNERDEAD is made consistent. */
        fprintf(stderr, "luasmtpd: shared dictionary lock: %s\n", strerror(rc));
        abort();
    }
}

static void dict_unlock(struct dict *h)
{
    pthread_mutex_unlock(&h->lock);
}

/* Mutations are bracketed by these (under the lock). */
static void dirty_begin(struct dict *h)
{
    h->dirty = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}
static void dirty_end(struct dict *h)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    h->dirty = 0;
}

/* ---------------------------------------------------- the LRU list */

static void lru_unlink(struct dict *h, uint32_t off)
{
    struct entry *e = ent(h, off);
    if (e->lru_prev != NIL)
        ent(h, e->lru_prev)->lru_next = e->lru_next;
    else
        h->lru_head = e->lru_next;
    if (e->lru_next != NIL)
        ent(h, e->lru_next)->lru_prev = e->lru_prev;
    else
        h->lru_tail = e->lru_prev;
}

static void lru_push_head(struct dict *h, uint32_t off)
{
    struct entry *e = ent(h, off);
    e->lru_prev = NIL;
    e->lru_next = h->lru_head;
    if (h->lru_head != NIL)
        ent(h, h->lru_head)->lru_prev = off;
    else
        h->lru_tail = off;
    h->lru_head = off;
}

static void lru_touch(struct dict *h, uint32_t off)
{
    if (h->lru_head == off) return;
    lru_unlink(h, off);
    lru_push_head(h, off);
}

/* ------------------------------------------------------ the hash table */

static uint32_t find(struct dict *h, const char *key, size_t klen, uint32_t hash)
{
    for (uint32_t off = buckets(h)[hash & (h->nbuckets - 1)]; off != NIL;
         off = ent(h, off)->hnext) {
        struct entry *e = ent(h, off);
        if (e->hash == hash && e->key_len == klen && !memcmp(ent_key(e), key, klen)) return off;
    }
    return NIL;
}

/* Takes the entry out of the table and the LRU list and frees its block. */
static void remove_entry(struct dict *h, uint32_t off)
{
    struct entry *e = ent(h, off);
    uint32_t *link = &buckets(h)[e->hash & (h->nbuckets - 1)];
    while (*link != off)
        link = &ent(h, *link)->hnext;
    *link = e->hnext;
    lru_unlink(h, off);
    h->n_entries--;
    block_free(h, off);
}

/* A live entry with the key, or NIL (an expired one is removed on the way). */
static uint32_t find_live(struct dict *h, const char *key, size_t klen, int64_t now)
{
    uint32_t off = find(h, key, klen, hash_key(key, klen));
    if (off != NIL && expired(ent(h, off), now)) {
        remove_entry(h, off);
        return NIL;
    }
    return off;
}

static void reclaim_expired(struct dict *h, int64_t now)
{
    for (int i = 0; i < RECLAIM_PER_WRITE && h->lru_tail != NIL; i++) {
        if (!expired(ent(h, h->lru_tail), now)) break;
        remove_entry(h, h->lru_tail);
    }
}

static size_t value_len(const struct shdict_value *v)
{
    switch (v->type) {
    case SHDICT_STRING:
        return v->len;
    case SHDICT_NUMBER:
        return sizeof(double);
    case SHDICT_BOOLEAN:
        return 1;
    default:
        return 0;
    }
}

static void write_value(struct entry *e, const struct shdict_value *v, int64_t expires)
{
    e->type = (uint8_t)v->type;
    e->val_len = (uint32_t)value_len(v);
    e->expires = expires;
    char *p = ent_val(e);
    if (v->type == SHDICT_STRING)
        memcpy(p, v->str, v->len);
    else if (v->type == SHDICT_NUMBER)
        memcpy(p, &v->number, sizeof v->number);
    else if (v->type == SHDICT_BOOLEAN)
        *p = v->boolean ? 1 : 0;
}

/* Stores a new entry (the key is not in the table), evicting from the LRU
 * tail until it fits. Under the lock, dirty. */
static enum shdict_status insert(struct dict *h, const char *key, size_t klen,
                                 const struct shdict_value *v, int64_t expires, int64_t now)
{
    size_t need = sizeof(struct entry) + klen + value_len(v);
    unsigned order = order_for(need);
    if (order > h->max_order) return SHDICT_NO_MEMORY;
    bool evicted = false;
    uint32_t off;
    while ((off = block_alloc(h, order)) == NIL) {
        if (h->lru_tail == NIL) return SHDICT_NO_MEMORY;
        if (!expired(ent(h, h->lru_tail), now)) evicted = true;
        remove_entry(h, h->lru_tail);
    }
    struct entry *e = ent(h, off);
    e->hash = hash_key(key, klen);
    e->key_len = (uint32_t)klen;
    memcpy(ent_key(e), key, klen);
    write_value(e, v, expires);
    uint32_t *b = &buckets(h)[e->hash & (h->nbuckets - 1)];
    e->hnext = *b;
    *b = off;
    lru_push_head(h, off);
    h->n_entries++;
    return evicted ? SHDICT_EVICTED : SHDICT_OK;
}

/* --------------------------------------------------------- operations */

enum shdict_status shdict_get(struct shdict *d, const char *key, size_t klen,
                              struct shdict_value *v, struct shdict_buf *buf)
{
    struct dict *h = D(d);
    enum shdict_status st = SHDICT_NOT_FOUND;
    dict_lock(h);
    dirty_begin(h);
    uint32_t off = find_live(h, key, klen, now_ns());
    if (off != NIL) {
        struct entry *e = ent(h, off);
        v->type = (enum shdict_type)e->type;
        st = SHDICT_OK;
        if (e->type == SHDICT_STRING) {
            if (buf->cap < e->val_len) {
                size_t cap = e->val_len < 256 ? 256 : e->val_len;
                char *p = realloc(buf->data, cap);
                if (p) buf->data = p, buf->cap = cap;
            }
            if (buf->cap < e->val_len)
                st = SHDICT_NO_MEMORY;
            else {
                memcpy(buf->data, ent_val(e), e->val_len);
                v->str = buf->data;
                v->len = e->val_len;
            }
        } else if (e->type == SHDICT_NUMBER)
            memcpy(&v->number, ent_val(e), sizeof v->number);
        else
            v->boolean = *ent_val(e) != 0;
        lru_touch(h, off);
    }
    dirty_end(h);
    dict_unlock(h);
    return st;
}

enum shdict_status shdict_set(struct shdict *d, const char *key, size_t klen,
                              const struct shdict_value *v, double ttl, bool add)
{
    struct dict *h = D(d);
    int64_t now = now_ns();
    enum shdict_status st;
    dict_lock(h);
    dirty_begin(h);
    reclaim_expired(h, now);
    uint32_t off = find_live(h, key, klen, now);
    if (off != NIL && add)
        st = SHDICT_EXISTS;
    else if (v->type == SHDICT_NIL) {
        if (off != NIL) remove_entry(h, off);
        st = SHDICT_OK;
    } else if (order_for(sizeof(struct entry) + klen + value_len(v)) > h->max_order) {
        st = SHDICT_NO_MEMORY; /* the old value stays */
    } else if (off != NIL &&
               ent(h, off)->order == order_for(sizeof(struct entry) + klen + value_len(v))) {
        write_value(ent(h, off), v, expiry_of(ttl)); /* same block: in place */
        lru_touch(h, off);
        st = SHDICT_OK;
    } else {
        if (off != NIL) remove_entry(h, off);
        st = insert(h, key, klen, v, expiry_of(ttl), now);
    }
    dirty_end(h);
    dict_unlock(h);
    return st;
}

enum shdict_status shdict_incr(struct shdict *d, const char *key, size_t klen, double n,
                               const double *init, double init_ttl, double *out)
{
    struct dict *h = D(d);
    int64_t now = now_ns();
    enum shdict_status st;
    dict_lock(h);
    dirty_begin(h);
    reclaim_expired(h, now);
    uint32_t off = find_live(h, key, klen, now);
    if (off == NIL) {
        if (!init)
            st = SHDICT_NOT_FOUND;
        else {
            struct shdict_value v = {.type = SHDICT_NUMBER, .number = *init + n};
            st = insert(h, key, klen, &v, expiry_of(init_ttl), now);
            *out = v.number;
        }
    } else {
        struct entry *e = ent(h, off);
        if (e->type != SHDICT_NUMBER)
            st = SHDICT_NOT_A_NUMBER;
        else {
            double x;
            memcpy(&x, ent_val(e), sizeof x);
            x += n;
            memcpy(ent_val(e), &x, sizeof x);
            lru_touch(h, off);
            *out = x;
            st = SHDICT_OK;
        }
    }
    dirty_end(h);
    dict_unlock(h);
    return st;
}

void shdict_delete(struct shdict *d, const char *key, size_t klen)
{
    struct dict *h = D(d);
    dict_lock(h);
    dirty_begin(h);
    uint32_t off = find(h, key, klen, hash_key(key, klen));
    if (off != NIL) remove_entry(h, off);
    dirty_end(h);
    dict_unlock(h);
}

enum shdict_status shdict_ttl(struct shdict *d, const char *key, size_t klen, double *left)
{
    struct dict *h = D(d);
    int64_t now = now_ns();
    dict_lock(h);
    dirty_begin(h);
    uint32_t off = find_live(h, key, klen, now);
    if (off != NIL) {
        struct entry *e = ent(h, off);
        *left = e->expires ? (double)(e->expires - now) / 1e9 : 0;
    }
    dirty_end(h);
    dict_unlock(h);
    return off != NIL ? SHDICT_OK : SHDICT_NOT_FOUND;
}

enum shdict_status shdict_expire(struct shdict *d, const char *key, size_t klen, double ttl)
{
    struct dict *h = D(d);
    dict_lock(h);
    dirty_begin(h);
    uint32_t off = find_live(h, key, klen, now_ns());
    if (off != NIL) ent(h, off)->expires = expiry_of(ttl);
    dirty_end(h);
    dict_unlock(h);
    return off != NIL ? SHDICT_OK : SHDICT_NOT_FOUND;
}

void shdict_flush_all(struct shdict *d)
{
    struct dict *h = D(d);
    dict_lock(h);
    dirty_begin(h);
    dict_reset(h);
    dirty_end(h);
    dict_unlock(h);
}

size_t shdict_copy_into(struct shdict *dst, struct shdict *src)
{
    struct dict *h = D(src);
    size_t lost = 0;
    int64_t now = now_ns();
    dict_lock(h);
    for (uint32_t off = h->lru_tail; off != NIL; off = ent(h, off)->lru_prev) {
        struct entry *e = ent(h, off);
        if (expired(e, now)) continue;
        struct shdict_value v = {.type = (enum shdict_type)e->type};
        if (e->type == SHDICT_STRING)
            v.str = ent_val(e), v.len = e->val_len;
        else if (e->type == SHDICT_NUMBER)
            memcpy(&v.number, ent_val(e), sizeof v.number);
        else
            v.boolean = *ent_val(e) != 0;
        double ttl = e->expires ? (double)(e->expires - now) / 1e9 : 0;
        if (shdict_set(dst, ent_key(e), e->key_len, &v, ttl, false) == SHDICT_NO_MEMORY) lost++;
    }
    dict_unlock(h);
    return lost;
}

size_t shdict_count(struct shdict *d)
{
    struct dict *h = D(d);
    dict_lock(h);
    size_t n = h->n_entries;
    dict_unlock(h);
    return n;
}

unsigned shdict_recoveries(struct shdict *d)
{
    struct dict *h = D(d);
    dict_lock(h);
    unsigned n = h->recoveries;
    dict_unlock(h);
    return n;
}

void shdict_test_hold_lock(struct shdict *d, bool mutating)
{
    struct dict *h = D(d);
    dict_lock(h);
    if (mutating) {
        dirty_begin(h);
        /* Half a change: the LRU head points nowhere sensible. */
        h->lru_head = h->arena_size;
    }
}

#define BROKEN(...)                                                                                \
    do {                                                                                           \
        snprintf(why, whylen, __VA_ARGS__);                                                        \
        ok = false;                                                                                \
        goto done;                                                                                 \
    } while (0)

bool shdict_check(struct shdict *d, char *why, size_t whylen)
{
    struct dict *h = D(d);
    bool ok = true;
    dict_lock(h);
    uint32_t n_free[MAX_ORDER + 1] = {0}, used = 0;
    uint32_t off = 0;
    bool prev_free = false;
    unsigned prev_order = 0;
    uint32_t prev_off = 0;
    while (h->arena_size - off >= (1u << MIN_ORDER)) {
        struct entry *e = ent(h, off);
        unsigned k = e->order;
        if (k < MIN_ORDER || k > h->max_order || (off & ((1u << k) - 1)) ||
            (uint64_t)off + (1u << k) > h->arena_size)
            BROKEN("block at %u has order %u", off, k);
        if (e->state == BLOCK_FREE) {
            n_free[k]++;
            /* Two free buddies of one order should have merged. */
            if (prev_free && prev_order == k && (prev_off ^ (1u << k)) == off && k < h->max_order)
                BROKEN("free buddies at %u and %u (order %u) not merged", prev_off, off, k);
            prev_free = true;
        } else if (e->state == BLOCK_USED) {
            used++;
            if (sizeof *e + (uint64_t)e->key_len + e->val_len > (1u << k))
                BROKEN("entry at %u overflows its block", off);
            if (e->type < SHDICT_STRING || e->type > SHDICT_BOOLEAN)
                BROKEN("entry at %u has type %u", off, e->type);
            if (hash_key(ent_key(e), e->key_len) != e->hash) BROKEN("entry at %u: bad hash", off);
            prev_free = false;
        } else
            BROKEN("block at %u has state %u", off, e->state);
        prev_order = k, prev_off = off;
        off += 1u << k;
    }
    if (used != h->n_entries) BROKEN("%u used blocks, %u entries", used, h->n_entries);
    for (unsigned k = 0; k <= MAX_ORDER; k++) {
        uint32_t c = 0, prev = NIL;
        for (uint32_t f = h->free_head[k]; f != NIL; f = fblk(h, f)->next) {
            if (f >= h->arena_size || fblk(h, f)->state != BLOCK_FREE || fblk(h, f)->order != k ||
                fblk(h, f)->prev != prev || ++c > n_free[k])
                BROKEN("free list %u broken at %u", k, f);
            prev = f;
        }
        if (c != n_free[k]) BROKEN("free list %u has %u of %u free blocks", k, c, n_free[k]);
    }
    uint32_t c = 0, prev = NIL;
    for (uint32_t e = h->lru_head; e != NIL; e = ent(h, e)->lru_next) {
        if (e >= h->arena_size || ent(h, e)->state != BLOCK_USED || ent(h, e)->lru_prev != prev ||
            ++c > h->n_entries)
            BROKEN("LRU list broken at %u", e);
        prev = e;
    }
    if (c != h->n_entries || h->lru_tail != prev) BROKEN("LRU list has %u of %u", c, h->n_entries);
    c = 0;
    for (uint32_t b = 0; b < h->nbuckets; b++) {
        for (uint32_t e = buckets(h)[b]; e != NIL; e = ent(h, e)->hnext) {
            if (e >= h->arena_size || ent(h, e)->state != BLOCK_USED ||
                (ent(h, e)->hash & (h->nbuckets - 1)) != b || ++c > h->n_entries)
                BROKEN("hash chain %u broken at %u", b, e);
        }
    }
    if (c != h->n_entries) BROKEN("hash table has %u of %u", c, h->n_entries);
done:
    dict_unlock(h);
    return ok;
}

/* ------------------------------------------------------------ regions */

static size_t page_round(size_t n)
{
    return (n + PAGE - 1) & ~(size_t)(PAGE - 1);
}

struct shdict_region *shdict_region_create(const struct shdict_spec *specs, size_t n, char *err,
                                           size_t errlen)
{
    if (n > SHDICT_MAX) {
        snprintf(err, errlen, "at most %d shared dictionaries", SHDICT_MAX);
        return NULL;
    }
    size_t total = page_round(sizeof(struct region_header));
    for (size_t i = 0; i < n; i++)
        total += page_round((size_t)specs[i].size);
    struct shdict_region *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* Close-on-exec: only workers inherit it (the app layer clears it). */
    r->fd = memfd_create("luasmtpd-shdict", MFD_CLOEXEC);
    if (r->fd < 0 || ftruncate(r->fd, (off_t)total)) goto failed;
    r->base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (r->base == MAP_FAILED) {
        r->base = NULL;
        goto failed;
    }
    r->len = total;
    r->hdr = r->base;
    r->hdr->n = (uint32_t)n;
    size_t off = page_round(sizeof(struct region_header));
    for (size_t i = 0; i < n; i++) {
        memcpy(r->hdr->dict[i].name, specs[i].name, SHDICT_NAME_MAX);
        r->hdr->dict[i].name[SHDICT_NAME_MAX - 1] = '\0';
        r->hdr->dict[i].offset = off;
        r->hdr->dict[i].size = (uint64_t)specs[i].size;
        if (!dict_init((struct dict *)((char *)r->base + off), (size_t)specs[i].size)) {
            snprintf(err, errlen, "shared dictionary '%s' cannot be set up in %ld bytes",
                     specs[i].name, specs[i].size);
            shdict_region_close(r);
            return NULL;
        }
        off += page_round((size_t)specs[i].size);
    }
    r->hdr->version = SHDICT_VERSION;
    r->hdr->magic = REGION_MAGIC;
    return r;
failed:
    snprintf(err, errlen, "cannot create the shared dictionaries (%zu bytes): %s", total,
             strerror(errno));
    shdict_region_close(r);
    return NULL;
}

struct shdict_region *shdict_region_attach(int fd, char *err, size_t errlen)
{
    struct stat st;
    struct shdict_region *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->fd = fd;
    /* Inherited without close-on-exec; nothing this worker starts needs it. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (fstat(fd, &st) || (size_t)st.st_size < sizeof(struct region_header)) {
        snprintf(err, errlen, "descriptor %d is not a shared dictionary region", fd);
        goto failed;
    }
    r->len = (size_t)st.st_size;
    r->base = mmap(NULL, r->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r->base == MAP_FAILED) {
        r->base = NULL;
        snprintf(err, errlen, "cannot map the shared dictionaries: %s", strerror(errno));
        goto failed;
    }
    r->hdr = r->base;
    if (r->hdr->magic != REGION_MAGIC || r->hdr->version != SHDICT_VERSION ||
        r->hdr->n > SHDICT_MAX) {
        snprintf(err, errlen, "descriptor %d is not a shared dictionary region", fd);
        goto failed;
    }
    for (uint32_t i = 0; i < r->hdr->n; i++) {
        uint64_t o = r->hdr->dict[i].offset, s = r->hdr->dict[i].size;
        if (o + s > r->len || ((struct dict *)((char *)r->base + o))->magic != DICT_MAGIC) {
            snprintf(err, errlen, "shared dictionary region: dictionary %u is damaged", i);
            goto failed;
        }
    }
    return r;
failed:
    r->fd = -1; /* the caller's descriptor */
    shdict_region_close(r);
    return NULL;
}

void shdict_region_close(struct shdict_region *r)
{
    if (!r) return;
    if (r->base) munmap(r->base, r->len);
    if (r->fd >= 0) close(r->fd);
    if (process_region == r) process_region = NULL;
    free(r);
}

int shdict_region_fd(const struct shdict_region *r)
{
    return r->fd;
}

struct shdict *shdict_region_find(const struct shdict_region *r, const char *name, size_t len)
{
    if (!r || len >= SHDICT_NAME_MAX) return NULL;
    for (uint32_t i = 0; i < r->hdr->n; i++)
        if (strlen(r->hdr->dict[i].name) == len && !memcmp(r->hdr->dict[i].name, name, len))
            return (struct shdict *)((char *)r->base + r->hdr->dict[i].offset);
    return NULL;
}

static void size_text(long n, char *out, size_t outlen)
{
    if (n % (1024 * 1024) == 0)
        snprintf(out, outlen, "%ldm", n / (1024 * 1024));
    else if (n % 1024 == 0)
        snprintf(out, outlen, "%ldk", n / 1024);
    else
        snprintf(out, outlen, "%ld", n);
}

bool shdict_region_same(const struct shdict_region *r, const struct shdict_spec *specs, size_t n,
                        char *why, size_t whylen)
{
    uint32_t have = r ? r->hdr->n : 0;
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (uint32_t j = 0; j < have && !found; j++) {
            if (strcmp(r->hdr->dict[j].name, specs[i].name)) continue;
            found = true;
            if ((long)r->hdr->dict[j].size != specs[i].size) {
                char a[32], b[32];
                size_text((long)r->hdr->dict[j].size, a, sizeof a);
                size_text(specs[i].size, b, sizeof b);
                snprintf(why, whylen, "'%s' %s -> %s", specs[i].name, a, b);
                return false;
            }
        }
        if (!found) {
            snprintf(why, whylen, "added '%s'", specs[i].name);
            return false;
        }
    }
    for (uint32_t j = 0; j < have; j++) {
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = !strcmp(r->hdr->dict[j].name, specs[i].name);
        if (!found) {
            snprintf(why, whylen, "removed '%s'", r->hdr->dict[j].name);
            return false;
        }
    }
    return true;
}
