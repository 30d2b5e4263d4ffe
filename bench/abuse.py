"""The endpoint under abuse, on 127.0.0.1: what one ordinary client gets while others misbehave.

    python -m bench.abuse --url http://127.0.0.1:8000 [--phase-s 20] [--slow 200] [--burst 256] [--explainers 16]

The key comes from ``$SENTIMENT_API_KEY``. Phases, each bounded in time and count, while one
ordinary client sends single-review predictions back to back:

- ``alone``: nothing else (the ordinary client's unloaded latency);
- ``slow uploads``: ``--slow`` connections without the key, each sending its headers
  (``Content-Length: 1000000``) and then one byte a second;
- ``burst``: ``--burst`` clients at once, each sending requests back to back (closed loop), waiting
  as a 503's ``Retry-After`` asks, as every client here does;
- ``explain flood``: ``--explainers`` clients asking ``explain: true`` on long reviews.

Printed per phase: the ordinary client's answered requests, p50 and p99, and the others' statuses
(with the p99 time to a 503), then the ordinary client's first answer after the burst. Every
figure is measured in the same run against the same server; nothing is compared with a number
from elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

PHASES = ("alone", "slow uploads", "burst", "explain flood")
REVIEW = "A fun brain candy movie, good dialog and a plot that never drags; I laughed a lot."
LONG_SENTENCE = "The acting was uneven but the score and the photography carried it. "


@dataclass
class Calls:
    """Statuses and latencies (seconds) of a set of requests."""

    statuses: Counter[int | str] = field(default_factory=Counter)
    latencies: dict[int | str, list[float]] = field(default_factory=dict)

    def add(self, status: int | str, seconds: float) -> None:
        """Record one request."""
        self.statuses[status] += 1
        self.latencies.setdefault(status, []).append(seconds)

    def quantile(self, status: int | str, q: float) -> float | None:
        """The ``q`` quantile of the latencies of requests that got ``status`` (None if none did)."""
        seen = self.latencies.get(status)
        return float(np.quantile(seen, q)) if seen else None


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any], calls: Calls, timeout_s: float) -> float:
    """One POST; its status (or the exception's name) and latency go to ``calls``. Returns the
    seconds its ``Retry-After`` asks to wait (0 without one)."""
    started = time.monotonic()
    retry_after = 0.0
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            await response.read()
            status: int | str = response.status
            retry_after = float(response.headers.get("Retry-After", 0))
            if status == 503 and "Retry-After" not in response.headers:
                status = "503 without Retry-After"
    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
        status = type(err).__name__
    calls.add(status, time.monotonic() - started)
    return retry_after


async def loop_until(deadline: float, session: aiohttp.ClientSession, url: str, body: dict[str, Any], calls: Calls,
                     timeout_s: float) -> None:
    """Send ``body`` back to back until ``deadline`` (monotonic seconds), waiting as a ``Retry-After`` asks
    (as HTTP clients with retries do; a client that ignores it only measures how fast 503s come back)."""
    while time.monotonic() < deadline:
        retry_after = await post(session, url, body, calls, timeout_s)
        await asyncio.sleep(min(retry_after, max(0.0, deadline - time.monotonic())))


async def slow_upload(url: str, deadline: float, statuses: Counter[str]) -> None:
    """A client without the key that sends its headers, then a byte a second, until ``deadline``."""
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError as err:
        statuses[type(err).__name__] += 1
        return
    writer.write(f"POST /v1/predict HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
                 "Content-Length: 1000000\r\n\r\n".encode())
    try:
        while time.monotonic() < deadline:
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
            except asyncio.TimeoutError:
                writer.write(b" ")  # one more byte of the body
                await writer.drain()
                continue
            statuses[line.decode(errors="replace").split(" ")[1] if line else "closed"] += 1
            return
        statuses["still open"] += 1
    except (ConnectionError, IndexError) as err:
        statuses[type(err).__name__] += 1
    finally:
        writer.close()


async def phase(url: str, key: str, seconds: float,
                others: Callable[[float, aiohttp.ClientSession], Awaitable[Any]] | None = None) -> tuple[Calls, Any]:
    """The ordinary client for ``seconds`` while the coroutine ``others(deadline, session)`` runs."""
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        deadline = time.monotonic() + seconds
        ordinary = Calls()
        tasks = [loop_until(deadline, session, f"{url}/v1/predict", {"text": REVIEW}, ordinary, 60.0)]
        if others is not None:
            tasks.append(others(deadline, session))
        results = await asyncio.gather(*tasks)
    return ordinary, results[1] if others is not None else None


def flood(url: str, body: dict[str, Any], clients: int) -> Callable[[float, aiohttp.ClientSession], Awaitable[Calls]]:
    """Others for :func:`phase`: ``clients`` sending ``body`` back to back."""
    async def others(deadline: float, session: aiohttp.ClientSession) -> Calls:
        calls = Calls()
        await asyncio.gather(*(loop_until(deadline, session, f"{url}/v1/predict", body, calls, 120.0)
                               for _ in range(clients)))
        return calls
    return others


def slow_uploads(url: str, clients: int) -> Callable[[float, aiohttp.ClientSession], Awaitable[Counter[str]]]:
    """Others for :func:`phase`: ``clients`` slow uploads without the key (:func:`slow_upload`)."""
    async def others(deadline: float, _: aiohttp.ClientSession) -> Counter[str]:
        statuses: Counter[str] = Counter()
        await asyncio.gather(*(slow_upload(url, deadline, statuses) for _ in range(clients)))
        return statuses
    return others


async def first_answer(url: str, key: str) -> tuple[Calls, float]:
    """One ordinary request and the seconds until its answer."""
    started = time.monotonic()
    calls = Calls()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        await post(session, f"{url}/v1/predict", {"text": REVIEW}, calls, 60.0)
    return calls, time.monotonic() - started


async def run(url: str, key: str, seconds: float, slow: int, burst: int, explainers: int,
              long_chars: int = 1000, phases: tuple[str, ...] = PHASES) -> dict[str, Any]:
    """The ``phases`` in turn; returns each phase's ordinary client and the others' statuses. The
    explained reviews are ``long_chars`` characters long."""
    long_review = (LONG_SENTENCE * (long_chars // len(LONG_SENTENCE) + 1))[:long_chars].strip()
    others = {"alone": None, "slow uploads": slow_uploads(url, slow), "burst": flood(url, {"text": REVIEW}, burst),
              "explain flood": flood(url, {"texts": [long_review] * 4, "explain": True}, explainers)}
    out: dict[str, Any] = {}
    for name in phases:
        out[name] = await phase(url, key, seconds, others[name])
        if name == "burst":
            out["after burst"] = await first_answer(url, key)
    return out


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Plain figures per phase (JSON-ready)."""
    def calls(c: Calls) -> dict[str, Any]:
        return {"statuses": {str(k): v for k, v in c.statuses.items()}, "p50_s": c.quantile(200, 0.5),
                "p99_s": c.quantile(200, 0.99), "p99_503_s": c.quantile(503, 0.99)}

    out: dict[str, Any] = {}
    for name, (ordinary, other) in results.items():
        out[name] = {"ordinary": calls(ordinary)}
        if name == "after burst":
            out[name]["first_answer_s"] = other
        elif other is not None:
            out[name]["others"] = dict(other) if isinstance(other, Counter) else calls(other)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the phases against ``--url`` and print them; returns :func:`summary`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="The endpoint, on 127.0.0.1.")
    parser.add_argument("--phase-s", type=float, default=20.0, help="Seconds per phase.")
    parser.add_argument("--slow", type=int, default=200, help="Slow unauthenticated uploads.")
    parser.add_argument("--burst", type=int, default=256, help="Clients at once in the burst.")
    parser.add_argument("--explainers", type=int, default=16, help="Clients asking explain on long reviews.")
    parser.add_argument("--long-chars", type=int, default=1000,
                        help="Characters of each explained review (4 of them must fit explain_max_windows).")
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be on this machine (127.0.0.1): this tool floods what it targets")
    key = os.environ.get("SENTIMENT_API_KEY", "")
    result = summary(asyncio.run(run(args.url.rstrip("/"), key, args.phase_s, args.slow, args.burst, args.explainers,
                                          args.long_chars)))
    for name, figures in result.items():
        print(f"{name}: {json.dumps(figures)}")
    return result


if __name__ == "__main__":
    main()
