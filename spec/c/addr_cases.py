#!/usr/bin/env python3
"""Expected results for src/smtp/addr.c, taken from the reference itself.

Runs aiosmtpd's real SMTP._getaddr (1.4.3, on the system CPython) over every
input below and writes spec/c/addr_cases.inc, which test_addr.c compiles in,
so the C test needs no Python. Regenerate after changing the list:

    /usr/bin/python3 spec/c/addr_cases.py            # rewrites addr_cases.inc
    /usr/bin/python3 spec/c/addr_cases.py --check    # fails if it is stale

Inputs are bytes. aiosmtpd decodes a command argument as UTF-8 with
surrogateescape (when SMTPUTF8 is enabled; otherwise non-ASCII never gets
this far), so that is what _getaddr sees here, and its answer is encoded
back the same way to compare with the C parser's bytes.

Every case where the C parser deliberately answers differently is listed in
DEVIATIONS with the reason; the script refuses to write the file if Python
disagrees with the C expectation anywhere else, or if a listed deviation
turns out not to be one.
"""
import os
import sys

import aiosmtpd
from aiosmtpd.smtp import SMTP

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "addr_cases.inc")


class _Stand_in:
    # _getaddr reads nothing else from self; 0 is aiosmtpd's default (no
    # limit on the local part).
    local_part_limit = 0


