/* fuzz_base64.c — the strict base64 decoder and the encoder (src/base/base64.c)
 * under libFuzzer. Buffers are heap blocks of exactly the size base64.h
 * promises is enough, so ASan sees any write past them.
 *
 * Checked, for the input as base64 text:
 *   - it decodes iff a model written here from base64.h accepts it: a
 *     length that is a multiple of four, at most two trailing '=', and
 *     nothing else outside A-Z a-z 0-9 + /;
 *   - a refused input leaves the output untouched;
 *   - decoded length: 3 per 4 characters, minus one per '=';
 *   - encode(decode(x)) == x, except that the last character before the
 *     padding may differ in its pad bits (which the decoder ignores, as
 *     Python does); decode(encode(decode(x))) == decode(x).
 * and for the input as bytes: encode gives base64_encoded_len() characters,
 * NUL-terminated, which decode back to the input. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "base64.h"

static void fail(const char *what)
{
    fprintf(stderr, "\nfuzz_base64: %s\n", what);
    abort();
}

static int value(unsigned char c)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? memchr(alphabet, c, 64) : NULL;
    return p ? (int)(p - alphabet) : -1;
}

/* The model: is s strict base64, and how many '=' end it? */
static bool model_valid(const uint8_t *s, size_t n, size_t *pad)
{
    *pad = 0;
    if (n % 4) return false;
    while (*pad < n && s[n - 1 - *pad] == '=')
        (*pad)++;
    if (*pad > 2) return false;
    for (size_t i = 0; i < n - *pad; i++)
        if (value(s[i]) < 0) return false;
    return true;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p && n) abort();
    return p;
}

/* Encodes in[0..n) and checks the length and the NUL; returns the text. */
static char *encode(const uint8_t *in, size_t n, size_t *len)
{
    size_t want = base64_encoded_len(n);
    char *out = xmalloc(want + 1);
    *len = base64_encode(in, n, out);
    if (*len != want) fail("encode wrote another length than base64_encoded_len()");
    if (out[*len] != '\0') fail("encode did not NUL-terminate");
    return out;
}

/* Decodes, into a block of exactly base64_decoded_max() bytes. */
static ssize_t decode(const char *in, size_t n, uint8_t **out)
{
    size_t max = base64_decoded_max(n);
    *out = xmalloc(max);
    if (max) memset(*out, 0xA5, max);
    ssize_t got = base64_decode_strict(in, n, *out);
    if (got > (ssize_t)max) fail("decoded more than base64_decoded_max()");
    if (got < 0) {
        for (size_t i = 0; i < max; i++)
            if ((*out)[i] != 0xA5) fail("a refused input wrote to the output");
    }
    return got;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;

    /* The input as base64 text. */
    size_t pad;
    bool valid = model_valid(data, size, &pad);
    uint8_t *raw;
    ssize_t got = decode(text, size, &raw);
    if ((got >= 0) != valid) fail(valid ? "refused valid base64" : "accepted invalid base64");
    if (got >= 0) {
        if ((size_t)got != size / 4 * 3 - pad) fail("decoded length does not match the padding");
        size_t elen;
        char *again = encode(raw, (size_t)got, &elen);
        if (elen != size) fail("re-encoding changed the length");
        for (size_t i = 0; i < size; i++) {
            if (again[i] == text[i]) continue;
            /* Only the last character before the padding, in its pad bits. */
            int mask = pad == 1 ? 0x3c : 0x30;
            if (pad == 0 || i != size - 1 - pad ||
                (value((unsigned char)again[i]) & mask) != (value(data[i]) & mask))
                fail("re-encoding is not the input");
        }
        uint8_t *raw2;
        ssize_t got2 = decode(again, elen, &raw2);
        if (got2 != got || memcmp(raw, raw2, (size_t)got)) fail("decode(encode(x)) != x");
        free(raw2);
        free(again);
    }
    free(raw);

    /* The input as bytes. */
    size_t elen;
    char *enc = encode(data, size, &elen);
    for (size_t i = 0; i < elen; i++)
        if (value((unsigned char)enc[i]) < 0 && enc[i] != '=')
            fail("encode wrote a non-alphabet byte");
    uint8_t *back;
    ssize_t blen = decode(enc, elen, &back);
    if (blen != (ssize_t)size || (size && memcmp(back, data, size)))
        fail("decode(encode(bytes)) != bytes");
    free(back);
    free(enc);
    return 0;
}
