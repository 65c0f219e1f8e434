/* addr.c — the address argument of MAIL FROM:, RCPT TO: and VRFY, parsed
 * the way aiosmtpd 1.4.3's SMTP._getaddr does on CPython 3.11: through
 * email._header_value_parser's get_angle_addr (argument starts with '<'
 * after lstrip) or get_addr_spec (otherwise), answering with the token
 * tree's addr_spec and the unparsed rest.
 *
 * Owns: a faithful port of that parser, function for function, so that
 * the accepted set, the re-rendered address and the rest are the
 * reference's byte for byte. It must not allocate, do I/O, judge whether
 * an address is deliverable, or "fix" the reference's quirks: a quirk
 * that changes an address is part of the protocol we promise to match.
 *
 * The input is bytes; aiosmtpd sees the UTF-8/surrogateescape decoding of
 * the same bytes. Every syntactic character is ASCII, so scanning bytes is
 * scanning Python characters, except where Python asks str.isspace()
 * (lstrip() in get_fws and _getaddr, split() in Domain.domain): there a
 * valid UTF-8 sequence such as U+00A0 counts as whitespace and a stray
 * byte does not, so those places decode.
 *
 * Where we deliberately answer ADDR_MALFORMED although Python answers
 * something else (spec/c/addr_cases.py lists a case for each):
 *   - Python raises an exception other than HeaderParseError (IndexError
 *     for "a@", "<", "<@a:", a lone '"'; AttributeError for an unterminated
 *     domain literal such as "a@[1.2"; UnboundLocalError for "a@[ ").
 *     aiosmtpd turns those into "500 Error: (IndexError) ...", which this
 *     interface cannot express; "malformed" is the honest nearest answer.
 *   - RFC 2047 encoded words. Python decodes "=?utf-8?q?x?=@a" to "x@a"
 *     (any charset Python knows). An SMTP envelope has no encoded words
 *     and silently turning one mailbox name into another is exactly what
 *     a policy script must never see, so whenever Python would decode one
 *     that ends up in the address we refuse instead. We treat every
 *     syntactically valid encoded word as decodable; Python falls back to
 *     plain text when the charset cannot decode the bytes (e.g. odd-length
 *     UTF-16), and there we are stricter still.
 *   - An obsolete local part whose first word has quoted pairs is re-parsed
 *     by Python from its canonical text (str(local_part)); we rebuild that
 *     text in an ADDR_CANON_MAX-byte stack buffer and refuse beyond it.
 *     aiosmtpd's longest command line is far shorter.
 *   - Deeply nested comments: Python recurses once per '(' and would raise
 *     RecursionError near 1000 levels; a real command line (at most
 *     SMTP_LINE_MAX + extensions, ~550 bytes) cannot get there, and we
 *     count instead of recursing.
 * An empty addr-spec is ADDR_OK with addr_len 0 ('""' parses to ''), as in
 * Python; callers must treat it as aiosmtpd's `if not address`.
 *
 * The email parser changes between CPython releases; the expected results
 * in spec/c/addr_cases.inc name the version they were taken from. */
#include "addr.h"

#include <stdint.h>
#include <string.h>

/* Room for the canonical text of a local part's first word; see above.
 * SMTP_LINE_MAX (512) plus aiosmtpd's SIZE/SMTPUTF8 allowances is below. */
#define ADDR_CANON_MAX 1024

/* How a parse step ends: OK; HPE, Python's HeaderParseError, which some
 * callers catch to try another production; FATAL, anything Python does not
 * catch (or that we refuse), which ends the whole parse. */
enum { P_OK = 0, P_HPE = -1, P_FATAL = -2 };

/* The string being parsed: the argument, or for an obsolete local part the
 * canonical text of its first word followed by the rest of the argument
 * (Python re-parses str(local_part) + value). Two segments avoid copying
 * the rest. */
struct text {
    const unsigned char *a;
    size_t na;
    const unsigned char *b;
    size_t nb;
    size_t n;
};

