/* fuzz_data.c — the DATA reader (src/smtp/data.c) under libFuzzer.
 *
 * Input: byte 0 picks the bare CR/LF mode (bits 0-1: reject, normalize,
 * keep) and the size limit (bits 2-3: none, 100, 1500, 5000 octets); byte 1
 * seeds the chunk sizes; the rest is what the client sends after "354".
 *
 * The message is read three ways — all at once, in pseudo-random chunks of
 * 1..64 bytes, and one byte at a time — and compared with a model written
 * here from RFC 5321 and data.h, not from data.c: lines end only at CRLF;
 * the first line that is exactly ".\r\n" ends the message (SMTP smuggling:
 * "\n.\n", "\n.\r\n", "\r.\r\n" never do); one leading dot is removed from
 * every other line; a line over DATA_LINE_MAX octets with its CRLF, or a
 * message whose octets exceed the limit, is refused (first failure wins);
 * a bare CR or LF refuses the message in reject mode, becomes CRLF in
 * normalize mode, and stays in keep mode.
 *
 * Checked: the all-at-once read equals the model (finished or not, octets
 * consumed — so commands after the end stay in the input —, verdict, and
 * content when accepted); every chunked read equals the all-at-once read;
 * accepted content in reject/normalize mode has no bare CR or LF and is
 * made of CRLF-terminated lines.
 *
 * The verdict must not depend on how TCP cut the message into reads: a
 * line that is both too long and over the limit must not get 500 from one
 * split and 552 from another (fuzz/crashes/data-verdict-depends-on-split). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "buf.h"
#include "data.h"
#include "smtp_limits.h"

static const size_t limits[4] = {0, 100, 1500, 5000};
static const char *const verdict_names[] = {"OK", "TOO_LONG", "TOO_MUCH", "BARE_NEWLINE"};

struct outcome {
    bool finished;
    size_t consumed; /* octets of the input read, when finished */
    enum data_verdict verdict;
    struct buf content; /* when finished with DATA_OK */
};

static const uint8_t *cur_input;
static size_t cur_size;

static void fail(const char *what, const struct outcome *a, const struct outcome *b)
{
    fprintf(stderr, "\nfuzz_data: %s\n", what);
    const struct outcome *o[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        if (!o[i]) continue;
        fprintf(stderr, "  %s: finished=%d consumed=%zu verdict=%s content=%zu bytes\n",
                i == 0 ? "expected" : "got     ", o[i]->finished, o[i]->consumed,
                verdict_names[o[i]->verdict], buf_len(&o[i]->content));
    }
    fprintf(stderr, "  input: %zu bytes (mode byte 0x%02x)\n", cur_size,
            cur_size ? cur_input[0] : 0);
    abort();
}

/* ------------------------------------------------------------ the model */

static void append(struct buf *b, const void *p, size_t n)
{
    if (!buf_append(b, p, n)) abort();
}

static void model(const uint8_t *p, size_t n, size_t limit, enum bare_newline_mode mode,
                  struct outcome *o)
{
    size_t pos = 0, octets = 0;
    bool bare = false;
    o->verdict = DATA_OK;
    for (;;) {
        const uint8_t *crlf = memmem(p + pos, n - pos, "\r\n", 2);
        if (!crlf) return; /* not finished */
        size_t end = (size_t)(crlf - p) + 2;
        const uint8_t *line = p + pos;
        size_t len = end - pos;
        pos = end;
        if (len == 3 && line[0] == '.') {
            o->finished = true;
            o->consumed = end;
            break;
        }
        octets += len;
        if (o->verdict != DATA_OK) continue;
        if (limit && octets > limit) {
            o->verdict = DATA_TOO_MUCH;
            continue;
        }
        if (len > DATA_LINE_MAX) {
            o->verdict = DATA_TOO_LONG;
            continue;
        }
        size_t k = line[0] == '.' ? 1 : 0;
        for (; k < len - 2; k++) {
            if (line[k] == '\r' || line[k] == '\n') {
                bare = true;
                if (mode == BARE_NEWLINE_NORMALIZE) {
                    append(&o->content, "\r\n", 2);
                    continue;
                }
            }
            append(&o->content, &line[k], 1);
        }
        append(&o->content, "\r\n", 2);
    }
    if (o->verdict == DATA_OK && bare && mode == BARE_NEWLINE_REJECT)
        o->verdict = DATA_BARE_NEWLINE;
}

