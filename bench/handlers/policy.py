"""policy.py — the benchmark's aiosmtpd policy, equivalent to policy.lua:
AUTH against a user table, recipients only in the local domains, and a look
at each message's header before accepting it. Keep the two in step (same
replies, same checks).

Run by bench/aiosmtpd-server under /usr/bin/python3 with Debian's
python3-aiosmtpd; the launcher passes `authenticator` to aiosmtpd's SMTP
class and the handler object as its handler.
"""

from aiosmtpd.smtp import AuthResult, LoginPassword

# In production this would be a file or a service; the shape is the same.
USERS = {
    b"alice": b"s3cret",
    b"bob": b"hunter2",
    b"carol": b"correct horse battery staple",
    b"dave": b"pa55w0rd",
    b"erin": b"letmein-2026",
    b"frank": b"Tr0ub4dor&3",
}

LOCAL_DOMAINS = {"example.com", "example.org", "mx.test"}


def authenticator(server, session, envelope, mechanism, auth_data):
    if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    want = USERS.get(auth_data.login)
    if want is not None and want == auth_data.password:
        return AuthResult(success=True, auth_data=auth_data)
    return AuthResult(success=False, handled=False)


class Policy:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        _, at, domain = address.rpartition("@")
        if not at or domain.lower() not in LOCAL_DOMAINS:
            return "550 5.7.1 Relaying denied"
        if len(envelope.rcpt_tos) >= 100:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.content  # bytes: the launcher keeps decode_data=False
        # The header ends at the first empty line; count its lines and look
        # for the headers RFC 5322 3.6 requires.
        header_end = content.find(b"\r\n\r\n")
        if header_end < 0:
            return "554 5.6.0 Message has no header"
        lines = 0
        has_from = has_date = False
        for line in content[:header_end].split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):  # a continuation line
                continue
            lines += 1
            name, colon, _ = line.partition(b":")
            if colon:
                name = name.lower()
                if name == b"from":
                    has_from = True
                elif name == b"date":
                    has_date = True
        if not (has_from and has_date):
            return "554 5.6.0 Message lacks From or Date"
        return "250 2.0.0 Accepted ({} header fields)".format(lines)


handler = Policy()