CASES = [
    # -- the empty argument and plain addresses
    b"",
    b"a@b",
    b"user@example.com",
    b"first.last@sub.example.co.uk",
    b"USER+tag@Example.COM",
    b"a",
    b"postmaster",
    b"a!#$%&'*+-/=?^_`{|}~@b",
    b"1234567890@123.456",
    b"a@b.c.d.e.f.g",
    b"x@localhost",
    # -- angle brackets and the null path
    b"<a@b>",
    b"<user@example.com>",
    b"<>",
    b"< >",
    b"<> SIZE=100",
    b"<>SIZE=100",
    b"<><>",
    b"<>>",
    b"<<>>",
    b"<a@b>>",
    b"<<a@b>>",
    b"<a@b",
    b"<a@b x",
    b"<a>",
    b"<a",
    b"<postmaster>",
    b"<@>",
    b"<a@>",
    b"<@b>",
    b"<",
    b"<\t>",
    b" <a@b>",
    b"\t<a@b>",
    b"(c)<a@b>",
    b"(c) <a@b>",
    b"\x0b<a@b>",
    b" \x0b<a@b>",
    b"\xc2\xa0<a@b>",
    b"<a@b >",
    b"< a@b>",
    b"<a @b>",
    b"<a@ b>",
    b"<a@b> ",
    # -- mail parameters after the address
    b"<a@b> SIZE=100 BODY=8BITMIME",
    b"<a@b>  SIZE=100",
    b"<a@b>\tSIZE=100",
    b"<a@b>SIZE=100",
    b"<a@b> (comment) SIZE=100",
    b"<a@b>(comment)SIZE=100",
    b"<a@b> SMTPUTF8",
    b"<a@b> BODY=8BITMIME SMTPUTF8 SIZE=1",
    b"a@b SIZE=1",
    b"a@b  SIZE=1",
    b"a@b\tSIZE=1",
    b"a@b SIZE=1 BODY=7BIT",
    b"a SIZE=1",
    b"a@b>",
    b"a@b> SIZE=1",
    b"a@b <c@d>",
    b"<a@b> <c@d>",
    b"a@b,c@d",
    b"<a@b>,<c@d>",
    b"a@b;",
    b"a@b:c",
    # -- quoted local parts
    b'"a"@b',
    b'"a b"@c',
    b'"a  b"@c',
    b'"a\tb"@c',
    b'"a\\"b"@c',
    b'"a\\\\b"@c',
    b'"a\\b"@c',
    b'"a\\ b"@c',
    b'"\\a"@b',
    b'""@a',
    b'<""@a>',
    b'""',
    b'<"">',
    b'"" ""@a',
    b'"a"."b"@c',
    b'"a".b@c',
    b'a."b"@c',
    b'"a" "b"@c',
    b'"a@b"@c',
    b'"a.b"@c',
    b'"ab"@c',
    b'"<a>"@b',
    b'"a,b"@c',
    b'"a" @b',
    b'" a "@b',
    b'"a',
    b'"a@b',
    b'<"a@b>',
    b'"',
    b'<">',
    b'"a\\',
    b'"a\\"',
    b'"\x00"@b',
    b'"a\rb"@c',
    b'"\xc3\xa9"@b',
    b'<"john smith"@example.com> SIZE=1',
    b'"a\\"b".c@d',
    b'"a\\b".c@d',
    b'"a\\ b" c@d',
    # -- comments and CFWS
    b"(c)a@b",
    b"a(c)@b",
    b"a@(c)b",
    b"a@b(c)",
    b"a@b (c)",
    b"(a)(b)c@d",
    b"((nested))a@b",
    b"(a(b)c)d@e",
    b"(unterminated a@b",
    b"a@b (unterminated",
    b"(\\))a@b",
    b"(a\\)b)x.y@z",
    b"(\\() \"x\\\\y\" . z@w",
    b"a (c) b@d",
    b"a.(c)b@d",
    b"a(c).b@d",
    b"<(c)a@b>",
    b"<a(c)@b>",
    b"<a@b(c)>",
    b"<a@(c)b>",
    b"(" * 300 + b"a" + b")" * 300 + b"b@c",
    # -- dots in odd places and obs-local-part
    b".a@b",
    b"a.@b",
    b"a..b@c",
    b"a...b@c",
    b".@b",
    b"..@b",
    b"a. b@c",
    b"a .b@c",
    b"a . b@c",
    b"a b@c",
    b"a b c@d",
    b"a\\b@c",
    b"\\@c",
    b"a\\.b@c",
    b"\\\\a@b",
    b'"a" \\b@c',
    b"a@b.",
    b"a@.b",
    b"a@b..c",
    b"a@b .c",
    b"a@b. c",
    b"a@b . c",
    b"a@b (x) . (y) c",
    b"a@b.c.",
    b"<a@b.>",
    b"<a.@b>",
    # -- missing '@', doubled '@', empty parts
    b"@b",
    b"@",
    b"a@",
    b"<a@",
    b"a@@b",
    b"a@b@c",
    b"<a@b@c>",
    b"a@ ",
    b"a@(c)",
    b"<a@(c)>",
    # -- domain literals
    b"a@[1.2.3.4]",
    b"<a@[1.2.3.4]>",
    b"a@[IPv6:::1]",
    b"<a@[IPv6:2001:db8::1]> SIZE=1",
    b"a@[ 1.2.3.4 ]",
    b"a@[1.2 3.4]",
    b"a@[]",
    b"a@[",
    b"a@[1.2",
    b"<a@[1.2",
    b"a@[1.2 ",
    b"a@[ ",
    b"a@[a\\]b]",
    b"a@[a[b]",
    b"a@[\\[]",
    b"a@[1.2.3.4].c",
    b"a@[1.2.3.4]x",
    b"a@(c)[1.2.3.4](d)",
    b"a@[a\x0bb]",
    b"a@[\xc2\xa0x]",
    # -- obsolete routes
    b"<@a:b@c>",
    b"<@a,@b:c@d>",
    b"<@a,@b:c@d> SIZE=1",
    b"<@a, @b:c@d>",
    b"<,@a,,@b:c@d>",
    b"<@a,:c@d>",
    b"<@a,b:c@d>",
    b"<@a:>",
    b"<@a:",
    b"<@a",
    b"<@a,",
    b"<@a,(c)",
    b"<@a,@:b@c>",
    b"<@[1.2.3.4]:b@c>",
    b"<@[1.2:b@c>",
    b"<@a:<b@c>>",
    b"@a:b@c",
    b"<@a:@b:c@d>",
    # -- whitespace and control characters
    b"a@b\x0bc",
    b"a\x0bb@c",
    b"a@b\x1cc",
    b"a@b c",
    b"a@b\rc",
    b"a@b\x00c",
    b"a\x00b@c",
    b" a@b",
    b"a@b ",
    b"\ta@b",
    # -- non-ASCII bytes
    b"\xc3\xa9@b",
    b"a@\xc3\xa9.example",
    b"<\xc3\xa9t\xc3\xa9@\xc3\xa9xample.com>",
    b"\xff@b",
    b"a@\xff",
    b"a@b\xc2\xa0c",
    b"a@b\xc2c",
    b"a@b\xe2\x80\xa8c",
    b"a@b\xe2\x80c",
    b"a@b\xe2\xe2\x80\xa8c",
    b"a@b\xed\xa0\x80c",
    b"a@b\xe3\x80\x80c",
    b"\xe2\x80\xa8a@b",
    b" \xe2\x80\xa8<a@b>",
    b"\xf0\x9f\x98\x80@b",
    b"a@[\\\xc2\xa0]",
    b"a@[\xe2\\\x80\xa8]",
    # -- RFC 2047 lookalikes that Python does not decode
    b"=?@b",
    b"=?x@b",
    b"=?a?q?b@c",
    b"=??=@b",
    b"=?a?x?b?=@c",
    b"=?a?qq?b?=@c",
    b"=?a?q?\xc3\xa9?=@b",
    b"=?a?q?b?c?=@d",
    b"a=?b?=@c",
    b'"=?a?q?b"@c',
    # -- RFC 2047 encoded words that Python decodes (see DEVIATIONS)
    b"=?utf-8?q?x?=@a",
    b"<=?utf-8?q?x?=@a>",
    b"a@=?utf-8?q?b?=",
    b'"=?utf-8?q?x?="@a',
    b"=?x?b?QQ==?=@a",
    b"=?a?q?=41?=@b",
    b"=?a?q?\xff?=@b",
    b"=?utf-16?q?a?=@b",
    b'"=\\?a?q?b?=".x@y',
    # an encoded word in a route is parsed and thrown away: no deviation
    b"<@=?a?q?b?=:c@d>",
    # -- sizes
    b"a" * 64 + b"@b",
    b"a" * 65 + b"@b",
    b"a" * 600 + b"@b",
    b"a@" + b"b." * 300 + b"c",
    b"<" + b"a" * 1000 + b"@" + b"b" * 1000 + b">",
    b'"' + b"a " * 400 + b'"@b',
    b'"' + b"\\a" * 300 + b'".b@c',
    b'"a\\b".c@d SIZE=1',
    b'"' + b"a" * 1100 + b'\\b".c@d',
]