static unsigned char at(const struct text *t, size_t p)
{
    return p < t->na ? t->a[p] : t->b[p - t->na];
}

/* Where rendered text goes. Bytes past cap are counted but not written, so
 * an overlong result is detected at the end and a rollback (len = mark)
 * after a failed alternative makes room again. */
struct sink {
    char *buf;
    size_t len;
    size_t cap;
    /* Domain.domain is ''.join(value.split()): drop str.isspace() chars. */
    int strip_space;
};

static void sink_byte(struct sink *s, unsigned char c)
{
    if (!s) return;
    if (s->len < s->cap) s->buf[s->len] = (char)c;
    if (s->len < SIZE_MAX) s->len++;
}

/* ---- character classes, as the module-level sets of the Python file ---- */

static int is_wsp(unsigned char c) /* WSP */
{
    return c == ' ' || c == '\t';
}

static int is_special(unsigned char c) /* SPECIALS: ()<>@,:;.\"[] */
{
    switch (c) {
    case '(':
    case ')':
    case '<':
    case '>':
    case '@':
    case ',':
    case ':':
    case ';':
    case '.':
    case '\\':
    case '"':
    case '[':
    case ']':
        return 1;
    default:
        return 0;
    }
}

static int is_cfws_leader(unsigned char c)
{
    return is_wsp(c) || c == '(';
}

static int is_atom_end(unsigned char c)
{
    return is_special(c) || is_wsp(c);
}

/* '.', '"' and '(' do not end phrases (obs-phrase); '\\' does, but the
 * local-part code tests it separately, as Python does. */
static int is_phrase_end(unsigned char c)
{
    return is_special(c) && c != '.' && c != '"' && c != '(';
}

static int is_dot_atom_end(unsigned char c)
{
    return is_atom_end(c) && c != '.';
}

