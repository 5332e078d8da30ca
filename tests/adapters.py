"""Helpers shared by the adapter tests."""
import asyncio
import time

from tests.server import free_port


def unused_port():
    """A loopback port nothing listens on (connections to it are refused)."""
    return free_port()


def user(text):
    return {"messages": [{"role": "user", "content": text}]}


async def collect(iterator):
    return [chunk async for chunk in iterator]


def text_of(chunks):
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


async def eventually(predicate, timeout=3.0):
    """Poll a condition another party changes (the upstream seeing a disconnect)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