CRASH = "aiosmtpd replies 500 Error: ({exc}) ...; addr.h has no status for it"
EW = ("Python decodes an RFC 2047 encoded word into the address ({py!r}); "
      "we refuse rather than let one mailbox name stand for another")

# input -> (expected C outcome, reason). Every entry must really differ
# from Python; {py} and {exc} are filled in from Python's answer.
DEVIATIONS = {
    b"<": CRASH,
    b"a@": CRASH,
    b"<a@": CRASH,
    b"<@a:": CRASH,
    b"<@a,(c)": CRASH,
    b"a@[": CRASH,
    b"a@[1.2": CRASH,
    b"<a@[1.2": CRASH,
    b"a@[1.2 ": CRASH,
    b"a@[ ": CRASH,
    b'"': CRASH,
    b"=?utf-8?q?x?=@a": EW,
    b"<=?utf-8?q?x?=@a>": EW,
    b"a@=?utf-8?q?b?=": EW,
    b'"=?utf-8?q?x?="@a': EW,
    b"=?x?b?QQ==?=@a": EW,
    b"=?a?q?=41?=@b": EW,
    b"=?a?q?\xff?=@b": EW,
    b"=?utf-16?q?a?=@b": ("Python cannot decode b'a' as UTF-16 and keeps the "
                           "literal text ({py!r}); we do not model charsets and "
                           "refuse every well-formed encoded word"),
    b'"' + b"a" * 1100 + b'\\b".c@d': (
        "the local part is re-parsed from its canonical text, which we build "
        "in a 1024-byte buffer (ADDR_CANON_MAX); 1100 bytes do not fit, and no "
        "SMTP command line is that long"),
    # Python re-parses the canonical '"=?a?q?b?=".x@y' and finds a word.
    b'"=\\?a?q?b?=".x@y': EW,
}


def python_outcome(arg):
    """('ok', addr_bytes, rest_bytes) | ('malformed',) | ('raise', name)."""
    text = arg.decode("utf-8", "surrogateescape")
    try:
        addr, rest = SMTP._getaddr(_Stand_in(), text)
    except Exception as e:  # anything but HeaderParseError escapes _getaddr
        return ("raise", type(e).__name__)
    if addr is None:
        return ("malformed",)
    return ("ok", addr.encode("utf-8", "surrogateescape"),
            rest.encode("utf-8", "surrogateescape"))


