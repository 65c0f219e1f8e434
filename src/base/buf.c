/* buf.c — growable byte buffer. Compacts before growing so a long-lived
 * connection buffer stays at the size of its largest burst. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

/* Growth rule shared by buf_reserve and buf_capacity_for: compact first,
 * then double from 512 until n more bytes fit. */
size_t buf_capacity_for(const struct buf *b, size_t n)
{
    size_t len = b->end - b->start;
    if (b->cap - len >= n) return b->cap;
    size_t want = b->cap ? b->cap : 512;
    while (want - len < n) want *= 2;
    return want;
}

char *buf_reserve(struct buf *b, size_t n)
{
    if (b->cap - b->end >= n) return b->data + b->end;
    if (b->start > 0) {
        size_t len = b->end - b->start;
        memmove(b->data, b->data + b->start, len);
        b->start = 0;
        b->end = len;
        if (b->cap - b->end >= n) return b->data + b->end;
    }
    size_t want = buf_capacity_for(b, n);
    char *p = realloc(b->data, want);
    if (!p) return NULL;
    b->data = p;
    b->cap = want;
    return b->data + b->end;
}

bool buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0) return true;
    char *w = buf_reserve(b, n);
    if (!w) return false;
    memcpy(w, p, n);
    b->end += n;
    return true;
}

void buf_consume(struct buf *b, size_t n)
{
    b->start += n;
    if (b->start >= b->end) b->start = b->end = 0;
}

void buf_clear(struct buf *b) { b->start = b->end = 0; }

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->start = b->end = b->cap = 0;
}
