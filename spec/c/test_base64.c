/* test_base64.c — unit tests for src/base/base64.c: RFC 4648 vectors, round
 * trips, every strictness rule of the decoder, and the promise that neither
 * function touches memory outside the sizes base64.h documents (each buffer
 * is allocated to exactly that size, so an ASan build catches a stray
 * byte). It must not test anything but base64.h. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "check.h"

/* A copy of s in a buffer of exactly n bytes, so that reading in[n] is an
 * ASan error rather than a silent read of the literal's NUL. */
static char *exact_copy(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);

    if (n) memcpy(p, s, n);
    return p;
}

/* Decodes in[0..n) into a buffer of exactly base64_decoded_max(n) bytes.
 * Returns the result; *outp receives the buffer (caller frees). */
static ssize_t decode_exact(const char *in, size_t n, uint8_t **outp)
{
    char *copy = exact_copy(in, n);
    size_t max = base64_decoded_max(n);
    uint8_t *out = malloc(max ? max : 1);
    ssize_t r = base64_decode_strict(copy, n, out);

    free(copy);
    *outp = out;
    return r;
}

static void test_vectors(void)
{
    /* RFC 4648 section 10. */
    static const struct {
        const char *plain;
        size_t plen;
        const char *enc;
    } v[] = {
        {"", 0, ""},
        {"f", 1, "Zg=="},
        {"fo", 2, "Zm8="},
        {"foo", 3, "Zm9v"},
        {"foob", 4, "Zm9vYg=="},
        {"fooba", 5, "Zm9vYmE="},
        {"foobar", 6, "Zm9vYmFy"},
        /* RFC 4954's PLAIN example, NULs included */
        {"\0tim\0tanstaaftanstaaf", 21, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"},
    };

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t plen = v[i].plen;
        size_t elen = strlen(v[i].enc);
        char *enc = malloc(base64_encoded_len(plen) + 1);
        uint8_t *dec;
        ssize_t r;

        case_begin("vector %zu (%s)", i, v[i].enc);
        CHECK(base64_encoded_len(plen) == elen, "encoded_len %zu", base64_encoded_len(plen));
        CHECK(base64_encode((const uint8_t *)v[i].plain, plen, enc) == elen, "");
        CHECK(memcmp(enc, v[i].enc, elen + 1) == 0, "got \"%s\"", enc);
        r = decode_exact(v[i].enc, elen, &dec);
        CHECK(r == (ssize_t)plen, "decoded %zd bytes", r);
        CHECK(r >= 0 && memcmp(dec, v[i].plain, plen) == 0, "decoded bytes differ");
        free(dec);
        free(enc);
        case_end();
    }
}

/* Tiny deterministic PRNG: the test must not depend on the run. */
static uint32_t rng_state = 0x2545f491;
static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void round_trip(const uint8_t *data, size_t n)
{
    size_t elen = base64_encoded_len(n);
    char *enc = malloc(elen + 1);
    uint8_t *dec;
    size_t w = base64_encode(data, n, enc);
    ssize_t r;

    CHECK(w == elen, "encode wrote %zu, encoded_len says %zu", w, elen);
    CHECK(enc[elen] == '\0', "no NUL");
    CHECK(strlen(enc) == elen, "NUL inside the output");
    CHECK(elen % 4 == 0, "length %zu", elen);
    r = decode_exact(enc, elen, &dec);
    CHECK(r == (ssize_t)n, "decoded %zd of %zu", r, n);
    CHECK(r >= 0 && (size_t)r <= base64_decoded_max(elen), "beyond decoded_max");
    CHECK(r >= 0 && memcmp(dec, data, n) == 0, "bytes differ");
    free(dec);
    free(enc);
}