def c_literal(b):
    # Octal escapes are at most three digits, so they never swallow a
    # following digit; '?' is escaped to keep trigraphs out. Long strings
    # are split into adjacent literals, never inside an escape.
    toks = []
    for c in b:
        ch = chr(c)
        toks.append(ch if 0x20 <= c < 0x7f and ch not in '"\\?' else "\\%03o" % c)
    parts, cur = [], ""
    for t in toks:
        if len(cur) + len(t) > 72:
            parts.append(cur)
            cur = ""
        cur += t
    parts.append(cur)
    return ("\n" + " " * 10).join('"%s"' % p for p in parts)


def build():
    seen = set()
    rows = []
    errors = []
    for arg in CASES:
        if arg in seen:
            errors.append("duplicate case %r" % arg)
            continue
        seen.add(arg)
        py = python_outcome(arg)
        reason = DEVIATIONS.get(arg)
        if not arg:
            want = ("ADDR_EMPTY", b"", 0)
            assert py == ("ok", b"", b""), py
        elif reason is not None:
            if py[0] == "raise":
                if reason is not CRASH:
                    errors.append("%r raises %s but is listed as %r" % (arg, py[1], reason))
                reason = reason.format(exc=py[1], py=None)
            elif py[0] == "ok":
                if reason is CRASH:
                    errors.append("%r is ok in Python but listed as %r" % (arg, reason))
                reason = reason.format(exc=None, py=py[1].decode("utf-8", "surrogateescape"))
            else:
                errors.append("%r is listed as a deviation but Python also says malformed" % arg)
            want = ("ADDR_MALFORMED", b"", 0)
        elif py[0] == "ok":
            addr, rest = py[1], py[2]
            if not arg.endswith(rest):
                errors.append("%r: rest %r is not a suffix of the input" % (arg, rest))
                continue
            want = ("ADDR_OK", addr, len(arg) - len(rest))
        elif py[0] == "malformed":
            want = ("ADDR_MALFORMED", b"", 0)
        else:
            errors.append("%r raises %s in Python and is not in DEVIATIONS" % (arg, py[1]))
            continue
        rows.append((arg, want, py, reason))
    for arg in DEVIATIONS:
        if arg not in seen:
            errors.append("deviation %r is not among the cases" % arg)
    if errors:
        sys.exit("addr_cases.py:\n  " + "\n  ".join(errors))

    lines = [
        "/* Generated by spec/c/addr_cases.py from aiosmtpd %s's SMTP._getaddr on"
        % aiosmtpd.__version__,
        " * CPython %s. Do not edit; edit the script and regenerate. */" % sys.version.split()[0],
        "/* ADDR_CASE(input, input_len, status, addr, addr_len, rest_offset, why):"
        " why is NULL",
        " * when C matches Python, else the deliberate deviation. */",
    ]
    for arg, (status, addr, rest_off), py, reason in rows:
        if py[0] == "ok":
            note = "python: %r, rest %r" % (py[1], py[2])
        elif py[0] == "raise":
            note = "python raises %s" % py[1]
        else:
            note = "python: malformed"
        note = note.replace("*/", "* /")
        if len(note) > 160:
            note = note[:157] + "..."
        lines.append("/* %s */" % note)
        why = "NULL" if reason is None else c_literal(reason.encode("utf-8", "surrogateescape"))
        lines.append("ADDR_CASE(%s, %d, %s,\n          %s, %d, %d,\n          %s)" % (
            c_literal(arg), len(arg), status, c_literal(addr), len(addr), rest_off, why))
    return "\n".join(lines) + "\n", len(rows)


def main():
    text, n = build()
    if "--check" in sys.argv[1:]:
        with open(OUT, encoding="ascii") as f:
            if f.read() != text:
                sys.exit("addr_cases.inc is stale: run spec/c/addr_cases.py")
        print("addr_cases.inc is current (%d cases)" % n)
        return
    with open(OUT, "w", encoding="ascii") as f:
        f.write(text)
    print("wrote %s (%d cases)" % (OUT, n))


if __name__ == "__main__":
    main()
