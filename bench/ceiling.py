"""The raw ceiling: aiosmtplib alone sending pre-built messages to an SMTP server."""

import asyncio
import time

import aiosmtplib


async def _worker(
    host: str, port: int, queue: list[tuple[str, str, bytes]], lock: asyncio.Lock
) -> int:
    sent = 0
    async with aiosmtplib.SMTP(hostname=host, port=port, use_tls=False, start_tls=False) as smtp:
        while True:
            async with lock:
                if not queue:
                    return sent
                sender, recipient, data = queue.pop()
            await smtp.sendmail(sender, [recipient], data)
            sent += 1


async def send_all(
    host: str, port: int, messages: list[tuple[str, str, bytes]], concurrency: int
) -> float:
    """Send every message over `concurrency` reused connections; returns messages per second."""
    queue = list(messages)
    lock = asyncio.Lock()
    started = time.perf_counter()
    counts = await asyncio.gather(*(_worker(host, port, queue, lock) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    assert sum(counts) == len(messages)
    return len(messages) / elapsed


async def best_rate(
    host: str,
    port: int,
    messages: list[tuple[str, str, bytes]],
    concurrencies: tuple[int, ...] = (4, 16, 50),
) -> tuple[float, int]:
    """The best rate over a few concurrency levels, and the level that reached it."""
    results = [(await send_all(host, port, messages, c), c) for c in concurrencies]
    return max(results)
