"""Helpers shared by the adapter tests."""
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