static void test_round_trips(void)
{
    uint8_t buf[1024];

    /* every length 0..300 of random bytes: all three tail shapes, many times */
    for (size_t n = 0; n <= 300; n++) {
        case_begin("round trip random %zu", n);
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)rng();
        round_trip(buf, n);
        case_end();
    }
    /* every single byte and every byte pair, so each 6-bit group and each
     * padding position sees every value */
    case_begin("round trip all 1- and 2-byte inputs");
    for (unsigned a = 0; a < 256; a++) {
        buf[0] = (uint8_t)a;
        round_trip(buf, 1);
        for (unsigned b = 0; b < 256; b++) {
            buf[1] = (uint8_t)b;
            round_trip(buf, 2);
        }
    }
    case_end();
    case_begin("round trip 1024 bytes of 0xff");
    memset(buf, 0xff, sizeof buf);
    round_trip(buf, sizeof buf);
    case_end();
}

/* Input that must decode to exactly want[0..wn). */
static void accept(const char *in, size_t n, const char *want, size_t wn, const char *why)
{
    uint8_t *dec;
    ssize_t r;

    case_begin("accept \"%.*s\" (%s)", (int)n, in, why);
    r = decode_exact(in, n, &dec);
    CHECK(r == (ssize_t)wn, "got %zd, want %zu", r, wn);
    CHECK(r < 0 || memcmp(dec, want, wn) == 0, "bytes differ");
    free(dec);
    case_end();
}

/* Input that must be refused, leaving the output buffer untouched. */
static void refuse(const char *in, size_t n, const char *why)
{
    char *copy = exact_copy(in, n);
    size_t max = base64_decoded_max(n);
    uint8_t *out = malloc(max + 1);
    ssize_t r;
    int untouched = 1;

    case_begin("refuse \"%.*s\" (%s)", (int)n, in, why);
    memset(out, 0xa5, max + 1);
    r = base64_decode_strict(copy, n, out);
    for (size_t i = 0; i < max + 1; i++)
        if (out[i] != 0xa5) untouched = 0;
    CHECK(r == -1, "got %zd", r);
    CHECK(untouched, "output written although refused");
    free(out);
    free(copy);
    case_end();
}

#define ACCEPT(s, w, why) accept(s, sizeof s - 1, w, sizeof w - 1, why)
#define REFUSE(s, why) refuse(s, sizeof s - 1, why)

static void test_strictness(void)
{
    ACCEPT("", "", "empty input is 0 bytes");
    ACCEPT("QUJD", "ABC", "no padding");
    ACCEPT("QUI=", "AB", "one pad");
    ACCEPT("QQ==", "A", "two pads");
    /* Non-zero pad bits: Python's b64decode(validate=True) accepts them. */
    ACCEPT("QR==", "A", "non-zero bits under '=='");
    ACCEPT("QUJ=", "AB", "non-zero bits under '='");
    ACCEPT("Zh==", "f", "non-zero bits, RFC 4648 3.5 example");
    ACCEPT("+/+/", "\xfb\xff\xbf", "'+' and '/'");
    ACCEPT("////", "\xff\xff\xff", "all ones");
    ACCEPT("AAAA", "\0\0\0", "all zeros");
    ACCEPT("QUJDQQ==", "ABCA", "padding only in the last quantum");

    /* length */
    REFUSE("Q", "length 1");
    REFUSE("QQ", "length 2, unpadded");
    REFUSE("QUI", "length 3, unpadded");
    REFUSE("QQ=", "length 3, short padding");
    REFUSE("QUJDQ", "length 5");
    REFUSE("QUJD=", "complete quantum plus one '=' (Python 3.11 accepts)");
    /* padding placement */
    REFUSE("=", "lone '=' (the RFC 4954 empty response is the caller's)");
    REFUSE("====", "only padding");
    REFUSE("Q===", "three pads");
    REFUSE("QUJD====", "a whole quantum of padding (Python 3.11 accepts)");
    REFUSE("QQ==QQ==", "padding in the middle");
    REFUSE("QUI=QUJD", "one pad in the middle");
    REFUSE("Q=Q=", "pad then data in a quantum");
    REFUSE("QQ=A", "data after the pad");
    REFUSE("=QUJ", "leading pad");
    REFUSE("QUJD=QUI", "pad at a quantum boundary, then data");
    /* alphabet */
    REFUSE("QU D", "space");
    REFUSE("QUJD\n", "trailing newline");
    REFUSE("QUJ\r", "carriage return");
    REFUSE("\tQUJ", "tab");
    REFUSE("QU-D", "URL-safe '-'");
    REFUSE("QU_D", "URL-safe '_'");
    REFUSE("QU.D", "'.'");
    REFUSE("QU\0D", "embedded NUL");
    REFUSE("QU\x80"
           "D",
           "byte 0x80");
    REFUSE("QU\xff"
           "D",
           "byte 0xff");
    REFUSE("QUJD\xc3\xa9==", "UTF-8 in the input");
    REFUSE("QUJD QUJD", "space between quanta");
}

