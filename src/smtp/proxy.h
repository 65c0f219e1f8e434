/* proxy.h — the PROXY protocol header (HAProxy's proxy-protocol.txt,
 * versions 1 and 2) that a trusted load balancer sends before the first
 * SMTP byte, parsed the way aiosmtpd 1.4's proxy_protocol.get_proxy does,
 * stricter where the spec is. A pure function over the bytes received so
 * far: no I/O, no allocation, no Lua, no clock. Reading the socket, the
 * proxy_protocol_timeout deadline and handle_PROXY belong to the caller.
 *
 * Call proxy_parse() with everything received since the connection opened,
 * each time more arrives. It answers NEED_MORE until the header is complete
 * (or provably bad), then OK with header_len, the number of bytes to drop
 * before the SMTP stream starts (anything after them is the client's), or
 * INVALID with a static reason. Once a prefix is INVALID every extension of
 * it is too; once it is OK, every extension gives the same result. So a
 * caller may stop reading at the first answer that is not NEED_MORE, and
 * never needs to buffer more than PROXY_V2_MAX bytes: given that many, the
 * answer is never NEED_MORE. */
#ifndef LUASMTPD_PROXY_H
#define LUASMTPD_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* proxy-protocol.txt 2.1: a v1 line, CRLF included, is at most 107 bytes
 * ("PROXY UNKNOWN" with two full IPv6 addresses and ports). */
#define PROXY_V1_MAX 107
/* 2.2: the v2 header is 16 fixed bytes (12-byte signature, version and
 * command, family and protocol, 16-bit length) plus the length. */
#define PROXY_V2_FIXED 16
/* 2.2 allows 16 + 65535; we refuse more than HAProxy's own receiver can
 * take (its default tune.bufsize), since anything near that is not a
 * header a real proxy sends but memory a client asks us to hold. */
#define PROXY_V2_MAX 16384
/* 2.2: AF_UNIX addresses are exactly 108 bytes each (sun_path). */
#define PROXY_UNIX_PATH_MAX 108
/* 2.2.5: a unique ID is at most 128 bytes. */
#define PROXY_UNIQUE_ID_MAX 128
/* Our bound on TLVs kept from one header, SSL sub-TLVs included; HAProxy
 * sends at most a dozen. More is INVALID rather than silently truncated. */
#define PROXY_TLV_MAX 32

/* 2.2.1–2.2.7: registered TLV types (the SSL sub-types only appear inside
 * a PROXY_TLV_SSL value). */
enum {
    PROXY_TLV_ALPN = 0x01,
    PROXY_TLV_AUTHORITY = 0x02,
    PROXY_TLV_CRC32C = 0x03,
    PROXY_TLV_NOOP = 0x04,
    PROXY_TLV_UNIQUE_ID = 0x05,
    PROXY_TLV_SSL = 0x20,
    PROXY_TLV_SSL_VERSION = 0x21,
    PROXY_TLV_SSL_CN = 0x22,
    PROXY_TLV_SSL_CIPHER = 0x23,
    PROXY_TLV_SSL_SIG_ALG = 0x24,
    PROXY_TLV_SSL_KEY_ALG = 0x25,
    PROXY_TLV_NETNS = 0x30,
};

enum proxy_status {
    PROXY_NEED_MORE, /* a valid prefix so far; call again with more bytes */
    PROXY_OK,        /* complete and valid; see header_len */
    PROXY_INVALID,   /* see error; close the connection without a reply */
};

/* The values are the v2 wire nibbles and aiosmtpd's AF / PROTO enums. */
enum proxy_family { PROXY_AF_UNSPEC = 0, PROXY_AF_INET = 1, PROXY_AF_INET6 = 2, PROXY_AF_UNIX = 3 };
enum proxy_protocol { PROXY_PROTO_UNSPEC = 0, PROXY_PROTO_STREAM = 1, PROXY_PROTO_DGRAM = 2 };

struct proxy_tlv {
    uint8_t type;
    uint8_t parent;       /* 0 at top level; PROXY_TLV_SSL for a sub-TLV of the SSL TLV */
    const uint8_t *value; /* points into the caller's buffer */
    size_t len;
};

struct proxy_info {
    int version;              /* 1 or 2 */
    bool local;               /* v2 LOCAL (a health check): use the real peer; never set for v1 */
    enum proxy_family family; /* v1: TCP4 INET, TCP6 INET6, UNKNOWN UNSPEC */
    enum proxy_protocol protocol; /* v1: TCP4/TCP6 STREAM, UNKNOWN UNSPEC */
    /* Set for v1 TCP4/TCP6 and for a v2 PROXY command with INET, INET6 or
     * UNIX over STREAM or DGRAM; otherwise the address fields are empty and
     * the ports -1 (aiosmtpd's None). */
    bool has_addr;
    /* NUL-terminated. INET/INET6: inet_ntop text (canonical, so v1's
     * "0:0::1" reads "::1"). UNIX: the sun_path bytes, up to the first NUL
     * for a pathname socket, or with trailing NULs trimmed for an abstract
     * one (leading NUL); the _len fields count them. */
    char src_addr[PROXY_UNIX_PATH_MAX + 1], dst_addr[PROXY_UNIX_PATH_MAX + 1];
    size_t src_addr_len, dst_addr_len;
    int src_port, dst_port; /* -1 for UNIX and when !has_addr */
    /* aiosmtpd's `rest`: v1 UNKNOWN, everything between "UNKNOWN" and the
     * CRLF; v2 with addresses, the bytes after the address block (the TLV
     * area); v2 without (LOCAL, UNSPEC), all bytes after the fixed 16.
     * Points into the caller's buffer; rest_len may be 0. */
    const uint8_t *rest;
    size_t rest_len;
    /* TLVs in wire order, an SSL TLV followed by its sub-TLVs. With
     * addresses the TLV area must be well formed (or the header is
     * INVALID); without, it is decoded only if it happens to be well formed,
     * as aiosmtpd's ProxyData.tlv does, and n_tlv is 0 otherwise. A CRC32C
     * TLV that was decoded has been verified. Values point into the
     * caller's buffer. */
    struct proxy_tlv tlv[PROXY_TLV_MAX];
    size_t n_tlv;
    size_t header_len; /* PROXY_OK: bytes of buf that are the header */
    const char *error; /* PROXY_INVALID: a static string; otherwise NULL */
};

/* Parses buf[0..len), everything received so far; buf need not be
 * NUL-terminated. *out is overwritten on every call; its pointers point
 * into buf and live as long as the caller keeps those bytes. Fields other
 * than error are meaningful only for PROXY_OK. */
enum proxy_status proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *out);

/* "UNSPEC", "INET", "INET6", "UNIX" / "UNSPEC", "STREAM", "DGRAM": static. */
const char *proxy_family_name(enum proxy_family family);
const char *proxy_protocol_name(enum proxy_protocol protocol);
/* aiosmtpd's ProxyTLV.PP2_TYPENAME ("ALPN", "SSL_CN", ...): static, or
 * NULL for an unregistered type, which aiosmtpd names "x%02X". */
const char *proxy_tlv_name(uint8_t type);

#endif
