"""sleep_blocking.py — aiosmtpd's handler for bench/run scenario (i), the
way an aiosmtpd user gets it when the hook calls a blocking library (a
synchronous database or HTTP client): "NOOP sleep" calls time.sleep(0.1)
inside the async hook, which stops aiosmtpd's one event loop for every
connection. A plain NOOP answers at once. Same replies as sleep.lua."""

import time

SLEEP_SECONDS = 0.1


class BlockingSleeper:
    async def handle_NOOP(self, server, session, envelope, arg):
        if arg == "sleep":
            time.sleep(SLEEP_SECONDS)  # what a blocking client library does
        return "250 OK"


handler = BlockingSleeper()
