/* base64.c — RFC 4648 section 4 base64, encode and strict decode, for SASL
 * (RFC 4954). Owns nothing but its two loops: no allocation, no I/O, no
 * knowledge of SMTP. It must not accept anything Python's
 * base64.b64decode(s, validate=True) refuses, because aiosmtpd answers
 * "501 5.5.2 Can't decode base64" to exactly those strings.
 *
 * Compared with CPython 3.11.2's b64decode(validate=True) (binascii strict
 * mode) exhaustively over all 19,173,961 strings of length <= 8 drawn from
 * "AQgw+/=-": both refuse padding in the middle ("QQ==QQ==": "Excess data
 * after padding"), leading padding ("=", "===="), "Q===", "QQ=" and any byte
 * outside the alphabet, and both accept non-zero pad bits ("QR==" is b"A").
 * The one difference: Python accepts a complete final quantum followed by
 * any run of '=' ("QUJD=", "QUJD====" decode to b"ABC"), a hole in its
 * strict mode. We refuse those: padding exists only to complete a short
 * last quantum, and two spellings of the same credentials are what a strict
 * decoder is for. Pythons before 3.11 (no strict mode) also accepted
 * "QQ==QQ==", stopping at the first pad; we are stricter than those too. */
#include "base64.h"

static const char base64_alphabet[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encoded_len(size_t n)
{
    return n / 3 * 4 + (n % 3 ? 4 : 0);
}

size_t base64_decoded_max(size_t n)
{
    /* Only a multiple of four can decode at all; anything else is refused
     * before a byte is written, so this bound holds for every n. */
    return n / 4 * 3;
}

size_t base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    size_t i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = base64_alphabet[v >> 18 & 63];
        out[o++] = base64_alphabet[v >> 12 & 63];
        out[o++] = base64_alphabet[v >> 6 & 63];
        out[o++] = base64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = base64_alphabet[v >> 18 & 63];
        out[o++] = base64_alphabet[v >> 12 & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = base64_alphabet[v >> 18 & 63];
        out[o++] = base64_alphabet[v >> 12 & 63];
        out[o++] = base64_alphabet[v >> 6 & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

/* The 6-bit value of c, or -1 for anything outside the alphabet (including
 * '=', which the caller handles by position). A switch on ranges rather
 * than a 256-entry table keeps signed-char input from indexing below it. */
static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

ssize_t base64_decode_strict(const char *in, size_t n, uint8_t *out)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t pad = 0;
    size_t o = 0;

    if (n % 4 != 0) return -1;
    if (n == 0) return 0;
    /* The length must fit the ssize_t we return (SSIZE_MAX is POSIX-only;
     * it is SIZE_MAX / 2 wherever ssize_t exists). */
    if (n / 4 * 3 > SIZE_MAX / 2) return -1;
    /* Padding is recognised only as the last one or two characters; any
     * other '=' then fails base64_value() below, which is what makes
     * "QQ==QQ==", "Q===" and "====" invalid. */
    if (s[n - 1] == '=') pad = s[n - 2] == '=' ? 2 : 1;

    /* Validate everything before writing, so that a refused string leaves
     * out untouched. */
    for (size_t i = 0; i < n - pad; i++)
        if (base64_value(s[i]) < 0) return -1;

    for (size_t i = 0; i < n; i += 4) {
        int a = base64_value(s[i]);
        int b = base64_value(s[i + 1]);
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12;

        out[o++] = (uint8_t)(v >> 16);
        if (i + 4 == n && pad == 2) break;
        v |= (uint32_t)base64_value(s[i + 2]) << 6;
        out[o++] = (uint8_t)(v >> 8 & 0xff);
        if (i + 4 == n && pad == 1) break;
        v |= (uint32_t)base64_value(s[i + 3]);
        out[o++] = (uint8_t)(v & 0xff);
    }
    return (ssize_t)o;
}
