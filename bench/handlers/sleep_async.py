"""sleep_async.py — aiosmtpd's handler for bench/run scenario (i), the
async way: "NOOP sleep" awaits asyncio.sleep(0.1) (the loop serves everyone
else meanwhile), a plain NOOP answers at once. Same replies as sleep.lua."""

import asyncio

SLEEP_SECONDS = 0.1


class Sleeper:
    async def handle_NOOP(self, server, session, envelope, arg):
        if arg == "sleep":
            await asyncio.sleep(SLEEP_SECONDS)
        return "250 OK"


handler = Sleeper()
