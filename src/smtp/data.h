/* data.h — reading the message text after "354": CRLF framing, the 1001
 * octet line limit, dot-unstuffing, the size limit, and bare CR/LF
 * detection. Only CRLF.CRLF ends a message (a bare LF or CR never frames a
 * line), so SMTP smuggling cannot split one message into two. Pure: bytes
 * in, content out; no sockets, no replies. */
#ifndef LUASMTPD_DATA_H
#define LUASMTPD_DATA_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "options.h"

enum data_verdict {
    DATA_OK,
    DATA_TOO_LONG,  /* "500 Line too long (see RFC5321 4.5.3.1.6)" */
    DATA_TOO_MUCH,  /* "552 Error: Too much mail data" */
    DATA_BARE_NEWLINE, /* "550 5.5.2 Error: bare CR or LF in message data" */
    DATA_NO_MEMORY, /* "452 4.3.1 Error: insufficient system storage" */
};

/* What all the readers of one process may hold (data_memory_limit): each
 * reader charges its buffer's capacity to `used` and releases it when the
 * content is freed. One per process, owned by the server. */
struct data_budget {
    size_t used;
};

struct data_reader {
    struct buf content;   /* the unstuffed message, CRLF line ends */
    size_t num_bytes;     /* octets received, as aiosmtpd counts them */
    size_t limit;         /* data_size_limit, 0 = none */
    size_t line_len;      /* octets of the current line so far */
    bool in_line;         /* inside a line continued across reads */
    enum data_verdict verdict;
    enum bare_newline_mode bare_mode;
    bool saw_bare_newline;
    bool discarding;      /* past a limit: the verdict comes when the line ends */
    struct data_budget *budget; /* NULL: no process-wide limit */
    size_t memory_limit;  /* data_memory_limit in bytes, 0 = none */
    size_t charged;       /* what this reader holds of budget->used */
    bool out_of_memory;   /* would have passed memory_limit: read to the end, then 452 */
};

/* Starts a message. budget (may be NULL) and memory_limit bound what all
 * readers sharing the budget hold together. */
void data_begin(struct data_reader *d, size_t limit, enum bare_newline_mode mode,
                struct data_budget *budget, size_t memory_limit);

/* Consumes bytes from in. Returns true when the final ".\r\n" was consumed
 * (the verdict is then final), false when it needs more input. */
bool data_feed(struct data_reader *d, struct buf *in);

/* Frees the content buffer and releases its charge on the budget. */
void data_end(struct data_reader *d);

#endif
