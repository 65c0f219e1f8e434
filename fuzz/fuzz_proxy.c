/* fuzz_proxy.c — the PROXY protocol v1/v2 header parser (src/smtp/proxy.c)
 * under libFuzzer. The input is what a load balancer (or anyone who can
 * reach a --proxy-protocol listener) sends first.
 *
 * proxy_parse() is called as the session calls it, on everything received
 * so far, for many prefixes of the input, each copied into a heap block of
 * exactly its length so ASan sees any read past what has arrived. Checked,
 * from proxy.h's contract and proxy-protocol.txt:
 *   - incremental: NEED_MORE for a prefix, then OK or INVALID, and once a
 *     prefix is OK or INVALID every longer one gives the same answer (for
 *     OK: the same header and fields);
 *   - never NEED_MORE with PROXY_V2_MAX bytes (the input padded to that);
 *   - INVALID carries a reason; NEED_MORE and OK none;
 *   - OK: v1 is "PROXY " ... LF within PROXY_V1_MAX bytes; v2 starts with
 *     the signature and its length is 16 + the length field, at most
 *     PROXY_V2_MAX; LOCAL only in v2; families, protocols and TLV counts in
 *     range; addresses NUL-terminated at their length, INET/INET6 text that
 *     inet_pton accepts and inet_ntop renders identically, ports 0..65535
 *     (-1 for UNIX and without addresses); `rest` and every TLV value lie
 *     inside the header; sub-TLVs follow an SSL TLV; a CRC32C TLV matches
 *     a CRC32C computed here over the header with that field zeroed. */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "proxy.h"

/* Every prefix up to this length is tried; longer inputs are sampled. */
#define PREFIX_ALL 160
#define PREFIX_SAMPLES 48

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static size_t cur_len;

static void fail(const char *what)
{
    fprintf(stderr, "\nfuzz_proxy: %s (prefix of %zu bytes)\n", what, cur_len);
    abort();
}

/* CRC32C (Castagnoli, reflected 0x82F63B78), bit by bit: slow and plain. */
static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? crc >> 1 ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

static bool inside(const uint8_t *buf, size_t hlen, const uint8_t *p, size_t n)
{
    return p >= buf && p <= buf + hlen && n <= (size_t)(buf + hlen - p);
}

static void check_addr(enum proxy_family fam, const char *a, size_t len, int port)
{
    if (len > PROXY_UNIX_PATH_MAX || a[len] != '\0')
        fail("an address not NUL-terminated at its length");
    if (fam == PROXY_AF_UNIX) {
        if (port != -1) fail("a UNIX address with a port");
        return;
    }
    if (strlen(a) != len) fail("an INET address with a NUL inside");
    if (port < 0 || port > 65535) fail("a port out of range");
    int af = fam == PROXY_AF_INET ? AF_INET : AF_INET6;
    unsigned char bin[16];
    char text[64];
    if (inet_pton(af, a, bin) != 1) fail("an address inet_pton refuses");
    if (!inet_ntop(af, bin, text, sizeof text) || strcmp(text, a))
        fail("an address not in canonical form");
}

static void check_ok(const uint8_t *buf, size_t len, const struct proxy_info *pi)
{
    size_t h = pi->header_len;
    if (pi->error) fail("OK with an error");
    if (h == 0 || h > len) fail("header_len outside what was received");
    if (pi->version == 1) {
        if (h > PROXY_V1_MAX || h < 8 || memcmp(buf, "PROXY ", 6) || buf[h - 1] != '\n')
            fail("a v1 header that is not a PROXY line");
        if (pi->local) fail("LOCAL in v1");
    } else if (pi->version == 2) {
        if (h < 16 || memcmp(buf, v2_sig, sizeof v2_sig)) fail("a v2 header without its signature");
        if (h != 16 + (size_t)(buf[14] << 8 | buf[15]))
            fail("a v2 header_len that is not 16 + length");
        if (h > PROXY_V2_MAX) fail("a v2 header over PROXY_V2_MAX");
        if ((buf[12] >> 4) != 2) fail("a v2 header of another version");
        if (pi->local != ((buf[12] & 15) == 0)) fail("LOCAL does not match the command");
    } else
        fail("an unknown version");
    if ((unsigned)pi->family > PROXY_AF_UNIX || (unsigned)pi->protocol > PROXY_PROTO_DGRAM)
        fail("family or protocol out of range");
    if (!proxy_family_name(pi->family) || !proxy_protocol_name(pi->protocol)) fail("no name");
    if (pi->has_addr) {
        if (pi->family == PROXY_AF_UNSPEC) fail("addresses of family UNSPEC");
        check_addr(pi->family, pi->src_addr, pi->src_addr_len, pi->src_port);
        check_addr(pi->family, pi->dst_addr, pi->dst_addr_len, pi->dst_port);
    } else if (pi->src_addr_len || pi->dst_addr_len || pi->src_addr[0] || pi->dst_addr[0] ||
               pi->src_port != -1 || pi->dst_port != -1)
        fail("address fields set without addresses");
    if (pi->rest_len && !inside(buf, h, pi->rest, pi->rest_len)) fail("rest outside the header");
    if (pi->n_tlv > PROXY_TLV_MAX) fail("too many TLVs");
    bool in_ssl = false;
    for (size_t i = 0; i < pi->n_tlv; i++) {
        const struct proxy_tlv *t = &pi->tlv[i];
        if (pi->version != 2) fail("TLVs in v1");
        if (t->len && !inside(buf, h, t->value, t->len)) fail("a TLV value outside the header");
        (void)proxy_tlv_name(t->type);
        if (t->parent == 0)
            in_ssl = t->type == PROXY_TLV_SSL;
        else if (t->parent != PROXY_TLV_SSL || !in_ssl)
            fail("a sub-TLV outside an SSL TLV");
        if (t->type == PROXY_TLV_CRC32C && t->parent == 0) {
            if (t->len != 4) fail("a CRC32C TLV that is not 4 bytes");
            uint8_t *copy = malloc(h);
            if (!copy) abort();
            memcpy(copy, buf, h);
            memset(copy + (t->value - buf), 0, 4);
            uint32_t want = crc32c(copy, h);
            free(copy);
            uint32_t got = (uint32_t)t->value[0] << 24 | (uint32_t)t->value[1] << 16 |
                           (uint32_t)t->value[2] << 8 | t->value[3];
            if (want != got) fail("a CRC32C that does not match the header was accepted");
        }
    }
}

