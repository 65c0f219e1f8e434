/* proxy.c — the PROXY protocol header parser declared in proxy.h.
 *
 * Owns: recognising v1 and v2, every accept/reject decision, the address
 * text, the TLV walk and CRC32C check. It must not read sockets, keep state
 * between calls, allocate, or decide policy (that is handle_PROXY's).
 *
 * The reference is aiosmtpd 1.4.3's proxy_protocol.py; its error strings
 * are reused where the decision is the same, so logs read alike. Where it
 * accepts what proxy-protocol.txt forbids, we follow the spec (each case
 * is in spec/c/proxy_cases.py's DEVIATIONS):
 *   - v1 protocol must be exactly "TCP4" or "TCP6" (aiosmtpd takes anything
 *     starting with "TCP" and ending in '4' or '6', e.g. "TCPX4").
 *   - v1 ports are digits only: aiosmtpd passes the field to int(), which
 *     also takes trailing whitespace ("25\t", "25\r") and underscores
 *     ("1_000").
 *   - v2 LOCAL ignores the family's address block, as 2.2 requires
 *     ("discard the protocol block including the family"); aiosmtpd parses
 *     it and rejects a LOCAL header shorter than its family's addresses.
 *     Without addresses (LOCAL, UNSPEC) the bytes after the fixed 16 are
 *     decoded as TLVs only if they are well formed, as aiosmtpd's lazy
 *     ProxyData.tlv does; a CRC32C found there is still verified.
 *   - v2 with addresses: the bytes after them must be well-formed TLVs, an
 *     SSL TLV at least 5 bytes with well-formed sub-TLVs, a CRC32C TLV
 *     exactly 4 bytes and matching (2.2.3, which aiosmtpd never checks),
 *     a UNIQUE_ID at most 128 bytes (2.2.5). aiosmtpd accepts any bytes
 *     there and leaves ProxyData.tlv None when they do not parse.
 * And where we are stricter for our own reasons:
 *   - a v2 header longer than PROXY_V2_MAX, or with more than PROXY_TLV_MAX
 *     TLVs, is INVALID (aiosmtpd buffers up to 64 KiB);
 *   - a v1 line is INVALID as soon as 107 bytes arrive without its LF
 *     (aiosmtpd reads on to its stream limit, then fails the same way);
 *   - a prefix that already matches neither signature is INVALID at once
 *     (aiosmtpd first waits for 5 bytes);
 *   - a short header (connection closed early) is never an answer here:
 *     the caller sees NEED_MORE and its timeout or EOF ends the session.
 * UNIX paths are trimmed of their NUL padding (aiosmtpd hands over all 108
 * bytes). */
#include "proxy.h"

#include <arpa/inet.h>
#include <string.h>

/* 2.1 */
static const char V1_SIG[] = "PROXY";
#define V1_SIG_LEN 5
/* 2.2 */
static const uint8_t V2_SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
#define V2_SIG_LEN 12
/* 2.2: the bytes after the signature: version << 4 | command, family << 4
 * | protocol, then the big-endian length of what follows the 16. */
#define V2_VER_CMD 12
#define V2_FAM_PROTO 13
#define V2_LEN 14
#define V2_VERSION 2
/* 2.2: address block sizes by family. */
#define V2_ADDR_INET 12
#define V2_ADDR_INET6 36
#define V2_ADDR_UNIX (2 * PROXY_UNIX_PATH_MAX)
/* 2.2: a TLV is type, 16-bit length, value. */
#define TLV_HDR 3
/* 2.2.6: struct pp2_tlv_ssl { uint8_t client; uint32_t verify; sub-TLVs }. */
#define TLV_SSL_FIXED 5
/* 2.2.3 */
#define TLV_CRC32C_LEN 4
/* The longest IPv6 text inet_pton can accept:
 * "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" (INET6_ADDRSTRLEN - 1). */
#define V1_ADDR_TEXT_MAX 45

