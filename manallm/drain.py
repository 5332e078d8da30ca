"""Graceful stop, the part the views see: the SSE streams a stopping server still has open.

``manallm.serve`` drains a SIGTERM'd process (README#running-several-replicas): it stops
listening, lets in-flight requests finish for up to SHUTDOWN_GRACE seconds, then calls
``end_streams``. Each stream still open is interrupted where it waits for its next event
and, instead of being cut, ends with ``SHUTDOWN_EVENT`` and ``[DONE]``, so a client can
tell an interrupted answer from a complete one.

A stream registers the task that sends it (``stream_opened``, once per stream: a set
insertion); nothing runs per chunk.
"""
import asyncio
from typing import Any

SHUTDOWN_EVENT: dict[str, Any] = {"error": {
    "message": "The server is shutting down; this stream was ended before its answer was complete.",
    "type": "server_shutdown", "code": "shutting_down", "param": None}}

_open: set[asyncio.Task] = set()
_ending: set[asyncio.Task] = set()


def stream_opened() -> asyncio.Task:
    """Register the current task as sending an open stream; pass it to ``stream_closed``."""
    task = asyncio.current_task()
    _open.add(task)
    return task


def stream_closed(task: asyncio.Task) -> None:
    _open.discard(task)
    _ending.discard(task)


def ending(task: asyncio.Task) -> bool:
    """True when ``task`` was cancelled by ``end_streams`` (not by its client leaving).

    The stream then writes its last events, so the cancellation is taken back.
    """
    if task not in _ending:
        return False
    _ending.discard(task)
    task.uncancel()
    return True


def end_streams() -> int:
    """Interrupt every open stream so it ends with ``SHUTDOWN_EVENT``; how many there were."""
    tasks = [task for task in _open if not task.done()]
    for task in tasks:
        _ending.add(task)
        task.cancel()
    return len(tasks)
