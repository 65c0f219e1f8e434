/* fuzz_shdict.c — the shared dictionaries (src/async/shdict.c) and the
 * shared_dict option parser (src/smtp/options.c) under libFuzzer.
 *
 * First byte even: the rest is a sequence of operations on one small
 * dictionary (flushed per input): set, add, get, incr, delete, ttl, expire,
 * flush_all on a few keys of varied length, with values of each type up to
 * several KiB, so the dictionary fills, evicts and splits and merges its
 * blocks. After every operation the structures are walked (shdict_check),
 * and each answer is checked against what the operation promised: a stored
 * value reads back exactly, "exists" only for a live key, incr adds, a
 * deleted key is gone.
 *
 * First byte odd: the rest is a `-o shared_dict=` value; when it parses,
 * every name is valid, every size in bounds, the set sorted without
 * duplicates. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "options.h"
#include "shdict.h"

static void fail(const char *what)
{
    fprintf(stderr, "\nfuzz_shdict: %s\n", what);
    abort();
}

static struct shdict_region *region;
static struct shdict *dict;
static struct shdict_buf buf;
static char valbuf[8192];

struct reader {
    const uint8_t *p;
    size_t n;
};

static unsigned byte(struct reader *r)
{
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}

static void fuzz_option(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    struct options o;
    options_init_defaults(&o);
    char err[512];
    if (options_set_string(&o, "shared_dict", s, err, sizeof err)) {
        for (size_t i = 0; i < o.n_shared_dict; i++) {
            const struct shdict_spec *sp = &o.shared_dict[i];
            if (!shdict_name_valid(sp->name, strlen(sp->name))) fail("an invalid name parsed");
            if (sp->size < SHDICT_SIZE_MIN || sp->size > SHDICT_SIZE_MAX)
                fail("size out of bounds");
            if (i && strcmp(o.shared_dict[i - 1].name, sp->name) >= 0)
                fail("not sorted or a duplicate");
        }
        if (o.n_shared_dict > SHDICT_MAX) fail("too many dictionaries");
    } else if (!err[0])
        fail("refused without a message");
    options_free(&o);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    if (data[0] & 1) {
        fuzz_option(data + 1, size - 1);
        return 0;
    }
    if (!region) {
        struct shdict_spec sp = {"fuzz", 2 * SHDICT_SIZE_MIN};
        char err[256];
        if (!(region = shdict_region_create(&sp, 1, err, sizeof err))) fail(err);
        dict = shdict_region_find(region, "fuzz", 4);
        memset(valbuf, 'v', sizeof valbuf);
    }
    shdict_flush_all(dict);
    struct reader r = {data + 1, size - 1};
    char why[256];
    while (r.n) {
        unsigned op = byte(&r) % 8;
        /* Keys: a letter repeated 1..n times, so a few keys of very different lengths. */
        unsigned kb = byte(&r);
        char key[300];
        size_t klen = 1 + (kb >> 3) * 9 % 290;
        memset(key, 'a' + (kb & 7), klen);
        unsigned vb = byte(&r);
        struct shdict_value v = {.type = SHDICT_NIL};
        switch (vb % 4) {
        case 0:
            v.type = SHDICT_NIL;
            break;
        case 1:
            v.type = SHDICT_NUMBER, v.number = (double)byte(&r) - 100;
            break;
        case 2:
            v.type = SHDICT_BOOLEAN, v.boolean = byte(&r) & 1;
            break;
        case 3:
            v.type = SHDICT_STRING;
            v.len = ((size_t)byte(&r) << 5) % sizeof valbuf;
            valbuf[0] = (char)vb;
            v.str = valbuf;
            break;
        }
        /* ttl: none, long, or already over by the next operation. */
        unsigned tb = byte(&r) % 4;
        double ttl = tb == 1 ? 1000 : tb == 2 ? 1e-9 : 0;
        bool lasting = ttl != 1e-9;
        struct shdict_value got;
        enum shdict_status st;
        double out, left;
        switch (op) {
        case 0:
        case 1:
            if (op == 1 && v.type == SHDICT_NIL) v.type = SHDICT_BOOLEAN;
            st = shdict_set(dict, key, klen, &v, ttl, op == 1);
            if (st == SHDICT_NO_MEMORY && v.len < SHDICT_SIZE_MIN / 2)
                fail("no memory for a small value");
            if (st == SHDICT_EXISTS && op != 1) fail("set said exists");
            if (st == SHDICT_EXISTS && shdict_get(dict, key, klen, &got, &buf) != SHDICT_OK)
                fail("exists, but get finds nothing");
            if ((st == SHDICT_OK || st == SHDICT_EVICTED) && lasting) {
                enum shdict_status g = shdict_get(dict, key, klen, &got, &buf);
                if (v.type == SHDICT_NIL) {
                    if (g != SHDICT_NOT_FOUND) fail("set nil did not delete");
                } else if (g != SHDICT_OK || got.type != v.type ||
                           (v.type == SHDICT_NUMBER && got.number != v.number) ||
                           (v.type == SHDICT_BOOLEAN && got.boolean != v.boolean) ||
                           (v.type == SHDICT_STRING &&
                            (got.len != v.len || memcmp(got.str, v.str, v.len))))
                    fail("a stored value does not read back");
            }
            break;
        case 2:
            shdict_get(dict, key, klen, &got, &buf);
            break;
        case 3: {
            bool had = shdict_get(dict, key, klen, &got, &buf) == SHDICT_OK;
            double init = 5, before = had && got.type == SHDICT_NUMBER ? got.number : 0;
            st = shdict_incr(dict, key, klen, 3, (vb & 4) ? &init : NULL, ttl, &out);
            if (st == SHDICT_OK && had && got.type == SHDICT_NUMBER && out != before + 3)
                fail("incr did not add");
            if (st == SHDICT_NOT_A_NUMBER && (!had || got.type == SHDICT_NUMBER))
                fail("not a number for a number");
            break;
        }
        case 4:
            shdict_delete(dict, key, klen);
            if (shdict_get(dict, key, klen, &got, &buf) != SHDICT_NOT_FOUND) fail("delete kept it");
            break;
        case 5:
            if (shdict_ttl(dict, key, klen, &left) == SHDICT_OK && left < 0) fail("negative ttl");
            break;
        case 6:
            shdict_expire(dict, key, klen, ttl);
            break;
        case 7:
            if ((vb & 0x30) == 0x30) {
                shdict_flush_all(dict);
                if (shdict_count(dict) != 0) fail("flush_all left entries");
            }
            break;
        }
        if (!shdict_check(dict, why, sizeof why)) fail(why);
    }
    return 0;
}