static int is_hexdigit(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* ---- Python characters over UTF-8/surrogateescape bytes ---- */

/* Length (2..4) of a well-formed UTF-8 sequence at p, or 0: the sequences
 * CPython's strict decoder accepts (no overlongs, no surrogates, at most
 * U+10FFFF). Any other byte >= 0x80 is a lone surrogate in Python. */
static size_t utf8_len(const struct text *t, size_t p)
{
    unsigned char c = at(t, p);
    unsigned char lo = 0x80, hi = 0xbf;
    size_t need;

    if (c >= 0xc2 && c <= 0xdf)
        need = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (t->n - p < need) return 0;
    if (at(t, p + 1) < lo || at(t, p + 1) > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if (at(t, p + i) < 0x80 || at(t, p + i) > 0xbf) return 0;
    return need;
}

static size_t py_char_len(const struct text *t, size_t p)
{
    size_t l;

    if (at(t, p) < 0x80) return 1;
    l = utf8_len(t, p);
    return l ? l : 1;
}

/* Length of the character at p if Python's str.isspace() is true for it,
 * else 0. */
static size_t py_space_len(const struct text *t, size_t p)
{
    unsigned char c = at(t, p);
    size_t l;
    uint32_t cp;

    if (c < 0x80) return (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) ? 1 : 0;
    l = utf8_len(t, p);
    if (l == 2)
        cp = (uint32_t)(c & 0x1f) << 6 | (at(t, p + 1) & 0x3f);
    else if (l == 3)
        cp = (uint32_t)(c & 0x0f) << 12 | (uint32_t)(at(t, p + 1) & 0x3f) << 6 |
             (at(t, p + 2) & 0x3f);
    else
        return 0; /* no whitespace above U+FFFF */
    if (cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
        cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000)
        return l;
    return 0;
}

/* Copies the character [p, p+l) to s; with esc, prefixes a backslash to
 * the ASCII characters in esc (the re-quoting of str() on comments and
 * quoted strings). */
static void sink_char(struct sink *s, const struct text *t, size_t p, size_t l, const char *esc)
{
    if (!s) return;
    if (s->strip_space && py_space_len(t, p)) return;
    if (esc && l == 1 && at(t, p) != 0 && strchr(esc, at(t, p))) sink_byte(s, '\\');
    for (size_t i = 0; i < l; i++)
        sink_byte(s, at(t, p + i));
}

static void sink_span(struct sink *s, const struct text *t, size_t p, size_t end)
{
    while (p < end) {
        size_t l = py_char_len(t, p);
        sink_char(s, t, p, l, NULL);
        p += l;
    }
}

/* ---- the lexical layer ---- */

/* get_fws: value.lstrip(), so every str.isspace() character, not only the
 * space or tab that got us here. */
static size_t get_fws(const struct text *t, size_t p)
{
    size_t l;

    while (p < t->n && (l = py_space_len(t, p)) != 0)
        p += l;
    return p;
}

/* _get_ptext_to_endchars: up to the next space/tab (which is left in the
 * value) or an unescaped e1/e2. A backslash quotes the next character; one
 * that ends the fragment is dropped. Unescaped characters go to val as is
 * and to canon re-escaped with cesc. Python's UnboundLocalError on an empty
 * fragment is the caller's to detect. */
static size_t scan_ptext(const struct text *t, size_t p, unsigned char e1, unsigned char e2,
                         struct sink *val, struct sink *canon, const char *cesc)
{
    int escape = 0;

    while (p < t->n) {
        unsigned char c = at(t, p);
        size_t l;

        if (is_wsp(c)) break;
        l = py_char_len(t, p);
        if (c == '\\' && !escape) {
            escape = 1;
            p++;
            continue;
        }
        if (escape)
            escape = 0;
        else if (c == e1 || c == e2)
            break;
        sink_char(val, t, p, l, NULL);
        sink_char(canon, t, p, l, cesc);
        p += l;
    }
    return p;
}

/* get_comment, nested comments included. Python recurses; a depth count
 * does the same job without a stack that grows with the input. Its str()
 * closes every comment left open at the end of the input. */
static size_t get_comment(const struct text *t, size_t p, struct sink *canon)
{
    size_t depth = 1;

    sink_byte(canon, '(');
    p++;
    while (p < t->n) {
        unsigned char c = at(t, p);

        if (c == ')') {
            sink_byte(canon, ')');
            p++;
            if (--depth == 0) return p;
        } else if (is_wsp(c)) {
            size_t q = get_fws(t, p);
            sink_span(canon, t, p, q);
            p = q;
        } else if (c == '(') {
            sink_byte(canon, '(');
            depth++;
            p++;
        } else {
            p = scan_ptext(t, p, '(', ')', NULL, canon, "\\()");
        }
    }
    while (depth--)
        sink_byte(canon, ')');
    return p;
}

static size_t get_cfws(const struct text *t, size_t p, struct sink *canon)
{
    while (p < t->n && is_cfws_leader(at(t, p))) {
        if (is_wsp(at(t, p))) {
            size_t q = get_fws(t, p);
            sink_span(canon, t, p, q);
            p = q;
        } else {
            p = get_comment(t, p, canon);
        }
    }
    return p;
}

static size_t find_qeq(const struct text *t, size_t p) /* next "?=" at or after p */
{
    for (; p + 1 < t->n; p++)
        if (at(t, p) == '?' && at(t, p + 1) == '=') return p;
    return SIZE_MAX;
}

/* Would get_encoded_word() at p (which starts "=?") return a token rather
 * than raise? If so, *endp is where it leaves the value. Mirrors its
 * splitting on the first "?=", the "=XX" extension after it, and
 * _encoded_words.decode()'s checks: exactly four '?' in all, a q or b
 * encoding, and encoded text that encodes to ASCII with surrogateescape
 * (stray bytes do, real non-ASCII characters do not). Whether the charset
 * then decodes is not checked: we count it as decodable (see the top). */
static int ew_valid(const struct text *t, size_t p, size_t *endp)
{
    size_t s = p + 2, e, end, q, qs[2], nq = 0;

    q = find_qeq(t, s);
    if (q == SIZE_MAX) return 0;
    e = q;
    end = q + 2;
    for (size_t i = s; i < q; i++)
        if (at(t, i) == '?' && nq++ < 2) qs[nq - 1] = i;
    if (t->n - end > 1 && is_hexdigit(at(t, end)) && is_hexdigit(at(t, end + 1)) && nq < 2) {
        size_t q2 = find_qeq(t, end);

        /* tok + '?=' + rest is just the text up to the second "?=" (or to
         * the end, leaving Python an empty value). */
        e = q2 == SIZE_MAX ? t->n : q2;
        end = q2 == SIZE_MAX ? t->n : q2 + 2;
        nq = 0;
        for (size_t i = s; i < e; i++)
            if (at(t, i) == '?' && nq++ < 2) qs[nq - 1] = i;
    }
    if (nq != 2) return 0;
    if (qs[1] != qs[0] + 2) return 0;
    switch (at(t, qs[0] + 1)) {
    case 'q':
    case 'Q':
    case 'b':
    case 'B':
        break;
    default:
        return 0;
    }
    for (size_t i = qs[1] + 1; i < e;) {
        size_t l = py_char_len(t, i);
        if (l > 1) return 0;
        i += l;
    }
    *endp = end;
    return 1;
}

static int starts_ew(const struct text *t, size_t p)
{
    return t->n - p >= 2 && at(t, p) == '=' && at(t, p + 1) == '?';
}

/* ---- tokens ---- */

enum tok_kind { TK_NONE, TK_DOTATOM, TK_ATOM, TK_QUOTED, TK_EW };

struct tok {
    enum tok_kind kind;
    int lead, trail;       /* CFWS before / after the core */
    size_t core, core_end; /* the text, or the quoted string with its quotes */
    size_t end;
};

/* The atext run at p: [^ATOM_ENDS]+ */
static size_t atext_end(const struct text *t, size_t p)
{
    while (p < t->n && !is_atom_end(at(t, p)))
        p++;
    return p;
}

/* get_bare_quoted_string. val receives the value (quoted pairs undone,
 * whitespace kept), canon the str() (re-quoted). An encoded word inside is
 * decoded by Python; we stop (see the top). */
static int get_bqs(const struct text *t, size_t p, struct sink *val, struct sink *canon,
                   size_t *endp)
{
    if (p >= t->n || at(t, p) != '"') return P_HPE;
    sink_byte(canon, '"');
    p++;
    while (p < t->n && at(t, p) != '"') {
        size_t e;

        if (is_wsp(at(t, p))) {
            size_t q = get_fws(t, p);
            sink_span(val, t, p, q);
            sink_span(canon, t, p, q);
            p = q;
        } else if (starts_ew(t, p) && ew_valid(t, p, &e)) {
            return P_FATAL;
        } else {
            p = scan_ptext(t, p, '"', '"', val, canon, "\\\"");
        }
    }
    sink_byte(canon, '"');
    *endp = p < t->n ? p + 1 : p; /* unterminated: a defect, not an error */
    return P_OK;
}

static int get_quoted_string(const struct text *t, size_t p, struct tok *tk, struct sink *canon)
{
    size_t e;
    int r;

    tk->kind = TK_QUOTED;
    tk->lead = tk->trail = 0;
    if (p < t->n && is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, canon);
        tk->lead = 1;
    }
    r = get_bqs(t, p, NULL, canon, &e);
    if (r != P_OK) return r;
    tk->core = p;
    tk->core_end = e;
    p = e;
    if (p < t->n && is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, canon);
        tk->trail = 1;
    }
    tk->end = p;
    return P_OK;
}