static enum proxy_status invalid(struct proxy_info *out, const char *why)
{
    out->error = why;
    return PROXY_INVALID;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* ---- v1 ---------------------------------------------------------------- */

/* Python's bytes.split(b" "), one field at a time: every space ends a
 * field, so two spaces make an empty one. */
struct fields {
    const uint8_t *p, *end;
    bool done;
};

static bool field_next(struct fields *f, const uint8_t **s, size_t *n)
{
    if (f->done) return false;
    const uint8_t *sp = memchr(f->p, ' ', (size_t)(f->end - f->p));
    const uint8_t *e = sp ? sp : f->end;
    *s = f->p;
    *n = (size_t)(e - f->p);
    if (sp)
        f->p = sp + 1;
    else
        f->done = true;
    return true;
}

/* aiosmtpd: the field must match [0-9a-fA-F.:]+ and then ip_address();
 * inet_pton accepts exactly the canonical forms Python's ipaddress does
 * (no leading zeros in IPv4 octets, at most 4 hex digits a group, one
 * "::" standing for at least one group). Returns AF_INET, AF_INET6 or 0. */
static int v1_addr(const uint8_t *s, size_t n, uint8_t bin[16])
{
    char text[V1_ADDR_TEXT_MAX + 1];

    if (n == 0 || n > V1_ADDR_TEXT_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
              c == '.' || c == ':'))
            return 0;
    }
    memcpy(text, s, n);
    text[n] = '\0';
    if (inet_pton(AF_INET, text, bin) == 1) return AF_INET;
    if (inet_pton(AF_INET6, text, bin) == 1) return AF_INET6;
    return 0;
}

/* "0" or [1-9][0-9]*; *value is capped above 65535 so the caller's range
 * check reports what aiosmtpd reports ("out of bounds", not "malformed")
 * for a long digit string. */
static bool v1_port(const uint8_t *s, size_t n, long *value)
{
    long v = 0;

    if (n == 0 || (s[0] == '0' && n > 1)) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        if (v <= 65535) v = v * 10 + (s[i] - '0');
    }
    *value = v;
    return true;
}

static bool field_is(const uint8_t *s, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

static void set_text_addr(int af, const uint8_t *bin, char *text, size_t *len)
{
    /* Both buffers are larger than INET6_ADDRSTRLEN; inet_ntop cannot fail
     * for AF_INET/AF_INET6 with room enough. */
    inet_ntop(af, bin, text, PROXY_UNIX_PATH_MAX + 1);
    *len = strlen(text);
}

static enum proxy_status v1_parse(const uint8_t *buf, size_t len, struct proxy_info *out)
{
    size_t lim = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    const uint8_t *lf = memchr(buf, '\n', lim);
    const uint8_t *s;
    size_t n;
    uint8_t src[16], dst[16];
    int src_af, dst_af;
    long sport, dport;

    out->version = 1;
    if (!lf) {
        /* 2.1: "If the CRLF sequence is not found in the first 107
         * characters, the receiver should declare the line invalid." */
        if (len >= PROXY_V1_MAX) return invalid(out, "PROXYv1 header too long");
        return PROXY_NEED_MORE;
    }
    /* 2.1: a lone LF must not end the line. "PROXY" holds no LF, so
     * lf - 1 is inside the buffer. */
    if (lf[-1] != '\r') return invalid(out, "PROXYv1 malformed");

    struct fields f = {buf + V1_SIG_LEN, lf - 1, false};
    /* The signature is "PROXY" then exactly one space. */
    if (f.p == f.end) return invalid(out, "PROXYv1 missing fields");
    field_next(&f, &s, &n);
    if (n != 0) return invalid(out, "PROXYv1 wrong signature");
    if (!field_next(&f, &s, &n)) return invalid(out, "PROXYv1 missing fields");

    out->header_len = (size_t)(lf + 1 - buf);
    if (field_is(s, n, "UNKNOWN")) {
        /* 2.1: "the receiver must ignore anything presented before the
         * CRLF"; aiosmtpd keeps it as `rest`. */
        out->family = PROXY_AF_UNSPEC;
        out->protocol = PROXY_PROTO_UNSPEC;
        out->rest = s + n;
        out->rest_len = (size_t)(lf - 1 - out->rest);
        return PROXY_OK;
    }
    /* aiosmtpd's order of checks, so the same reason comes out: family
     * from the last character, then the protocol. */
    if (n == 0 || (s[n - 1] != '4' && s[n - 1] != '6'))
        return invalid(out, "PROXYv1 unrecognized family");
    if (!field_is(s, n, "TCP4") && !field_is(s, n, "TCP6"))
        return invalid(out, "PROXYv1 unrecognized protocol");
    out->family = s[n - 1] == '4' ? PROXY_AF_INET : PROXY_AF_INET6;
    out->protocol = PROXY_PROTO_STREAM;

    if (!field_next(&f, &s, &n)) return invalid(out, "PROXYv1 missing fields");
    if (!(src_af = v1_addr(s, n, src))) return invalid(out, "PROXYv1 address malformed");
    if (!field_next(&f, &s, &n)) return invalid(out, "PROXYv1 missing fields");
    if (!(dst_af = v1_addr(s, n, dst))) return invalid(out, "PROXYv1 address malformed");
    if (out->family == PROXY_AF_INET && (src_af != AF_INET || dst_af != AF_INET))
        return invalid(out, "PROXYv1 address not IPv4");
    if (out->family == PROXY_AF_INET6 && (src_af != AF_INET6 || dst_af != AF_INET6))
        return invalid(out, "PROXYv1 address not IPv6");

    if (!field_next(&f, &s, &n)) return invalid(out, "PROXYv1 missing fields");
    if (!v1_port(s, n, &sport)) return invalid(out, "PROXYv1 port malformed");
    if (!field_next(&f, &s, &n)) return invalid(out, "PROXYv1 missing fields");
    if (!v1_port(s, n, &dport)) return invalid(out, "PROXYv1 port malformed");
    if (sport > 65535) return invalid(out, "PROXYv1 src port out of bounds");
    if (dport > 65535) return invalid(out, "PROXYv1 dst port out of bounds");
    if (field_next(&f, &s, &n)) return invalid(out, "PROXYv1 unrecognized extraneous data");

    out->has_addr = true;
    set_text_addr(src_af, src, out->src_addr, &out->src_addr_len);
    set_text_addr(dst_af, dst, out->dst_addr, &out->dst_addr_len);
    out->src_port = (int)sport;
    out->dst_port = (int)dport;
    out->rest = lf + 1;
    out->rest_len = 0;
    return PROXY_OK;
}

/* ---- v2 ---------------------------------------------------------------- */

/* CRC-32C (Castagnoli, reflected 0x82F63B78), RFC 4960 appendix B, bit by
 * bit: a header is at most PROXY_V2_MAX bytes and checked once. */
static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return crc;
}

