#!/usr/bin/python3
"""A real SMTP upstream for the delivery specs: Debian's aiosmtpd on a free
loopback port (or a UNIX socket), recording what it sees as JSON lines
(events and the message bytes, base64, so byte-exact checks are possible).

Modes (all optional): --auth USER:PASS (AUTH PLAIN/LOGIN), --tls CERT KEY
(STARTTLS), --refuse SUBSTR (550 at RCPT), --tempfail-rcpt SUBSTR (450 at
RCPT), --data-reply "452 ..." (the final reply to DATA), --size N,
--smtputf8, --pipelining (advertised in EHLO). --lmtp runs a small raw LMTP
responder instead (aiosmtpd's LMTP class answers once per message, which
is its bug): one reply per accepted recipient, --lmtp-fail SUBSTR gets
452 for the recipients that contain it.

For pipelining, the MAIL event records how many bytes were already in
aiosmtpd's reader buffer after the MAIL line: RCPTs and DATA sent in the
same write are there."""
import argparse
import asyncio
import base64
import json
import os
import ssl
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--port-file", required=True)
ap.add_argument("--log", required=True)
ap.add_argument("--unix")
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, default=0)
ap.add_argument("--auth")
ap.add_argument("--tls", nargs=2)
ap.add_argument("--refuse")
ap.add_argument("--tempfail-rcpt")
ap.add_argument("--data-reply")
ap.add_argument("--size", type=int, default=0)
ap.add_argument("--smtputf8", action="store_true")
ap.add_argument("--pipelining", action="store_true")
ap.add_argument("--lmtp", action="store_true")
ap.add_argument("--lmtp-fail")
args = ap.parse_args()

logf = open(args.log, "a", buffering=1)


def log(**ev):
    logf.write(json.dumps(ev) + "\n")


def refused(addr, substr):
    return substr is not None and substr in addr


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        log(ev="ehlo", name=hostname, tls=session.ssl is not None)
        if args.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        buffered = len(server._reader._buffer)
        log(ev="mail", addr=address, options=mail_options, buffered=buffered,
            tls=session.ssl is not None, auth=session.authenticated)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if refused(address, args.refuse):
            log(ev="rcpt", addr=address, code=550)
            return "550 5.1.1 No such user here"
        if refused(address, args.tempfail_rcpt):
            log(ev="rcpt", addr=address, code=450)
            return "450 4.2.1 Mailbox busy, try later"
        log(ev="rcpt", addr=address, code=250)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if args.data_reply:
            log(ev="data_refused", reply=args.data_reply)
            return args.data_reply
        log(ev="message", mail_from=envelope.mail_from, rcpt_tos=envelope.rcpt_tos,
            data=base64.b64encode(envelope.original_content).decode(),
            tls=session.ssl is not None, auth=session.authenticated)
        return "250 2.0.0 Ok: queued as UP1"


def authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult
    user, password = args.auth.split(":", 1)
    ok = auth_data.login == user.encode() and auth_data.password == password.encode()
    log(ev="auth", mechanism=mechanism, user=auth_data.login.decode(errors="replace"), ok=ok)
    return AuthResult(success=ok, handled=False)


class LMTPResponder(asyncio.Protocol):
    """Raw LMTP (RFC 2033): LHLO, MAIL, RCPT, DATA with one reply per
    accepted recipient, RSET, NOOP, QUIT."""

    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
        self.rcpts = []
        self.mail = None
        self.in_data = False
        self.data = b""
        self.t.write(b"220 lmtp.test LMTP ready\r\n")

    def reply(self, s):
        self.t.write(s.encode() + b"\r\n")

    def data_received(self, chunk):
        self.buf += chunk
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if self.buf.startswith(b".\r\n"):
                    end = -2
                if end == -1 and not self.buf.startswith(b".\r\n"):
                    return
                body = self.buf[:end + 2] if end >= 0 else b""
                self.buf = self.buf[end + 5:] if end >= 0 else self.buf[3:]
                body = body.replace(b"\r\n..", b"\r\n.")
                if body.startswith(b".."):
                    body = body[1:]
                self.in_data = False
                results = []
                for r in self.rcpts:
                    if refused(r, args.lmtp_fail):
                        self.reply("452 4.2.2 <%s> Mailbox full" % r)
                        results.append([r, 452])
                    else:
                        self.reply("250 2.0.0 <%s> delivered" % r)
                        results.append([r, 250])
                log(ev="message", mail_from=self.mail, rcpt_tos=self.rcpts,
                    data=base64.b64encode(body).decode(), results=results)
                self.rcpts, self.mail = [], None
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i].decode(errors="replace"), self.buf[i + 2:]
            verb = line[:4].upper()
            if verb == "LHLO":
                log(ev="lhlo", name=line[5:])
                self.reply("250-lmtp.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES")
            elif verb == "MAIL":
                self.mail = line[10:].strip("<>")
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = line[8:].strip("<>")
                if refused(addr, args.refuse):
                    self.reply("550 5.1.1 <%s> User unknown" % addr)
                else:
                    self.rcpts.append(addr)
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if not self.rcpts:
                    self.reply("503 5.5.1 No valid recipients")
                else:
                    self.in_data = True
                    self.data = b""
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
            elif verb == "RSET":
                self.rcpts, self.mail = [], None
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                self.t.close()
                return
            else:
                self.reply("500 5.5.2 Unknown command")


async def main():
    loop = asyncio.get_running_loop()
    if args.lmtp:
        factory = LMTPResponder
    else:
        from aiosmtpd.smtp import SMTP
        kw = dict(hostname="upstream.test", data_size_limit=args.size or None,
                  enable_SMTPUTF8=args.smtputf8, auth_require_tls=False)
        if args.auth:
            kw["authenticator"] = authenticator
        if args.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.tls[0], args.tls[1])
            kw["tls_context"] = ctx
        handler = Handler()

        def factory():
            return SMTP(handler, **kw)
    if args.unix:
        server = await loop.create_unix_server(factory, args.unix)
        port = 0
    else:
        server = await loop.create_server(factory, args.host, args.port)
        port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, args.port_file)
    async with server:
        await server.serve_forever()


try:
    asyncio.run(main())
except KeyboardInterrupt:
    sys.exit(0)
