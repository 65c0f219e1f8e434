/* data.c — the DATA reader. Mirrors aiosmtpd's smtp_DATA loop (lines end
 * only at CRLF; a line longer than 1001 octets with its CRLF, or a message
 * over the size limit, is read to the end and then refused) and adds the
 * bare CR/LF check that stops SMTP smuggling. Must not send replies: the
 * session turns the verdict into one. */
#include "data.h"

#include <stdint.h>
#include <string.h>

#include "smtp_limits.h"

void data_begin(struct data_reader *d, size_t limit, enum bare_newline_mode mode,
                struct data_budget *budget, size_t memory_limit)
{
    buf_clear(&d->content);
    d->num_bytes = 0;
    d->limit = limit;
    d->line_len = 0;
    d->in_line = false;
    d->verdict = DATA_OK;
    d->bare_mode = mode;
    d->saw_bare_newline = false;
    d->discarding = false;
    d->budget = budget;
    d->memory_limit = memory_limit;
    d->charged = 0;
    d->out_of_memory = false;
}

/* Frees the content and gives its charge back to the budget. */
static void data_release(struct data_reader *d)
{
    buf_free(&d->content);
    if (d->budget) d->budget->used -= d->charged;
    d->charged = 0;
}

void data_end(struct data_reader *d) { data_release(d); }

static void data_fail(struct data_reader *d, enum data_verdict v)
{
    d->verdict = v;
    data_release(d); /* don't hold memory for a message we refuse */
}

/* Makes room for n more content bytes, charging the growth to the budget
 * before it is allocated. False when that would pass data_memory_limit (or
 * memory ran out): the message is then read to its end and discarded. */
static bool data_reserve(struct data_reader *d, size_t n)
{
    size_t cap = buf_capacity_for(&d->content, n);
    if (cap <= d->charged) return true;
    size_t more = cap - d->charged;
    if (d->budget && d->memory_limit && d->budget->used + more > d->memory_limit) return false;
    if (!buf_reserve(&d->content, n)) return false;
    if (d->budget) d->budget->used += d->content.cap - d->charged;
    d->charged = d->content.cap;
    return true;
}

/* Appends the text of one line piece, handling bare CR/LF per the mode.
 * `text` excludes the terminating CRLF. */
static void data_append_text(struct data_reader *d, const char *text, size_t n)
{
    const char *cr = memchr(text, '\r', n), *lf = memchr(text, '\n', n);
    if (!cr && !lf) {
        if (!buf_append(&d->content, text, n)) data_fail(d, DATA_TOO_MUCH);
        return;
    }
    d->saw_bare_newline = true;
    if (d->bare_mode != BARE_NEWLINE_NORMALIZE) {
        if (!buf_append(&d->content, text, n)) data_fail(d, DATA_TOO_MUCH);
        return;
    }
    /* normalize: every bare CR, bare LF, or CR LF pair inside the line
     * (which can only be a CR at the end of one read and LF at the start of
     * the next — we never split those) becomes CRLF. */
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        bool ok;
        if (c == '\r' || c == '\n') ok = buf_append(&d->content, "\r\n", 2);
        else ok = buf_append(&d->content, &c, 1);
        if (!ok) {
            data_fail(d, DATA_TOO_MUCH);
            return;
        }
    }
}

/* One piece of a line: the whole line with its CRLF (complete) or a part of
 * a line still going on. */
static void data_segment(struct data_reader *d, const char *p, size_t n, bool complete)
{
    bool first = d->line_len == 0;
    d->num_bytes += n;
    d->line_len += n;
    if (d->verdict != DATA_OK) return;
    /* The verdict is given when a line completes, as aiosmtpd gives it for a
     * whole line (size limit first, then line length), so it never depends
     * on how the client's bytes were cut into reads (fuzz:
     * data-verdict-depends-on-split). Past either limit nothing more is kept. */
    bool over_size = d->limit && d->num_bytes > d->limit;
    bool over_line = d->line_len > DATA_LINE_MAX;
    if (over_size || over_line) {
        data_release(d);
        d->discarding = true;
        if (complete) d->verdict = over_size ? DATA_TOO_MUCH : DATA_TOO_LONG;
        return;
    }
    if (d->discarding) return;
    /* RFC 5321 4.5.2: a leading dot is transparency, drop it. */
    if (first && n > 0 && p[0] == '.') {
        p++;
        n--;
    }
    size_t text_len = complete ? n - 2 : n;
    /* Normalizing can turn every byte into CRLF: reserve for the worst. */
    size_t need = (d->bare_mode == BARE_NEWLINE_NORMALIZE ? 2 * text_len : text_len) + 2;
    if (!data_reserve(d, need)) {
        data_release(d);
        d->out_of_memory = true;
        d->discarding = true;
        return;
    }
    data_append_text(d, p, text_len);
    if (complete && d->verdict == DATA_OK && !buf_append(&d->content, "\r\n", 2))
        data_fail(d, DATA_TOO_MUCH);
}

bool data_feed(struct data_reader *d, struct buf *in)
{
    while (buf_len(in) > 0) {
        const char *p = buf_head(in);
        size_t n = buf_len(in);
        if (!d->in_line) {
            /* The end marker is a whole line ".\r\n"; wait until we can tell. */
            if (n < 3 && memcmp(p, ".\r\n", n) == 0) return false;
            if (n >= 3 && memcmp(p, ".\r\n", 3) == 0) {
                buf_consume(in, 3);
                if (d->verdict == DATA_OK && d->saw_bare_newline &&
                    d->bare_mode == BARE_NEWLINE_REJECT) {
                    d->verdict = DATA_BARE_NEWLINE;
                    data_release(d);
                }
                /* The size and line limits (and a bare newline) win, as
                 * permanent errors; memory is a temporary one. */
                if (d->verdict == DATA_OK && d->out_of_memory) d->verdict = DATA_NO_MEMORY;
                return true;
            }
        }
        /* Find CRLF by its LF (memchr is much cheaper than memmem here). */
        const char *crlf = NULL;
        for (const char *lf = memchr(p + 1, '\n', n - 1); lf;
             lf = memchr(lf + 1, '\n', (size_t)(p + n - lf - 1))) {
            if (lf[-1] == '\r') {
                crlf = lf - 1;
                break;
            }
        }
        if (crlf) {
            size_t len = (size_t)(crlf - p) + 2;
            data_segment(d, p, len, true);
            buf_consume(in, len);
            d->in_line = false;
            d->line_len = 0;
            continue;
        }
        /* No CRLF yet: take the bytes, but keep a trailing CR, which may be
         * the first half of the line's CRLF. */
        size_t take = p[n - 1] == '\r' ? n - 1 : n;
        if (take == 0) return false;
        data_segment(d, p, take, false);
        buf_consume(in, take);
        d->in_line = true;
        return false;
    }
    return false;
}
