#!/usr/bin/python3
"""Reference SMTP server for luasmtpd's differential tests.

Runs aiosmtpd's SMTP class (Debian's python3-aiosmtpd; start it with
/usr/bin/python3) on 127.0.0.1 with a free port, with one of the handlers
below chosen by name. Every handler here has an equivalent Lua script in
spec/reference/handlers/<name>.lua; keep the two in step.

The command line mirrors luasmtpd's, so that the runner builds one option
list for both servers:

    /usr/bin/python3 ref_server.py --handler NAME --hostname mx.test \
        [-o name=value ...] [-s N]

`-o` values: true/false become booleans, decimal integers become ints,
anything else stays a string. `-s N` is data_size_limit.

Prints `ready 127.0.0.1:PORT` on stdout once listening, then serves until
stdin reaches EOF or SIGTERM/SIGINT arrives. aiosmtpd's log goes to stderr.

This file must not change aiosmtpd's behaviour: it only selects handlers and
keyword arguments. In particular it does not use aiosmtpd.controller, whose
defaults differ from the SMTP class's (it turns enable_SMTPUTF8 on).
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword


# region #### Helpers shared by the handlers ####################################

def check_alice(server, session, envelope, mechanism, auth_data):
    """The authenticator every AUTH-capable handler uses."""
    if (isinstance(auth_data, LoginPassword)
            and auth_data.login == b"alice"
            and auth_data.password == b"s3cret"):
        return AuthResult(success=True, auth_data=auth_data)
    if isinstance(auth_data, LoginPassword) and auth_data.login == b"crash":
        raise RuntimeError("authenticator crashed")
    return AuthResult(success=False, handled=False)


def escape(data: bytes) -> str:
    """Printable ASCII but '%' as is, every other byte as %XX (as in Lua)."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else "%{:02X}".format(b)
        for b in data
    )

# endregion


# region #### Handlers ##########################################################

class Plain:
    """Sink-like: no hooks but DATA, which accepts everything."""

    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


class Mechanisms(Plain):
    """Handler-defined AUTH mechanisms next to the built-in PLAIN and LOGIN."""

    async def auth_NULL(self, server, args):
        return AuthResult(success=True)

    async def auth_DENY(self, server, args):
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Denied by policy")

    async def auth_SILENT(self, server, args):
        # Fails without having sent a reply: aiosmtpd then sends nothing.
        return AuthResult(success=False)

    async def auth_OLD(self, server, args):
        # Old-style result: any truthy value is a success.
        return True

    async def auth_ECHO(self, server, args):
        response = await server.challenge_auth("Say the words")
        if response is MISSING:
            return AuthResult(success=False)
        if response == b"open sesame":
            return AuthResult(success=True, auth_data=response,
                              message="235 2.7.0 The door opens")
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Wrong words")

    async def auth_X__TOKEN(self, server, args):
        if len(args) == 2 and args[1] == "dG9rZW4=":
            return AuthResult(success=True, auth_data="token",
                              message="235 2.7.0 Token accepted")
        return AuthResult(success=False, handled=False)


class HandleAuth(Plain):
    """A handle_AUTH hook in front of the built-in mechanisms."""

    async def handle_AUTH(self, server, session, envelope, args):
        if args[0] == "LOGIN" and len(args) == 1:
            return "535 5.7.8 LOGIN disabled by policy"
        if args[0] == "LOGIN":
            # Returns without a final reply: aiosmtpd then sends nothing.
            return None
        if args[0] == "PLAIN" and len(args) == 1:
            await server.push("535 5.7.8 Initial response required")
            return None
        return MISSING


class Hooks:
    """Every command hook, each answering with a reply that shows its input."""

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        return "250 hello " + hostname

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-X-HOOKED", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.startswith("blocked@"):
            return "550 5.7.1 Sender blocked"
        envelope.mail_from = address
        return "250 2.1.0 sender <{}> options [{}]".format(
            address, " ".join(mail_options))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@nowhere.test"):
            return "550 5.1.1 No such user <{}>".format(address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 recipient <{}> number {}".format(
            address, len(envelope.rcpt_tos))

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 from <{}> to <{}> len={} {}".format(
            envelope.mail_from, ",".join(envelope.rcpt_tos),
            len(envelope.content), escape(envelope.content[:300]))

    async def handle_RSET(self, server, session, envelope):
        return "250 2.0.0 reset"

    async def handle_NOOP(self, server, session, envelope, arg):
        return "250 2.0.0 noop " + ("none" if arg is None else "[" + arg + "]")

    async def handle_VRFY(self, server, session, envelope, address):
        return "250 2.1.5 <" + address + ">"

    async def handle_QUIT(self, server, session, envelope):
        return "221 2.0.0 Goodbye"


class Broken(Plain):
    """Hooks that fail: an exception, and a return value of the wrong type."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.startswith("number@"):
            return 42
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        raise RuntimeError("boom")


# name -> (handler class, SMTP keyword arguments the handler script sets)
HANDLERS = {
    "plain": (Plain, {}),
    "auth": (Plain, {"authenticator": check_alice}),
    "auth_required": (Plain, {"authenticator": check_alice,
                              "auth_required": True}),
    "no_mechanisms": (Plain, {"auth_exclude_mechanism": ["PLAIN", "LOGIN"]}),
    "mechanisms": (Mechanisms, {"authenticator": check_alice}),
    "handle_auth": (HandleAuth, {"authenticator": check_alice}),
    "hooks": (Hooks, {}),
    "broken": (Broken, {"authenticator": check_alice}),
}

# endregion


def parse_value(text: str):
    if text == "true":
        return True
    if text == "false":
        return False
    if text.isdigit():
        return int(text)
    return text


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handler", required=True, choices=sorted(HANDLERS))
    parser.add_argument("--hostname", default="mx.test")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        metavar="NAME=VALUE")
    parser.add_argument("-s", dest="data_size_limit", type=int)
    args = parser.parse_args(argv)
    handler_class, kwargs = HANDLERS[args.handler]
    kwargs = dict(kwargs, hostname=args.hostname)
    for option in args.options:
        name, eq, value = option.partition("=")
        if not eq:
            parser.error("-o wants NAME=VALUE, got " + option)
        kwargs[name] = parse_value(value)
    if args.data_size_limit is not None:
        kwargs["data_size_limit"] = args.data_size_limit
    return handler_class(), kwargs


async def serve(handler, kwargs):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **kwargs), "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print("ready {}:{}".format(host, port), flush=True)

    stop = loop.create_future()

    def request_stop():
        if not stop.done():
            stop.set_result(None)

    def on_stdin():
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(sys.stdin.fileno())
            request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    try:
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    except (OSError, ValueError, PermissionError):
        pass  # stdin is not pollable (e.g. a regular file): signals only
    await stop
    server.close()
    await server.wait_closed()


def main(argv):
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    handler, kwargs = parse_args(argv)
    asyncio.run(serve(handler, kwargs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
