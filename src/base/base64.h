/* base64.h — RFC 4648 base64 for SASL (RFC 4954). Pure functions, no I/O.
 *
 * The decoder is strict: only A-Z a-z 0-9 + /, a length that is a multiple
 * of four, and '=' padding (one or two) only at the very end. Anything else
 * is refused rather than guessed at, because a lenient decoder lets two
 * different strings mean the same credentials. */
#ifndef LUASMTPD_BASE64_H
#define LUASMTPD_BASE64_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Bytes base64_encode() writes for n input bytes, not counting the NUL. */
size_t base64_encoded_len(size_t n);

/* Upper bound of the bytes base64_decode_strict() writes for n input chars. */
size_t base64_decoded_max(size_t n);

/* Encodes n bytes of in into out (caller-owned, base64_encoded_len(n) + 1
 * bytes) and NUL-terminates it. Returns the length written, without the NUL. */
size_t base64_encode(const uint8_t *in, size_t n, char *out);

/* Decodes n chars of in into out (caller-owned, base64_decoded_max(n)
 * bytes). Returns the decoded length, or -1 if in is not strict base64.
 * An empty input decodes to 0 bytes. */
ssize_t base64_decode_strict(const char *in, size_t n, uint8_t *out);

#endif