/* 2.2.3: the CRC of the whole header with the checksum field zeroed. */
static bool crc32c_ok(const uint8_t *hdr, size_t hdr_len, const uint8_t *field)
{
    static const uint8_t zero[TLV_CRC32C_LEN];
    size_t off = (size_t)(field - hdr);
    uint32_t want =
        (uint32_t)field[0] << 24 | (uint32_t)field[1] << 16 | (uint32_t)field[2] << 8 | field[3];
    uint32_t crc = 0xFFFFFFFFu;

    crc = crc32c_update(crc, hdr, off);
    crc = crc32c_update(crc, zero, sizeof zero);
    crc = crc32c_update(crc, field + TLV_CRC32C_LEN, hdr_len - off - TLV_CRC32C_LEN);
    return (crc ^ 0xFFFFFFFFu) == want;
}

/* Walks p[0..n) as TLVs into out->tlv (parent 0 at top level), descending
 * once into an SSL TLV. Returns NULL or the reason it is not well formed. */
static const char *tlv_walk(const uint8_t *p, size_t n, uint8_t parent, struct proxy_info *out)
{
    size_t i = 0;

    while (i < n) {
        if (n - i < TLV_HDR) return "PROXYv2 malformed TLV";
        uint8_t type = p[i];
        size_t vlen = be16(p + i + 1);
        const uint8_t *v = p + i + TLV_HDR;
        if (vlen > n - i - TLV_HDR) return "PROXYv2 malformed TLV";
        if (out->n_tlv == PROXY_TLV_MAX) return "PROXYv2 too many TLVs";
        out->tlv[out->n_tlv++] = (struct proxy_tlv){type, parent, v, vlen};
        if (parent == 0) {
            if (type == PROXY_TLV_CRC32C && vlen != TLV_CRC32C_LEN) return "PROXYv2 malformed TLV";
            if (type == PROXY_TLV_UNIQUE_ID && vlen > PROXY_UNIQUE_ID_MAX)
                return "PROXYv2 malformed TLV";
            if (type == PROXY_TLV_SSL) {
                if (vlen < TLV_SSL_FIXED) return "PROXYv2 malformed TLV";
                const char *err =
                    tlv_walk(v + TLV_SSL_FIXED, vlen - TLV_SSL_FIXED, PROXY_TLV_SSL, out);
                if (err) return err;
            }
        }
        i += TLV_HDR + vlen;
    }
    return NULL;
}

