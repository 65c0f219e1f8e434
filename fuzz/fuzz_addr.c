/* fuzz_addr.c — the MAIL FROM / RCPT TO / VRFY address parser (src/smtp/addr.c)
 * under libFuzzer. The whole input is the argument (after "FROM:"); the
 * parameters after the address are the rest, which the session target
 * feeds on to its parameter parser.
 *
 * The argument is parsed with several output capacities — one chosen by the
 * input's first byte, the session's SMTP_ADDR_MAX, and one far larger than
 * any rendering can need — each into a heap block of exactly that size, so
 * ASan sees any write past it. Checked:
 *   - ADDR_EMPTY exactly for an empty argument;
 *   - ADDR_OK: addr_len < capacity, addr NUL-terminated there, rest a
 *     suffix of the argument (rest + rest_len == arg + len);
 *   - ADDR_MALFORMED: nothing left in addr (empty string, length 0);
 *   - the capacity changes nothing but whether the address fits: the same
 *     status, address and rest whenever it fits, ADDR_MALFORMED when not. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "addr.h"
#include "session.h" /* SMTP_ADDR_MAX */

static void fail(const char *what, size_t cap)
{
    fprintf(stderr, "\nfuzz_addr: %s (capacity %zu)\n", what, cap);
    abort();
}

struct parsed {
    enum addr_status st;
    char *addr;
    size_t addr_len;
    size_t rest_off, rest_len;
};

static void parse(const char *arg, size_t len, size_t cap, struct parsed *p)
{
    p->addr = malloc(cap ? cap : 1);
    if (!p->addr) abort();
    struct addr_result r = {p->addr, 12345, NULL, 12345};
    p->st = addr_parse(arg, len, &r, cap);
    p->addr_len = r.addr_len;
    switch (p->st) {
    case ADDR_EMPTY:
        if (len != 0) fail("ADDR_EMPTY for a non-empty argument", cap);
        break;
    case ADDR_OK:
        if (len == 0) fail("ADDR_OK for an empty argument", cap);
        if (r.addr_len >= cap) fail("the address does not fit its buffer", cap);
        if (r.addr[r.addr_len] != '\0') fail("the address is not NUL-terminated", cap);
        if (!r.rest || r.rest < arg || r.rest > arg + len ||
            r.rest_len != (size_t)(arg + len - r.rest))
            fail("the rest is not a suffix of the argument", cap);
        p->rest_off = (size_t)(r.rest - arg);
        p->rest_len = r.rest_len;
        break;
    case ADDR_MALFORMED:
        if (len == 0) fail("ADDR_MALFORMED for an empty argument", cap);
        if (r.addr_len != 0) fail("ADDR_MALFORMED with an address length", cap);
        if (cap && r.addr[0] != '\0') fail("ADDR_MALFORMED left an address behind", cap);
        break;
    default:
        fail("an unknown status", cap);
    }
}

/* b was parsed with capacity cap; ref with a capacity nothing can exceed. */
static void compare(const struct parsed *ref, const struct parsed *b, size_t cap)
{
    if (ref->st == ADDR_OK && ref->addr_len >= cap) {
        if (b->st != ADDR_MALFORMED) fail("an address too long for its buffer was accepted", cap);
        return;
    }
    if (ref->st != b->st) fail("the status depends on the capacity", cap);
    if (ref->st != ADDR_OK) return;
    if (ref->addr_len != b->addr_len || memcmp(ref->addr, b->addr, ref->addr_len))
        fail("the address depends on the capacity", cap);
    if (ref->rest_off != b->rest_off || ref->rest_len != b->rest_len)
        fail("the rest depends on the capacity", cap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const size_t small[16] = {0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512};
    size_t cap_small = small[data[0] & 15];
    const char *arg = (const char *)data + 1;
    size_t len = size - 1;

    struct parsed ref, mid, low;
    size_t cap_ref = 8 * len + 2 * SMTP_ADDR_MAX;
    parse(arg, len, cap_ref, &ref);
    parse(arg, len, SMTP_ADDR_MAX, &mid);
    compare(&ref, &mid, SMTP_ADDR_MAX);
    parse(arg, len, cap_small, &low);
    compare(&ref, &low, cap_small);
    free(ref.addr);
    free(mid.addr);
    free(low.addr);
    return 0;
}
