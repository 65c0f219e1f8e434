/* buf.h — a growable byte buffer with a read offset, used for connection
 * input/output and message content. Owns its memory; never shrinks below
 * what it holds. */
#ifndef LUASMTPD_BUF_H
#define LUASMTPD_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data;
    size_t start; /* first unread byte */
    size_t end;   /* one past the last byte */
    size_t cap;
};

static inline size_t buf_len(const struct buf *b) { return b->end - b->start; }
/* NULL for a buffer that holds no memory (no arithmetic on NULL). */
static inline char *buf_head(const struct buf *b) { return b->data ? b->data + b->start : NULL; }

/* Appends n bytes; returns false (buffer unchanged) if memory runs out. */
bool buf_append(struct buf *b, const void *p, size_t n);
/* Makes room for at least n more bytes at the end; returns the write
 * pointer or NULL. Commit what was written with buf_commit(). */
char *buf_reserve(struct buf *b, size_t n);
/* The capacity buf_reserve(b, n) would leave: lets a caller charge memory
 * against a budget before it is allocated. */
size_t buf_capacity_for(const struct buf *b, size_t n);
static inline void buf_commit(struct buf *b, size_t n) { b->end += n; }
/* Drops n bytes from the front. */
void buf_consume(struct buf *b, size_t n);
void buf_clear(struct buf *b);
/* Releases the memory; the buffer is empty and reusable afterwards. */
void buf_free(struct buf *b);

#endif