static int get_atom(const struct text *t, size_t p, struct tok *tk, struct sink *canon)
{
    size_t e;

    tk->kind = TK_ATOM;
    tk->lead = tk->trail = 0;
    if (p < t->n && is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, canon);
        tk->lead = 1;
    }
    if (p < t->n && is_atom_end(at(t, p))) return P_HPE;
    if (starts_ew(t, p) && ew_valid(t, p, &e)) {
        tk->kind = TK_EW;
    } else {
        e = atext_end(t, p);
        if (e == p) return P_HPE; /* get_atext: nothing matched */
        sink_span(canon, t, p, e);
    }
    tk->core = p;
    tk->core_end = e;
    p = e;
    if (p < t->n && is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, canon);
        tk->trail = 1;
    }
    tk->end = p;
    return P_OK;
}

/* get_dot_atom_text: 1*atext *("." 1*atext), never ending in a dot. */
static int get_dot_atom_text(const struct text *t, size_t p, size_t *endp)
{
    int last_dot = 0;

    if (p >= t->n || is_atom_end(at(t, p))) return P_HPE;
    while (p < t->n && !is_atom_end(at(t, p))) {
        p = atext_end(t, p);
        last_dot = 0;
        if (p < t->n && at(t, p) == '.') {
            p++;
            last_dot = 1;
        }
    }
    if (last_dot) return P_HPE;
    *endp = p;
    return P_OK;
}