/* Every alphabet character at every position of a quantum decodes to its
 * index, and every other byte value is refused there. */
static void test_alphabet(void)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    for (int pos = 0; pos < 4; pos++) {
        case_begin("alphabet at position %d", pos);
        for (int c = 0; c < 256; c++) {
            char q[4] = {'A', 'A', 'A', 'A'};
            const char *hit = c ? memchr(alpha, c, 64) : NULL;
            uint8_t out[3];
            ssize_t r;
            uint32_t v;

            q[pos] = (char)c;
            r = base64_decode_strict(q, 4, out);
            if (!hit) {
                /* '=' is legal only as the last or the last two */
                if (c == '=' && pos == 3)
                    CHECK(r == 2, "'AAA=' gave %zd", r);
                else
                    CHECK(r == -1, "byte 0x%02x at %d gave %zd", c, pos, r);
                continue;
            }
            CHECK(r == 3, "'%c' at %d gave %zd", c, pos, r);
            v = (uint32_t)out[0] << 16 | (uint32_t)out[1] << 8 | out[2];
            CHECK(v == (uint32_t)(hit - alpha) << (6 * (3 - pos)), "'%c' at %d: 0x%06x", c, pos,
                  (unsigned)v);
        }
        case_end();
    }
}

static void test_sizes(void)
{
    case_begin("size formulas");
    CHECK(base64_encoded_len(0) == 0, "");
    CHECK(base64_encoded_len(1) == 4, "");
    CHECK(base64_encoded_len(2) == 4, "");
    CHECK(base64_encoded_len(3) == 4, "");
    CHECK(base64_encoded_len(4) == 8, "");
    CHECK(base64_encoded_len(12288) == 16384, "");
    CHECK(base64_decoded_max(0) == 0, "");
    CHECK(base64_decoded_max(4) == 3, "");
    CHECK(base64_decoded_max(7) == 3, "");
    CHECK(base64_decoded_max(8) == 6, "");
    case_end();

    /* decoded_max is an upper bound for every string, valid or not: decode
     * random strings over the alphabet plus '=' into exact-size buffers
     * (ASan reports any write past it). */
    case_begin("decoded_max bounds random input");
    for (int i = 0; i < 20000; i++) {
        static const char set[] = "AQgw+/=AQgw";
        char in[16];
        size_t n = rng() % sizeof in;
        uint8_t *out;
        ssize_t r;

        for (size_t k = 0; k < n; k++)
            in[k] = set[rng() % (sizeof set - 1)];
        r = decode_exact(in, n, &out);
        CHECK(r == -1 || (r >= 0 && (size_t)r <= base64_decoded_max(n)), "n=%zu r=%zd", n, r);
        free(out);
    }
    case_end();
}

int main(void)
{
    test_vectors();
    test_round_trips();
    test_strictness();
    test_alphabet();
    test_sizes();
    return check_report();
}