/* The TLVs in out->rest. strict: a malformed area makes the header
 * INVALID; otherwise it is simply not decoded. Decoded CRC32C TLVs are
 * checked either way: a sender that put one there meant it. */
static enum proxy_status v2_tlvs(const uint8_t *buf, bool strict, struct proxy_info *out)
{
    const char *err = tlv_walk(out->rest, out->rest_len, 0, out);

    if (err) {
        out->n_tlv = 0;
        return strict ? invalid(out, err) : PROXY_OK;
    }
    for (size_t i = 0; i < out->n_tlv; i++) {
        const struct proxy_tlv *t = &out->tlv[i];
        if (t->parent == 0 && t->type == PROXY_TLV_CRC32C &&
            !crc32c_ok(buf, out->header_len, t->value))
            return invalid(out, "PROXYv2 CRC32C mismatch");
    }
    return PROXY_OK;
}

/* A sun_path: up to the first NUL for a pathname socket; an abstract one
 * (leading NUL) is length-delimited on the wire we cannot see, so its NUL
 * padding is trimmed from the end. */
static void set_unix_addr(const uint8_t *p, char *text, size_t *len)
{
    size_t n;

    if (p[0] != 0) {
        const uint8_t *nul = memchr(p, 0, PROXY_UNIX_PATH_MAX);
        n = nul ? (size_t)(nul - p) : PROXY_UNIX_PATH_MAX;
    } else {
        n = PROXY_UNIX_PATH_MAX;
        while (n > 0 && p[n - 1] == 0)
            n--;
    }
    memcpy(text, p, n);
    text[n] = '\0';
    *len = n;
}

static enum proxy_status v2_parse(const uint8_t *buf, size_t len, struct proxy_info *out)
{
    size_t sig = len < V2_SIG_LEN ? len : V2_SIG_LEN;

    out->version = 2;
    if (memcmp(buf, V2_SIG, sig) != 0) return invalid(out, "PROXYv2 wrong signature");
    /* Each fixed byte is judged as soon as it arrives (2.1, "abort the
     * connection as soon as possible"), in aiosmtpd's order. */
    if (len > V2_VER_CMD) {
        if ((buf[V2_VER_CMD] >> 4) != V2_VERSION) return invalid(out, "PROXYv2 illegal version");
        /* 0 LOCAL, 1 PROXY */
        if ((buf[V2_VER_CMD] & 0x0F) > 1) return invalid(out, "PROXYv2 unsupported command");
    }
    if (len > V2_FAM_PROTO) {
        if ((buf[V2_FAM_PROTO] >> 4) > PROXY_AF_UNIX)
            return invalid(out, "PROXYv2 unsupported family");
        if ((buf[V2_FAM_PROTO] & 0x0F) > PROXY_PROTO_DGRAM)
            return invalid(out, "PROXYv2 unsupported protocol");
    }
    if (len < PROXY_V2_FIXED) return PROXY_NEED_MORE;

    size_t body = be16(buf + V2_LEN);
    size_t total = PROXY_V2_FIXED + body;
    if (total > PROXY_V2_MAX) return invalid(out, "PROXYv2 header too long");
    if (len < total) return PROXY_NEED_MORE;

    const uint8_t *tail = buf + PROXY_V2_FIXED;
    out->local = (buf[V2_VER_CMD] & 0x0F) == 0;
    out->family = (enum proxy_family)(buf[V2_FAM_PROTO] >> 4);
    out->protocol = (enum proxy_protocol)(buf[V2_FAM_PROTO] & 0x0F);
    out->header_len = total;
    out->rest = tail;
    out->rest_len = body;