/* ------------------------------------------------------------ the reader */

/* Reads p[0..n) with reads of the sizes next_size() gives (0: all at once). */
static void read_message(const uint8_t *p, size_t n, size_t limit, enum bare_newline_mode mode,
                         uint32_t seed, int how, struct outcome *o)
{
    struct data_reader d;
    memset(&d, 0, sizeof d);
    /* A budget no message here can pass: the accounting must balance. */
    struct data_budget budget = {0};
    data_begin(&d, limit, mode, &budget, (size_t)1 << 30);
    struct buf in = {0};
    size_t off = 0;
    uint32_t r = seed * 2654435761u + 1;
    while (off < n || (off == n && n == 0)) {
        size_t chunk = n - off;
        if (how == 1) {
            r = r * 1103515245u + 12345u;
            chunk = 1 + (r >> 16) % 64;
        } else if (how == 2)
            chunk = 1;
        if (chunk > n - off) chunk = n - off;
        append(&in, p + off, chunk);
        off += chunk;
        if (data_feed(&d, &in)) {
            o->finished = true;
            o->consumed = off - buf_len(&in);
            o->verdict = d.verdict;
            if (d.verdict == DATA_OK && buf_len(&d.content))
                append(&o->content, buf_head(&d.content), buf_len(&d.content));
            else if (buf_len(&d.content) != 0)
                fail("a refused message keeps its content", NULL, o);
            break;
        }
        if (n == 0) break;
    }
    if (!o->finished) o->verdict = DATA_OK; /* not final: not compared */
    buf_free(&in);
    if (budget.used != d.content.cap) fail("the budget does not match what the reader holds", NULL, o);
    data_end(&d);
    if (budget.used != 0) fail("data_end left a charge on the budget", NULL, o);
}

static bool same_content(const struct outcome *a, const struct outcome *b)
{
    size_t n = buf_len(&a->content);
    return n == buf_len(&b->content) &&
           (n == 0 || !memcmp(buf_head(&a->content), buf_head(&b->content), n));
}

static void compare(const struct outcome *want, const struct outcome *got, const char *what)
{
    if (want->finished != got->finished) fail(what, want, got);
    if (!want->finished) return;
    if (want->consumed != got->consumed) fail(what, want, got);
    if (want->verdict != got->verdict) fail(what, want, got);
    if (want->verdict == DATA_OK && !same_content(want, got)) fail(what, want, got);
}

/* Accepted content with bare CR/LF forbidden: CRLF-terminated lines only. */
static void check_lines(const struct outcome *o)
{
    size_t n = buf_len(&o->content);
    if (n == 0) return;
    const char *c = buf_head(&o->content);
    if (n && (n < 2 || c[n - 2] != '\r' || c[n - 1] != '\n'))
        fail("accepted content does not end with CRLF", NULL, o);
    for (size_t i = 0; i < n; i++) {
        if (c[i] == '\r' && (i + 1 == n || c[i + 1] != '\n'))
            fail("a bare CR in accepted content", NULL, o);
        if (c[i] == '\n' && (i == 0 || c[i - 1] != '\r'))
            fail("a bare LF in accepted content", NULL, o);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    cur_input = data;
    cur_size = size;
    enum bare_newline_mode mode = (enum bare_newline_mode)(data[0] & 3);
    if (mode > BARE_NEWLINE_KEEP) mode = BARE_NEWLINE_REJECT;
    size_t limit = limits[(data[0] >> 2) & 3];
    uint32_t seed = data[1];
    const uint8_t *p = data + 2;
    size_t n = size - 2;

    struct outcome want = {0}, whole = {0}, chunked = {0}, bytewise = {0};
    model(p, n, limit, mode, &want);
    read_message(p, n, limit, mode, seed, 0, &whole);
    compare(&want, &whole, "read all at once, the reader disagrees with the model");
    read_message(p, n, limit, mode, seed, 1, &chunked);
    compare(&whole, &chunked, "read in chunks, the reader disagrees with one read");
    read_message(p, n, limit, mode, seed, 2, &bytewise);
    compare(&whole, &bytewise, "read byte by byte, the reader disagrees with one read");
    if (whole.finished && whole.verdict == DATA_OK && mode != BARE_NEWLINE_KEEP)
        check_lines(&whole);

    buf_free(&want.content);
    buf_free(&whole.content);
    buf_free(&chunked.content);
    buf_free(&bytewise.content);
    return 0;
}
