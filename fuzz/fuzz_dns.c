/* fuzz_dns.c — DNS replies as a hostile server could send them, through
 * the parsing and record shaping every smtpd.dns answer goes through
 * (src/async/dns.c: dns_parse_answer on c-ares's ares_parse_*_reply and
 * our section walk, dns_negative_ttl, dns_answer_copy), and the name and
 * `resolver` checks on arbitrary text.
 *
 * Input: byte 0 picks the query type (mod 8), the rest is the reply.
 * Checked besides the sanitizers: DNS_OK comes with 1..DNS_MAX_RECORDS
 * records, each record's data lies inside the block and is NUL-terminated
 * at its length; the block's size covers them; a copy is identical; no
 * other status comes with an answer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "dns.h"

static void fail(const char *what)
{
    fprintf(stderr, "\nfuzz_dns: %s\n", what);
    abort();
}

static void check_answer(const struct dns_answer *a)
{
    if (a->n < 1 || a->n > DNS_MAX_RECORDS) fail("record count out of range");
    const char *lo = (const char *)&a->rec[a->n], *hi = (const char *)a + a->size;
    for (size_t i = 0; i < a->n; i++) {
        const struct dns_record *r = &a->rec[i];
        if (r->data < lo || r->data + r->len + 1 > hi) fail("record data outside the block");
        if (r->data[r->len] != '\0') fail("record data not NUL-terminated");
        if (r->priority > 65535 || r->weight > 65535 || r->port > 65535)
            fail("16-bit field out of range");
    }
    struct dns_answer *c = dns_answer_copy(a);
    if (!c) abort();
    if (c->n != a->n || c->size != a->size) fail("copy differs in shape");
    for (size_t i = 0; i < a->n; i++) {
        if (c->rec[i].len != a->rec[i].len || c->rec[i].ttl != a->rec[i].ttl ||
            memcmp(c->rec[i].data, a->rec[i].data, a->rec[i].len + 1))
            fail("copy differs");
        if (c->rec[i].data < (const char *)c || c->rec[i].data >= (const char *)c + c->size)
            fail("copy points into the original");
    }
    free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    enum dns_type t = (enum dns_type)(data[0] % 8);
    const unsigned char *abuf = data + 1;
    int alen = (int)(size - 1);

    /* The reply as c-ares would hand it over: a heap block of exactly its
     * size, so ASan sees a read past it. */
    unsigned char *reply = malloc(alen ? (size_t)alen : 1);
    if (!reply) abort();
    memcpy(reply, abuf, (size_t)alen);
    struct dns_answer *a = NULL;
    enum dns_status st = dns_parse_answer(t, reply, alen, &a);
    if (st == DNS_OK) {
        if (!a) fail("DNS_OK without an answer");
        check_answer(a);
        free(a);
    } else if (a) {
        fail("an answer with an error status");
    } else if (st != DNS_NODATA && st != DNS_SERVFAIL) {
        fail("parse gave a status other than OK, no data, server failure");
    }
    uint32_t ttl;
    (void)dns_negative_ttl(reply, alen, &ttl);
    free(reply);

    /* The rest as text: a query name, a `resolver` option. */
    char *text = malloc(size);
    if (!text) abort();
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    (void)dns_name_valid(text);
    char err[256];
    if (!dns_servers_valid(text, err, sizeof err) && !err[0]) fail("refused without a reason");
    free(text);
    if (size - 1 == 4 || size - 1 == 16) {
        char name[512];
        if (!dns_reverse_name(data + 1, (int)(size - 1), "zen.test", name, sizeof name))
            fail("a reverse name did not fit");
        if (!dns_name_valid(name)) fail("a reverse name is not a valid name");
    }
    return 0;
}