/* get_dot_atom; p < n, as in every Python caller (it reads value[0]). */
static int get_dot_atom(const struct text *t, size_t p, struct tok *tk, struct sink *canon)
{
    size_t e;

    tk->kind = TK_DOTATOM;
    tk->lead = tk->trail = 0;
    if (is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, canon);
        tk->lead = 1;
    }
    if (starts_ew(t, p) && ew_valid(t, p, &e)) {
        tk->kind = TK_EW;
    } else {
        int r = get_dot_atom_text(t, p, &e);
        if (r != P_OK) return r;
        sink_span(canon, t, p, e);
    }
    tk->core = p;
    tk->core_end = e;
    p = e;
    if (p < t->n && is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, canon);
        tk->trail = 1;
    }
    tk->end = p;
    return P_OK;
}

/* get_word: atom or quoted string, either taking the leading CFWS. */
static int get_word(const struct text *t, size_t p, struct tok *tk)
{
    int lead = 0, r;

    if (p < t->n && is_cfws_leader(at(t, p))) {
        p = get_cfws(t, p, NULL);
        lead = 1;
    }
    if (p >= t->n) return P_HPE;
    if (at(t, p) == '"')
        r = get_quoted_string(t, p, tk, NULL);
    else if (is_special(at(t, p)))
        return P_HPE;
    else
        r = get_atom(t, p, tk, NULL);
    if (r == P_OK) tk->lead |= lead;
    return r;
}

/* A word's value without its CFWS: atext as is, a quoted string unquoted. */
static void render_core(const struct text *t, const struct tok *tk, struct sink *out)
{
    size_t e;

    if (tk->kind == TK_QUOTED)
        (void)get_bqs(t, tk->core, out, NULL, &e);
    else
        sink_span(out, t, tk->core, tk->core_end);
}

/* ---- local part ---- */

/* get_obs_local_part, rendering LocalPart.local_part as it goes: the words'
 * values joined, where a word's surrounding CFWS (value ' ') survives
 * except next to a dot or at either end. */
static int get_obs_local_part(const struct text *t, size_t p, struct sink *out, size_t *endp)
{
    enum { AFTER_DOT, AFTER_OTHER } prev = AFTER_DOT; /* the start counts as a dot */
    int pending_space = 0;

    while (p < t->n && (at(t, p) == '\\' || !is_phrase_end(at(t, p)))) {
        unsigned char c = at(t, p);
        struct tok w;
        int r;

        if (c == '.') {
            pending_space = 0;
            sink_byte(out, '.');
            prev = AFTER_DOT;
            p++;
            continue;
        }
        if (c == '\\') { /* a "misplaced special": kept, with a defect */
            if (pending_space) sink_byte(out, ' ');
            pending_space = 0;
            sink_byte(out, '\\');
            prev = AFTER_OTHER;
            p++;
            continue;
        }
        r = get_word(t, p, &w);
        if (r == P_HPE) {
            if (!is_cfws_leader(c)) return P_HPE;
            p = get_cfws(t, p, NULL); /* bare CFWS: no value of its own */
            continue;
        }
        if (r != P_OK) return r;
        if (w.kind == TK_EW) return P_FATAL;
        if (pending_space || (w.lead && prev != AFTER_DOT)) sink_byte(out, ' ');
        render_core(t, &w, out);
        pending_space = w.trail;
        prev = AFTER_OTHER;
        p = w.end;
    }
    *endp = p;
    return P_OK;
}