/* The fields of an OK answer, with pointers made offsets, for comparing
 * the answers to two prefixes. */
static bool same_ok(const uint8_t *a, const struct proxy_info *x, const uint8_t *b,
                    const struct proxy_info *y)
{
    if (x->header_len != y->header_len || x->version != y->version || x->local != y->local ||
        x->family != y->family || x->protocol != y->protocol || x->has_addr != y->has_addr ||
        x->src_addr_len != y->src_addr_len || x->dst_addr_len != y->dst_addr_len ||
        memcmp(x->src_addr, y->src_addr, x->src_addr_len) ||
        memcmp(x->dst_addr, y->dst_addr, x->dst_addr_len) || x->src_port != y->src_port ||
        x->dst_port != y->dst_port || x->rest_len != y->rest_len || x->n_tlv != y->n_tlv)
        return false;
    if (x->rest_len && x->rest - a != y->rest - b) return false;
    for (size_t i = 0; i < x->n_tlv; i++) {
        const struct proxy_tlv *s = &x->tlv[i], *t = &y->tlv[i];
        if (s->type != t->type || s->parent != t->parent || s->len != t->len ||
            (s->len && s->value - a != t->value - b))
            return false;
    }
    return true;
}

struct answer {
    enum proxy_status st;
    uint8_t *buf; /* the prefix the answer points into (OK only) */
    struct proxy_info pi;
};

/* Parses data[0..len) from an exact-size copy; keeps the copy for OK. */
static void parse(const uint8_t *data, size_t len, struct answer *a)
{
    cur_len = len;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) abort();
    memcpy(buf, data, len);
    memset(&a->pi, 0xA5, sizeof a->pi);
    a->st = proxy_parse(buf, len, &a->pi);
    switch (a->st) {
    case PROXY_NEED_MORE:
        if (len >= PROXY_V2_MAX) fail("NEED_MORE with PROXY_V2_MAX bytes");
        if (a->pi.error) fail("NEED_MORE with an error");
        break;
    case PROXY_INVALID:
        if (!a->pi.error || !a->pi.error[0]) fail("INVALID without a reason");
        break;
    case PROXY_OK:
        check_ok(buf, len, &a->pi);
        break;
    default:
        fail("an unknown status");
    }
    if (a->st == PROXY_OK)
        a->buf = buf;
    else {
        free(buf);
        a->buf = NULL;
    }
}

/* The answer to a longer prefix must agree with a final one. */
static void agree(const struct answer *first, const struct answer *later)
{
    if (first->st == PROXY_NEED_MORE) return;
    if (later->st != first->st) fail("an answer changed when more bytes arrived");
    if (first->st == PROXY_OK && !same_ok(first->buf, &first->pi, later->buf, &later->pi))
        fail("the parsed header changed when more bytes arrived");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Prefix lengths in increasing order: all short ones, then samples. */
    size_t lens[PREFIX_ALL + PREFIX_SAMPLES + 2];
    size_t n = 0;
    for (size_t k = 0; k <= size && k <= PREFIX_ALL; k++)
        lens[n++] = k;
    if (size > PREFIX_ALL) {
        size_t span = size - PREFIX_ALL;
        for (size_t i = 1; i <= PREFIX_SAMPLES; i++) {
            size_t k = PREFIX_ALL + span * i / PREFIX_SAMPLES;
            if (k > lens[n - 1]) lens[n++] = k;
        }
    }

    struct answer first = {PROXY_NEED_MORE, NULL, {0}}, cur;
    for (size_t i = 0; i < n; i++) {
        parse(data, lens[i], &cur);
        if (first.st == PROXY_NEED_MORE) {
            first = cur;
            continue;
        }
        agree(&first, &cur);
        free(cur.buf);
    }

    /* PROXY_V2_MAX bytes always settle it: the input, then zeros. */
    uint8_t *padded = calloc(1, PROXY_V2_MAX);
    if (!padded) abort();
    memcpy(padded, data, size < PROXY_V2_MAX ? size : PROXY_V2_MAX);
    parse(padded, PROXY_V2_MAX, &cur);
    agree(&first, &cur);
    free(cur.buf);
    free(padded);
    free(first.buf);
    return 0;
}
