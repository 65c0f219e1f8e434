#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (committed; run
`python3 fuzz/seeds.py` after editing this file). Each seed is one small,
named case that reaches a distinct path; the fuzzer grows the rest.

Formats (see each fuzz_<target>.c):
  session  the bytes a client sends
  data     byte 0 mode/limit, byte 1 chunk seed, then the text after 354
  base64   the text to decode (and the bytes to encode)
  addr     byte 0 picks an output capacity, then the MAIL/RCPT argument
  plain    byte 0 flags, then the PLAIN response (raw bytes, or base64 text
           with flag 4)
  proxy    the bytes a load balancer sends first (header, then SMTP)
  dns      byte 0 the query type (A AAAA MX TXT PTR CNAME NS SRV = 0..7),
           then a DNS reply
"""
import base64
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def b64(s):
    return base64.b64encode(s).decode("ascii")


def lines(*ls):
    return "".join(l + "\r\n" for l in ls).encode("latin-1")


EHLO = "EHLO client.example"
ENVELOPE = ["MAIL FROM:<sender@example.org>", "RCPT TO:<rcpt@example.com>"]
PLAIN_OK = b64(b"\0fuzz\0secret")

# A TLS 1.2 ClientHello from `openssl s_client -servername fuzz.test`.
CLIENT_HELLO = bytes.fromhex(
    "16030100c9010000c5030337a480d28c47a2fe0d523b3c4b5189167e505bd079013fcb93"
    "ec3be0faec1150000038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023"
    "c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000640000"
    "000e000c00000966757a7a2e74657374000b000403000102000a000c000a001d0017001e"
    "00190018002300000016000000170000000d002a00280403050306030807080808090809"
    "0a080b080408050806040105010601030303010302040205020602")

session = {
    "transaction": lines(EHLO, *ENVELOPE, "DATA", "Subject: hi", "", "body", ".", "QUIT"),
    "helo-transaction": lines("HELO client", *ENVELOPE, "DATA", "x", ".", "RSET", "QUIT"),
    "pipelined-glued-after-data": lines(EHLO, *ENVELOPE, "DATA", "one", ".", *ENVELOPE,
                                        "DATA", "two", ".", "QUIT"),
    "auth-plain-initial": lines(EHLO, "AUTH PLAIN " + PLAIN_OK, *ENVELOPE, "DATA", "x", ".",
                                "QUIT"),
    "auth-plain-challenge": lines(EHLO, "AUTH PLAIN", PLAIN_OK, "MAIL FROM:<a@b>"),
    "auth-plain-empty-initial": lines(EHLO, "AUTH PLAIN =", "AUTH PLAIN " + b64(b"a\0b")),
    "auth-plain-authzid": lines(EHLO, "AUTH PLAIN " + b64(b"admin\0fuzz\0secret"),
                                "AUTH PLAIN " + b64(b"fuzz\0fuzz\0secret")),
    "auth-plain-wrong": lines(EHLO, "AUTH PLAIN " + b64(b"\0fuzz\0wrong"),
                              "AUTH PLAIN " + b64(b"\0error\0x"), "AUTH PLAIN !!!!",
                              "AUTH PLAIN " + PLAIN_OK),
    "auth-login": lines(EHLO, "AUTH LOGIN", b64(b"fuzz"), b64(b"secret"), "AUTH LOGIN"),
    "auth-login-initial": lines(EHLO, "auth login " + b64(b"fuzz"), b64(b"wrong")),
    "auth-cancel": lines(EHLO, "AUTH LOGIN", "*", "AUTH PLAIN", "not base64", "NOOP"),
    "auth-x-fuzz": lines(EHLO, "AUTH X-FUZZ", b64(b"fuzz"), b64(b"secret"), "NOOP"),
    "auth-x-fuzz-outcomes": lines(EHLO, *("AUTH X-FUZZ " + b64(w) for w in
                                          (b"error", b"yield", b"bad", b"handled", b"message")),
                                  "AUTH X-FUZZ", b64(b"x"), "*"),
    "auth-errors": lines("AUTH PLAIN", "HELO x", "AUTH PLAIN", EHLO, "AUTH", "AUTH NOPE",
                         "AUTH PLAIN a b", "MAIL FROM:<a@b>", "AUTH PLAIN " + PLAIN_OK),
    "auth-twice": lines(EHLO, "AUTH PLAIN " + PLAIN_OK, "AUTH PLAIN " + PLAIN_OK),
    "smuggling": lines(EHLO, *ENVELOPE, "DATA")
    + b"a\n.\nMAIL FROM:<x@y>\nb\n.\r\nc\r.\r\nd\rRCPT TO:<z@w>\r\n.\r\nNOOP\r\n",
    "dot-stuffing": lines(EHLO, *ENVELOPE, "DATA", "..leading dot", ".", "..", "...", "x.",
                          ".", "QUIT"),
    "data-limits": lines(EHLO, *ENVELOPE, "DATA", "x" * 1002, ".", *ENVELOPE, "DATA",
                         *(["y" * 900] * 3), ".", "NOOP"),
    "data-hook-error": lines(EHLO, *ENVELOPE, "DATA", "X-Fuzz: error", "", ".", "NOOP"),
    "data-eof": lines(EHLO, *ENVELOPE, "DATA", "no end"),
    "mail-params": lines(EHLO, "MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>",
                         "RSET", "MAIL FROM:<a@b> SIZE=99999999999999999999", "MAIL FROM:<a@b> BODY=9BIT",
                         "MAIL FROM:<a@b> AUTH=a+2Bb", "MAIL FROM:<a@b> X=", "MAIL FROM:<a@b> =1",
                         "MAIL FROM:<a@b> FOO=BAR", "MAIL FROM:<a@b> SMTPUTF8=1",
                         "MAIL FROM:<> SIZE=00000000000100",
                         "RCPT TO:<c@d> NOTIFY=NEVER", "RCPT TO:<c@d> X", "RCPT TO:<c@d>"),
    "helo-params": lines("HELO x", "MAIL FROM:<a@b> SIZE=1", "MAIL FROM:<a@b>",
                         "RCPT TO:<c@d> X=1", "RCPT TO:<c@d>", "DATA x", "DATA"),
    "addresses": lines(EHLO, 'MAIL FROM:<"quoted local"@example.org>',
                       "RCPT TO:<@route1,@route2:user@example.com>",
                       "RCPT TO:(comment) user@[192.0.2.1]", "RCPT TO:<user@>",
                       "RCPT TO:<=?utf-8?q?x?=@a>", 'RCPT TO:"a\\"b"@c', "RCPT TO:a.@b",
                       "RCPT TO:<reject@x>", "RCPT TO:<error@x>", "RCPT TO:", "RCPT TO:<>",
                       "RCPT FROM:<a@b>", "VRFY <a@b>", "VRFY", "VRFY <<", "VRFY x y"),
    "order-errors": lines("MAIL FROM:<a@b>", EHLO, "RCPT TO:<c@d>", "DATA", "MAIL FROM:<a@b>",
                          "MAIL FROM:<a@b>", "DATA"),
    "hook-outcomes": lines(EHLO, "NOOP error", "NOOP yield", "NOOP bad", "NOOP missing",
                           "NOOP push", "NOOP stale", "NOOP", "NOOP    ", "EHLO missing",
                           "EHLO bad", "EHLO error", "HELO"),
    "misc-commands": lines("help", "HELP MAIL", "HELP nope", "EXPN x", "rset", "RSET x",
                           "QUIT x", "", "   ", "STARTTLS x", "NOOP \xc3\xa9", "\xc3\xa9HLO",
                           EHLO, "HELP RCPT", "VRFY \xc3\xa9@x"),
    "bogus-limit": lines("A", "B", "C", "D", "E", "NOOP"),
    "call-limit": lines(*(["NOOP"] * 32)),
    "line-endings": b"EHLO bare-lf\nNOOP\r\r\nNOOP\rNOOP\r\nMAIL FROM:<a@b>\n\n",
    "long-command": lines("NOOP " + "x" * 600, "MAIL FROM:<" + "a" * 520 + "@b>", EHLO,
                          "MAIL FROM:<" + "a" * 520 + "@b> SIZE=1"),
    "auth-long-line": lines(EHLO, "AUTH PLAIN " + "A" * 1200, "AUTH LOGIN", "QUFB" * 300),
    "starttls-injection": lines(EHLO, "STARTTLS", "MAIL FROM:<injected@x>"),
    "starttls-handshake": lines(EHLO, "STARTTLS") + CLIENT_HELLO,
    "starttls-required": lines(EHLO, "MAIL FROM:<a@b>", "NOOP", "STARTTLS"),
    "quit-then-more": lines(EHLO, "QUIT", "NOOP", "NOOP"),
    # For the PROXY protocol configuration (the others see a bogus command).
    "proxy-v1": b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 25\r\n" + lines(EHLO, "NOOP", "QUIT"),
    "proxy-v1-refused": b"PROXY TCP4 192.0.2.66 192.0.2.2 40000 25\r\n" + lines(EHLO),
    "proxy-v1-hook-error": b"PROXY TCP4 192.0.2.99 192.0.2.2 40000 25\r\n" + lines(EHLO),
    "proxy-v2-local": b"\r\n\r\n\x00\r\nQUIT\n \x00\x00\x00" + lines(EHLO, "QUIT"),
}

DATA_MODES = {"reject": 0, "normalize": 1, "keep": 2}
DATA_LIMITS = {"nolimit": 0, "l100": 1, "l1500": 2, "l5000": 3}


def data_seed(mode, limit, seed, text):
    return bytes([DATA_MODES[mode] | DATA_LIMITS[limit] << 2, seed]) + text


data = {
    "simple": data_seed("reject", "nolimit", 0, b"Subject: x\r\n\r\nbody\r\n.\r\n"),
    "empty": data_seed("reject", "nolimit", 1, b".\r\n"),
    "dot-stuffed": data_seed("reject", "nolimit", 2, b"..x\r\n.\r\n..\r\n.\r\nQUIT\r\n"),
    "smuggle-lf": data_seed("reject", "nolimit", 3, b"a\n.\nMAIL FROM:<x>\r\n.\r\n"),
    "smuggle-lf-crlf": data_seed("normalize", "nolimit", 4, b"a\n.\r\nb\r\n.\r\n"),
    "smuggle-cr": data_seed("keep", "nolimit", 5, b"a\r.\r\nb\r\n.\r\n"),
    "bare-cr-normalize": data_seed("normalize", "nolimit", 6, b"a\rb\nc\r\r\n.\r\n"),
    "long-line": data_seed("reject", "nolimit", 7, b"y" * 1000 + b"\r\n" + b"z" * 1000 + b"\r\n.\r\n"),
    "too-much": data_seed("reject", "l100", 8, b"0123456789" * 12 + b"\r\nx\r\n.\r\n"),
    "long-and-too-much": data_seed("reject", "l1500", 9, b"w" * 1400 + b"\r\n.\r\n"),
    "unterminated": data_seed("keep", "l5000", 10, b"line\r\npartial"),
    "pipelined-after": data_seed("reject", "nolimit", 11, b"x\r\n.\r\nMAIL FROM:<a@b>\r\n"),
}

base64_seeds = {
    "empty": b"",
    "one-byte": b"QQ==",
    "two-bytes": b"QUI=",
    "three-bytes": b"QUJD",
    "plain-response": PLAIN_OK.encode(),
    "pad-bits": b"QR==",
    "pad-in-middle": b"QQ==QQ==",
    "three-pads": b"Q===",
    "only-pads": b"====",
    "pad-after-full": b"QUJD=",
    "bad-char": b"QU!D",
    "binary": bytes(range(256)),
}

CAP_512, CAP_16, CAP_0 = 15, 9, 0
addr = {
    "angle": bytes([CAP_512]) + b"<user@example.com>",
    "null": bytes([CAP_512]) + b"<>",
    "bare": bytes([CAP_512]) + b"user@example.com",
    "params": bytes([CAP_512]) + b"<a@b> SIZE=10 BODY=8BITMIME",
    "quoted": bytes([CAP_512]) + b'<"q u\\"x"@example.com>',
    "route": bytes([CAP_512]) + b"<@r1.example,@r2.example:user@example.com>",
    "comments": bytes([CAP_512]) + b"(c1) user (c2)@(c3) example.com (c4) rest",
    "literal": bytes([CAP_512]) + b"<user@[IPv6:2001:db8::1]>",
    "encoded-word": bytes([CAP_512]) + b"=?utf-8?q?x?=@a",
    "obs-local": bytes([CAP_512]) + b'a."b\\c".d@e',
    "unterminated": bytes([CAP_512]) + b'<"a@b',
    "nested-comments": bytes([CAP_512]) + b"(" * 40 + b"x" + b")" * 40 + b"a@b",
    "utf8": bytes([CAP_512]) + "<j\u00f6rg@\u00e9xample.com>".encode(),
    "small-cap": bytes([CAP_16]) + b"<longer-than-sixteen@example.com>",
    "zero-cap": bytes([CAP_0]) + b"<a@b>",
}

plain = {
    "ok": b"\x00" + b"\0fuzz\0secret",
    "authzid-refused": b"\x00" + b"admin\0fuzz\0secret",
    "authzid-allowed": b"\x01" + b"admin\0fuzz\0secret",
    "authzid-self": b"\x00" + b"fuzz\0fuzz\0secret",
    "challenge": b"\x02" + b"\0fuzz\0secret",
    "text": b"\x04" + PLAIN_OK.encode(),
    "text-empty": b"\x04=",
    "text-invalid": b"\x04not base64!",
    "challenge-invalid": b"\x06QQ=",
    "two-fields": b"\x00" + b"only\0two",
    "four-fields": b"\x00" + b"a\0b\0c\0d",
    "refused": b"\x08" + b"\0fuzz\0wrongpassword",
}


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SMTP = b"EHLO client.example\r\n"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def tlv(t, v):
    return struct.pack("!BH", t, len(v)) + v


def v2(cmd_fam_proto, body):
    return V2_SIG + cmd_fam_proto + struct.pack("!H", len(body)) + body


def v2_crc(cmd_fam_proto, addrs, tlvs):
    """A v2 header ending with a CRC32C TLV that matches."""
    body = addrs + tlvs + tlv(0x03, b"\0\0\0\0")
    h = v2(cmd_fam_proto, body)
    return h[:-4] + struct.pack("!I", crc32c(h))


INET_ADDRS = bytes([127, 0, 0, 1, 192, 0, 2, 1]) + struct.pack("!HH", 40000, 25)
# Headers HAProxy 2.6 (Debian 12) sent on loopback, as in spec/c/test_proxy.c.
proxy = {
    "haproxy-v1-tcp4": b"PROXY TCP4 127.0.0.1 127.0.0.1 46380 59969\r\n" + SMTP,
    "haproxy-v1-unknown": b"PROXY UNKNOWN\r\n" + SMTP,
    "haproxy-v1-tcp6": b"PROXY TCP6 ::1 ::1 33236 40357\r\n" + SMTP,
    "haproxy-v2-tcp4": V2_SIG + b"!\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01\xdb\x04\x9a\x93"
    + SMTP,
    "haproxy-v2-tcp6": V2_SIG + b"!!\x00$" + b"\0" * 15 + b"\x01" + b"\0" * 15
    + b"\x01\xa82\xc8\xb5" + SMTP,
    "haproxy-v2-local": V2_SIG + b" \x00\x00\x00" + SMTP,
    "haproxy-v2-crc-uid": V2_SIG + b"!\x11\x006\x7f\x00\x00\x01\x7f\x00\x00\x01\xabX\xd2\xbf"
    b"\x03\x00\x04\x95X\x0ba\x05\x00 7F000001:AB58_7F000001:D2BF_0002" + SMTP,
    "haproxy-v2-ssl": V2_SIG + b"!\x11\x00\xa7\x7f\x00\x00\x01\x7f\x00\x00\x01\xd6\xf0\x999"
    b"\x03\x00\x04\xd3\xcd\x9a\x8c\x01\x00\x04smtp\x02\x00\x0fmx.example.test\x05\x00 "
    b"7F000001:D6F0_7F000001:9939_0007 \x00U\x07\x00\x00\x00\x00!\x00\x07TLSv1.3\"\x00"
    b"\x13client.example.test%\x00\x07RSA2048$\x00\nRSA-SHA256#\x00\x16"
    b"TLS_AES_256_GCM_SHA384" + SMTP,
    "v1-tcp4-max": b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
    "v1-tcp6-long": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
    b"0:0::1 1 2\r\n",
    "v1-bad-port": b"PROXY TCP4 1.2.3.4 5.6.7.8 1_000 25\r\n",
    "v1-no-lf": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 80,
    "v2-unix": v2(b"!\x31", b"/run/a.sock".ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0"))
    + SMTP,
    "v2-dgram-crc": v2_crc(b"!\x12", INET_ADDRS, tlv(0x04, b"") + tlv(0x30, b"netns")),
    "v2-bad-crc": v2(b"!\x11", INET_ADDRS + tlv(0x03, b"\xde\xad\xbe\xef")),
    "v2-ssl-short": v2(b"!\x11", INET_ADDRS + tlv(0x20, b"\x01\x00")),
    "v2-local-junk": v2(b" \x11", b"\x01\x02\x03"),
    "v2-version-3": V2_SIG + b"1\x11\x00\x00",
    "smtp-not-proxy": SMTP,
}


# DNS replies (RFC 1035 4.1), one per query type and a few hostile shapes.
def dns_name(name):
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def dns_rr(rtype, rdata, ttl=300, name=b"\xc0\x0c"):
    return name + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


def dns_reply(qtype, answers=(), authority=(), rcode=0, qname="example.test"):
    head = struct.pack(">HHHHHH", 0x1234, 0x8180 | rcode, 1, len(answers), len(authority), 0)
    return head + dns_name(qname) + struct.pack(">HH", qtype, 1) + b"".join(answers) + \
        b"".join(authority)


SOA = dns_rr(6, dns_name("ns.example.test") + dns_name("hostmaster.example.test")
             + struct.pack(">IIIII", 1, 1200, 180, 1209600, 60))
DNS_TYPES = {"a": 0, "aaaa": 1, "mx": 2, "txt": 3, "ptr": 4, "cname": 5, "ns": 6, "srv": 7}
dns_seeds = {
    "a": bytes([0]) + dns_reply(1, [dns_rr(1, bytes([127, 0, 0, 10])),
                                   dns_rr(1, bytes([127, 0, 0, 11]), ttl=60)]),
    "aaaa": bytes([1]) + dns_reply(28, [dns_rr(28, bytes(15) + b"\x10")]),
    "mx": bytes([2]) + dns_reply(15, [dns_rr(15, struct.pack(">H", 10) + dns_name("mail.example.test")),
                                     dns_rr(15, struct.pack(">H", 20) + b"\xc0\x0c")]),
    "txt": bytes([3]) + dns_reply(16, [dns_rr(16, b"\x08part one\x08part two"),
                                      dns_rr(16, b"\x0bv=spf1 -all")]),
    "ptr": bytes([4]) + dns_reply(12, [dns_rr(12, dns_name("mail.example.test"))],
                                  qname="10.0.0.127.in-addr.arpa"),
    "cname": bytes([5]) + dns_reply(5, [dns_rr(5, dns_name("mail.example.test"))]),
    "ns": bytes([6]) + dns_reply(2, [dns_rr(2, dns_name("ns.example.test"))]),
    "srv": bytes([7]) + dns_reply(33, [dns_rr(33, struct.pack(">HHH", 1, 5, 587)
                                             + dns_name("mail.example.test"))],
                                  qname="_submission._tcp.example.test"),
    "nxdomain-soa": bytes([0]) + dns_reply(1, authority=[SOA], rcode=3),
    "nodata-soa": bytes([1]) + dns_reply(28, authority=[SOA]),
    "a-via-cname": bytes([0]) + dns_reply(1, [dns_rr(5, dns_name("mail.example.test")),
                                             dns_rr(1, bytes([127, 0, 0, 10]), name=b"\xc0\x2a")]),
    "pointer-loop": bytes([2]) + dns_reply(15, [dns_rr(15, b"\x00\x0a\xc0\x22", name=b"\xc0\x22")]),
    "truncated-rdata": bytes([3]) + dns_reply(16, [dns_rr(16, b"\x20short")])[:-3],
    "high-ttl": bytes([0]) + dns_reply(1, [dns_rr(1, bytes([1, 2, 3, 4]), ttl=0x80000001)]),
    "resolver-text": bytes([0]) + b"127.0.0.1:5353,[::1]:53,::1",
    "ipv6-address": bytes([0]) + bytes(15) + b"\x01",
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, content in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(content)


write("session", session)
write("data", data)
write("base64", base64_seeds)
write("addr", addr)
write("plain", plain)
write("proxy", proxy)
write("dns", dns_seeds)