/* get_local_part on the argument t (one segment: only the argument itself
 * is ever parsed for an addr-spec), rendering
 * LocalPart.local_part (unquoted) to out. */
static int get_local_part(const struct text *t, size_t p, struct sink *out, size_t *endp)
{
    size_t start = p, q;
    struct tok tk;
    int r;

    if (p >= t->n) return P_FATAL; /* IndexError: value[0] */
    if (is_cfws_leader(at(t, p))) p = get_cfws(t, p, NULL);
    if (p >= t->n) return P_HPE;
    r = get_dot_atom(t, p, &tk, NULL);
    if (r == P_HPE) r = get_word(t, p, &tk);
    if (r == P_HPE) {
        if (at(t, p) != '\\' && is_phrase_end(at(t, p))) return P_HPE;
        tk.kind = TK_NONE;
        tk.end = p;
    } else if (r != P_OK)
        return r;
    q = tk.end;

    if (tk.kind == TK_EW) return P_FATAL; /* decoded into the local part, or re-parsed below */
    if (!(q < t->n && (at(t, q) == '\\' || !is_phrase_end(at(t, q))))) {
        /* A lone '"' ending the input is a bare quoted string with no
         * tokens at all; LocalPart.local_part reads its [0]: IndexError. */
        if (tk.kind == TK_QUOTED && tk.core_end == tk.core + 1 && tk.core_end == t->n)
            return P_FATAL;
        render_core(t, &tk, out);
        *endp = q;
        return P_OK;
    }

    /* Python re-parses str(local_part) + value as an obs-local-part. The
     * str() differs from the input only where quoted pairs were undone,
     * so without a backslash the input itself will do. */
    if (!memchr(t->a + start, '\\', q - start)) return get_obs_local_part(t, start, out, endp);
    {
        char buf[ADDR_CANON_MAX];
        struct sink canon = {buf, 0, sizeof buf, 0};
        struct text view;
        size_t cp = start, e;

        if (is_cfws_leader(at(t, cp))) cp = get_cfws(t, cp, &canon);
        if (tk.kind == TK_DOTATOM || tk.kind == TK_ATOM)
            sink_span(&canon, t, tk.core, tk.core_end);
        else if (tk.kind == TK_QUOTED)
            (void)get_bqs(t, tk.core, NULL, &canon, &e);
        if (tk.kind != TK_NONE && tk.core_end < q) (void)get_cfws(t, tk.core_end, &canon);
        if (canon.len > canon.cap) return P_FATAL;
        view.a = (const unsigned char *)buf;
        view.na = canon.len;
        view.b = t->a + q;
        view.nb = t->n - q;
        view.n = view.na + view.nb;
        r = get_obs_local_part(&view, 0, out, &e);
        if (r != P_OK) return r;
        /* The rest must lie in the argument; only an encoded word could
         * leave it inside the canonical text, and those stopped already. */
        if (e < view.na) return P_FATAL;
        *endp = q + (e - view.na);
        return P_OK;
    }
}

/* ---- domain ---- */

struct dom_flags {
    int ew;       /* an encoded word in the domain: we refuse it */
    int dl_crash; /* an unterminated domain literal: AttributeError later */
};