    /* 2.2: LOCAL "must use the real connection endpoints and discard the
     * protocol block including the family"; UNSPEC has no address layout,
     * and "the receiver should ignore address information". */
    if (out->local || out->family == PROXY_AF_UNSPEC || out->protocol == PROXY_PROTO_UNSPEC)
        return v2_tlvs(buf, false, out);

    size_t alen = out->family == PROXY_AF_INET    ? V2_ADDR_INET
                  : out->family == PROXY_AF_INET6 ? V2_ADDR_INET6
                                                  : V2_ADDR_UNIX;
    if (body < alen) return invalid(out, "PROXYv2 truncated address");

    out->has_addr = true;
    if (out->family == PROXY_AF_UNIX) {
        set_unix_addr(tail, out->src_addr, &out->src_addr_len);
        set_unix_addr(tail + PROXY_UNIX_PATH_MAX, out->dst_addr, &out->dst_addr_len);
    } else {
        int af = out->family == PROXY_AF_INET ? AF_INET : AF_INET6;
        size_t a = out->family == PROXY_AF_INET ? 4 : 16;
        set_text_addr(af, tail, out->src_addr, &out->src_addr_len);
        set_text_addr(af, tail + a, out->dst_addr, &out->dst_addr_len);
        out->src_port = be16(tail + 2 * a);
        out->dst_port = be16(tail + 2 * a + 2);
    }
    out->rest = tail + alen;
    out->rest_len = body - alen;
    return v2_tlvs(buf, true, out);
}

/* ---- entry points ------------------------------------------------------ */

enum proxy_status proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *out)
{
    size_t k = len < V1_SIG_LEN ? len : V1_SIG_LEN;

    memset(out, 0, sizeof *out);
    out->src_port = out->dst_port = -1;
    /* aiosmtpd reads 5 bytes and dispatches on them; we do the same on a
     * shorter prefix as far as it goes, and reject as soon as it matches
     * neither signature. */
    if (len == 0) return PROXY_NEED_MORE;
    if (memcmp(buf, V1_SIG, k) == 0) {
        if (k < V1_SIG_LEN) return PROXY_NEED_MORE;
        return v1_parse(buf, len, out);
    }
    if (memcmp(buf, V2_SIG, k) == 0) {
        if (k < V1_SIG_LEN) return PROXY_NEED_MORE;
        return v2_parse(buf, len, out);
    }
    return invalid(out, "PROXY unrecognized signature");
}

const char *proxy_family_name(enum proxy_family family)
{
    switch (family) {
    case PROXY_AF_UNSPEC:
        return "UNSPEC";
    case PROXY_AF_INET:
        return "INET";
    case PROXY_AF_INET6:
        return "INET6";
    case PROXY_AF_UNIX:
        return "UNIX";
    }
    return "UNSPEC";
}

const char *proxy_protocol_name(enum proxy_protocol protocol)
{
    switch (protocol) {
    case PROXY_PROTO_UNSPEC:
        return "UNSPEC";
    case PROXY_PROTO_STREAM:
        return "STREAM";
    case PROXY_PROTO_DGRAM:
        return "DGRAM";
    }
    return "UNSPEC";
}

const char *proxy_tlv_name(uint8_t type)
{
    switch (type) {
    case PROXY_TLV_ALPN:
        return "ALPN";
    case PROXY_TLV_AUTHORITY:
        return "AUTHORITY";
    case PROXY_TLV_CRC32C:
        return "CRC32C";
    case PROXY_TLV_NOOP:
        return "NOOP";
    case PROXY_TLV_UNIQUE_ID:
        return "UNIQUE_ID";
    case PROXY_TLV_SSL:
        return "SSL";
    case PROXY_TLV_SSL_VERSION:
        return "SSL_VERSION";
    case PROXY_TLV_SSL_CN:
        return "SSL_CN";
    case PROXY_TLV_SSL_CIPHER:
        return "SSL_CIPHER";
    case PROXY_TLV_SSL_SIG_ALG:
        return "SSL_SIG_ALG";
    case PROXY_TLV_SSL_KEY_ALG:
        return "SSL_KEY_ALG";
    case PROXY_TLV_NETNS:
        return "NETNS";
    }
    return NULL;
}
