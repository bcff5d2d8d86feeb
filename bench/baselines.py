"""The libraries alone, as baselines for bench/bench_gateway.py (each in its own process, so
its CPU time is its own):

    python bench/baselines.py smtp FOLDER PORT
        aiosmtplib sends every FOLDER/*.eml (a JSON envelope line, then the message) over ONE
        connection to 127.0.0.1:PORT, one after another;
    python bench/baselines.py sms BASE_URL ACCOUNT_SID AUTH_TOKEN COUNT THREADS
        the twilio library creates COUNT messages at BASE_URL from THREADS threads (the
        dispatcher's SMS concurrency), no pacing.

Each prints one line of JSON: {"sent": N, "seconds": wall time, "cpu": CPU seconds}.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def smtp(folder: Path, port: int) -> dict[str, float]:
    import aiosmtplib

    messages = []
    for path in sorted(folder.glob("*.eml")):
        head, _, raw = path.read_bytes().partition(b"\n")
        envelope = json.loads(head)
        messages.append((envelope["from"], envelope["to"], raw))

    async def send_all() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for sender, recipients, raw in messages:
            await client.sendmail(sender, recipients, raw)
        await client.quit()

    cpu, start = _cpu(), time.monotonic()
    asyncio.run(send_all())
    return {"sent": len(messages), "seconds": time.monotonic() - start, "cpu": _cpu() - cpu}


def sms(base_url: str, account_sid: str, auth_token: str, count: int,
        threads: int) -> dict[str, float]:
    from twilio.rest import Client

    client = Client(account_sid, auth_token)
    client.edge = None
    client.region = None
    client.api.base_url = base_url

    def send(i: int) -> None:
        client.messages.create(to=f"+1613555{i % 10000:04d}", from_="31100",
                               body=f"A crew is on the way. [baseline {i}]")

    cpu, start = _cpu(), time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, range(count)))
    return {"sent": count, "seconds": time.monotonic() - start, "cpu": _cpu() - cpu}


def main() -> None:
    what, *args = sys.argv[1:]
    if what == "smtp":
        result = smtp(Path(args[0]), int(args[1]))
    elif what == "sms":
        result = sms(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown baseline {what!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