/* get_domain_literal, after the leading CFWS (taken by get_domain). */
static int get_domain_literal(const struct text *t, size_t p, struct sink *out,
                              struct dom_flags *fl, size_t *endp)
{
    p++; /* '[' */
    if (p >= t->n) goto early_end;
    sink_byte(out, '[');
    if (is_wsp(at(t, p))) p = get_fws(t, p);
    if (p >= t->n) return P_FATAL; /* UnboundLocalError in _get_ptext_to_endchars('') */
    p = scan_ptext(t, p, '[', ']', out, NULL, NULL);
    if (p >= t->n) goto early_end;
    if (is_wsp(at(t, p))) p = get_fws(t, p);
    if (p >= t->n) goto early_end;
    if (at(t, p) != ']') return P_HPE;
    sink_byte(out, ']');
    p++;
    if (p < t->n && is_cfws_leader(at(t, p))) p = get_cfws(t, p, NULL);
    *endp = p;
    return P_OK;
early_end:
    /* _check_for_early_dl_end appends the defect object itself to the
     * token list; reading the domain's value later raises AttributeError,
     * but only if this domain is the address's (not a route's). */
    fl->dl_crash = 1;
    *endp = p;
    return P_OK;
}

/* get_domain, rendering Domain.domain (whitespace removed) to out. */
static int get_domain(const struct text *t, size_t p, struct sink *out, struct dom_flags *fl,
                      size_t *endp)
{
    struct tok tk;
    int r;

    if (p >= t->n) return P_FATAL; /* IndexError: value[0] */
    if (is_cfws_leader(at(t, p))) p = get_cfws(t, p, NULL);
    if (p >= t->n) return P_HPE;
    if (at(t, p) == '[') return get_domain_literal(t, p, out, fl, endp);
    r = get_dot_atom(t, p, &tk, NULL);
    if (r == P_HPE) r = get_atom(t, p, &tk, NULL);
    if (r != P_OK) return r;
    p = tk.end;
    if (p < t->n && at(t, p) == '@') return P_HPE; /* "Invalid Domain" */
    if (tk.kind == TK_EW)
        fl->ew = 1;
    else
        render_core(t, &tk, out);
    while (p < t->n && at(t, p) == '.') { /* obs-domain */
        sink_byte(out, '.');
        r = get_atom(t, p + 1, &tk, NULL);
        if (r != P_OK) return r;
        if (tk.kind == TK_EW)
            fl->ew = 1;
        else
            render_core(t, &tk, out);
        p = tk.end;
    }
    *endp = p;
    return P_OK;
}

/* ---- addr-spec, route, angle-addr ---- */

/* get_addr_spec, rendering AddrSpec.addr_spec to out, or for an angle-addr
 * AngleAddr.addr_spec (which writes an empty local part as ""). On failure
 * out is rolled back. */
static int get_addr_spec(const struct text *t, size_t p, struct sink *out, int in_angle,
                         struct dom_flags *fl, size_t *endp)
{
    size_t mark = out->len, lp_len, extra = 0;
    int quote = 0, r;

    out->strip_space = 0;
    r = get_local_part(t, p, out, &p);
    if (r != P_OK) {
        out->len = mark;
        return r;
    }
    lp_len = out->len - mark;
    if (lp_len == 0 && in_angle) {
        sink_byte(out, '"');
        sink_byte(out, '"');
    } else if (out->len <= out->cap) {
        /* quote_string() when a character of DOT_ATOM_ENDS is present. */
        for (size_t i = mark; i < out->len; i++) {
            unsigned char c = (unsigned char)out->buf[i];
            if (is_dot_atom_end(c)) quote = 1;
            if (c == '\\' || c == '"') extra++;
        }
        if (quote) {
            size_t newlen = out->len + extra + 2;
            if (newlen <= out->cap) {
                size_t w = newlen;
                out->buf[--w] = '"';
                for (size_t i = out->len; i-- > mark;) {
                    char c = out->buf[i];
                    out->buf[--w] = c;
                    if (c == '\\' || c == '"') out->buf[--w] = '\\';
                }
                out->buf[--w] = '"';
            }
            out->len = newlen;
        }
    }
    if (p < t->n && at(t, p) == '@') {
        /* Flags of a domain that then fails must not outlive it: the
         * angle-addr may go on to a route and a second addr-spec. */
        struct dom_flags dfl = {0, 0};

        sink_byte(out, '@');
        out->strip_space = 1;
        r = get_domain(t, p + 1, out, &dfl, &p);
        out->strip_space = 0;
        if (r != P_OK) {
            out->len = mark;
            return r;
        }
        *fl = dfl;
    }
    *endp = p;
    return P_OK;
}

