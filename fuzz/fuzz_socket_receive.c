/* fuzz_socket_receive.c — the cosockets' receive patterns (netc_scan and
 * netc_read_size in src/net/client.c) against what a hostile peer sends,
 * split into reads at points the input chooses, as sock:receive and the
 * receiveuntil iterator drive them (scan after every read; a finished
 * receive consumes and the next one starts afresh).
 *
 * Input: byte 0 the pattern (line, until, count), byte 1 the limit n
 * (socket_line_max, or the byte count), byte 2 the delimiter's length (1-4)
 * and that many delimiter bytes, byte 3 how many chunk-length bytes follow,
 * those bytes, then the stream.
 *
 * Checked: the results equal a model that sees the whole stream at once
 * ("*l": up to LF, one CR before it stripped; until: up to the delimiter;
 * n: n bytes; a line or until-chunk over n is "too long", and so is an
 * unterminated rest longer than any line of length n could be), however the
 * stream is split; a receive never asks to read more than one chunk nor,
 * for a count, more than it still misses; the scan never reports done with
 * more than it holds. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "client.h"

static void fail(const char *what)
{
    fprintf(stderr, "\nfuzz_socket_receive: %s\n", what);
    abort();
}

enum outcome { O_DONE, O_TOO_LONG, O_END };

struct result {
    enum outcome o;
    size_t off, len; /* O_DONE: the data at stream[off, off+len) */
    size_t next;     /* where the next receive starts */
};

/* The model: the next receive from stream[pos..n) with everything there. */
static struct result model(const uint8_t *s, size_t n, size_t pos, const struct netc_want *w)
{
    struct result r = {O_END, pos, 0, n};
    const uint8_t *p = s + pos;
    size_t left = n - pos;
    if (w->kind == NETC_COUNT) {
        if (left >= w->n) r = (struct result){O_DONE, pos, w->n, pos + w->n};
        return r;
    }
    if (w->kind == NETC_LINE) {
        const uint8_t *lf = memchr(p, '\n', left);
        if (!lf) {
            if (left > w->n + 1) r.o = O_TOO_LONG;
            return r;
        }
        size_t at = (size_t)(lf - p), line = at > 0 && p[at - 1] == '\r' ? at - 1 : at;
        if (line > w->n) return (struct result){O_TOO_LONG, pos, 0, n};
        return (struct result){O_DONE, pos, line, pos + at + 1};
    }
    /* NETC_UNTIL */
    const uint8_t *m = left >= w->dlen ? memmem(p, left, w->delim, w->dlen) : NULL;
    if (!m) {
        if (left > w->n + w->dlen - 1) r.o = O_TOO_LONG;
        return r;
    }
    size_t at = (size_t)(m - p);
    if (at > w->n) return (struct result){O_TOO_LONG, pos, 0, n};
    return (struct result){O_DONE, pos, at, pos + at + w->dlen};
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4) return 0;
    struct netc_want proto = {0};
    proto.kind = data[0] % 3 == 0 ? NETC_LINE : data[0] % 3 == 1 ? NETC_UNTIL : NETC_COUNT;
    proto.n = data[1] % 64;
    /* receive(0) returns "" without looking (l_socket.c): a count of 0
     * would be done forever here. */
    if (proto.kind == NETC_COUNT && proto.n == 0) proto.n = 1;
    size_t dlen = 1 + data[2] % 4;
    if (size < 4 + dlen) return 0;
    char delim[4];
    memcpy(delim, data + 3, dlen);
    if (proto.kind == NETC_UNTIL) {
        proto.delim = delim;
        proto.dlen = dlen;
    }
    size_t at = 3 + dlen;
    size_t nchunks = data[at++] % 32;
    if (size < at + nchunks) return 0;
    const uint8_t *chunks = data + at;
    at += nchunks;
    const uint8_t *stream = data + at;
    size_t n = size - at;

    /* The reader: a buffer fed chunk by chunk, as reads would. */
    char *buf = malloc(n ? n : 1);
    if (!buf) abort();
    size_t head = 0, tail = 0; /* buf[head, tail) is buffered */
    size_t fed = 0, ci = 0;
    size_t pos = 0; /* the model's position in the stream */
    struct netc_want w = proto;
    for (;;) {
        size_t ret, consume;
        enum netc_scan_result r = netc_scan(buf + head, tail - head, &w, &ret, &consume);
        if (r == NETC_DONE) {
            if (ret > consume || consume > tail - head) fail("done with more than is buffered");
            struct result m = model(stream, n, pos, &proto);
            if (m.o != O_DONE || m.len != ret || memcmp(stream + m.off, buf + head, ret) != 0 ||
                m.next != pos + consume)
                fail("a receive differs from the model");
            head += consume;
            pos += consume;
            w = proto; /* the next receive */
            continue;
        }
        if (r == NETC_TOO_LONG) {
            if (model(stream, n, pos, &proto).o != O_TOO_LONG)
                fail("too long, but not in the model");
            break;
        }
        if (fed == n) {
            /* EOF: the model must not have had an answer either. */
            if (model(stream, n, pos, &proto).o != O_END)
                fail("more input wanted, the model had it");
            break;
        }
        size_t want = netc_read_size(&w, tail - head);
        if (want == 0 || want > NETC_READ_CHUNK) fail("read size out of range");
        if (w.kind == NETC_COUNT && tail - head < w.n && want > w.n - (tail - head))
            fail("a count reads past what it misses");
        size_t len = ci < nchunks ? 1 + chunks[ci++] % 16 : n - fed;
        if (len > want) len = want;
        if (len > n - fed) len = n - fed;
        memcpy(buf + tail, stream + fed, len);
        tail += len;
        fed += len;
    }
    free(buf);
    return 0;
}