static int get_obs_route(const struct text *t, size_t p, size_t *endp)
{
    struct dom_flags ignored = {0, 0};
    int r;

    while (p < t->n && (at(t, p) == ',' || is_cfws_leader(at(t, p))))
        p = at(t, p) == ',' ? p + 1 : get_cfws(t, p, NULL);
    if (p >= t->n || at(t, p) != '@') return P_HPE;
    /* The route's domains are parsed, then never looked at again. */
    r = get_domain(t, p + 1, NULL, &ignored, &p);
    if (r != P_OK) return r;
    while (p < t->n && at(t, p) == ',') {
        p++;
        if (p >= t->n) break;
        if (is_cfws_leader(at(t, p))) p = get_cfws(t, p, NULL);
        if (p >= t->n) return P_FATAL; /* IndexError: value[0] */
        if (at(t, p) == '@') {
            r = get_domain(t, p + 1, NULL, &ignored, &p);
            if (r != P_OK) return r;
        }
    }
    if (p >= t->n || at(t, p) != ':') return P_HPE;
    *endp = p + 1;
    return P_OK;
}

static int get_angle_addr(const struct text *t, size_t p, struct sink *out, struct dom_flags *fl,
                          size_t *endp)
{
    int r;

    if (is_cfws_leader(at(t, p))) p = get_cfws(t, p, NULL);
    if (p >= t->n || at(t, p) != '<') return P_HPE;
    p++;
    if (p >= t->n) return P_FATAL; /* IndexError: value[0] */
    if (at(t, p) == '>') {
        /* The null path; nothing after it is consumed, not even CFWS. */
        sink_byte(out, '<');
        sink_byte(out, '>');
        *endp = p + 1;
        return P_OK;
    }
    r = get_addr_spec(t, p, out, 1, fl, &p);
    if (r == P_HPE) {
        r = get_obs_route(t, p, &p);
        if (r != P_OK) return r;
        r = get_addr_spec(t, p, out, 1, fl, &p);
    }
    if (r != P_OK) return r;
    if (p < t->n && at(t, p) == '>') p++; /* a missing '>' is only a defect */
    if (p < t->n && is_cfws_leader(at(t, p))) p = get_cfws(t, p, NULL);
    *endp = p;
    return P_OK;
}

enum addr_status addr_parse(const char *arg, size_t len, struct addr_result *out, size_t addr_cap)
{
    struct text t = {(const unsigned char *)arg, len, NULL, 0, len};
    struct sink s = {out->addr, 0, addr_cap, 0};
    struct dom_flags fl = {0, 0};
    size_t p = 0, end = 0;
    int r;

    out->addr_len = 0;
    out->rest = NULL;
    out->rest_len = 0;
    if (addr_cap > 0) out->addr[0] = '\0';
    if (len == 0) {
        out->rest = arg;
        return ADDR_EMPTY;
    }
    while (p < len && py_space_len(&t, p))
        p += py_space_len(&t, p);
    if (p < len && arg[p] == '<')
        r = get_angle_addr(&t, 0, &s, &fl, &end);
    else
        r = get_addr_spec(&t, 0, &s, 0, &fl, &end);
    if (r != P_OK || fl.ew || fl.dl_crash || s.len >= addr_cap) {
        if (addr_cap > 0) out->addr[0] = '\0';
        return ADDR_MALFORMED;
    }
    out->addr[s.len] = '\0';
    out->addr_len = s.len;
    out->rest = arg + end;
    out->rest_len = len - end;
    return ADDR_OK;
}
