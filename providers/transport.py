"""The wire under every adapter: pooled httpx clients over aiohttp's connection pool, one
per provider and event loop, and the one table saying what a transport failure means.

Measured on this machine against the fake upstream, one proxied chat request cost
1.06 ms of CPU through httpx's default transport (httpcore on anyio) and 0.28 ms
through httpx over aiohttp's pool (the httpx-aiohttp transport), whose HTTP parser is in
C. The adapters keep the httpx API; only the wire underneath changes.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from . import errors
from .base import redact_urls

logger = logging.getLogger("manallm.providers")

LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)

# --- what a transport failure means --------------------------------------------------------

# Transport exceptions -> the taxonomy, most specific first (as httpx maps httpcore's).
# httpx-aiohttp raises httpx exceptions ``from`` the aiohttp one, but files every
# ``aiohttp.ClientConnectionError`` under ``ConnectTimeout``, which would turn a reset
# into a connect failure (provider breaker, no retry): the aiohttp cause is read first.
# aiohttp's connector errors are also OS errors, and its timeouts asyncio timeouts.
TRANSPORT_ERRORS: tuple[tuple[type[BaseException], type[errors.ProviderError]], ...] = (
    (aiohttp.ConnectionTimeoutError, errors.ConnectError),
    (aiohttp.ClientConnectorError, errors.ConnectError),  # refused, DNS, unreachable
    (aiohttp.ServerTimeoutError, errors.Timeout),  # read timeout
    (aiohttp.ServerDisconnectedError, errors.ProtocolError),
    (aiohttp.ClientPayloadError, errors.ProtocolError),  # body cut short
    (aiohttp.ClientOSError, errors.ProtocolError),  # reset by peer
    (aiohttp.InvalidURL, errors.ConnectError),
    (aiohttp.ClientError, errors.ProtocolError),
    (httpx.ConnectError, errors.ConnectError),
    (httpx.ConnectTimeout, errors.ConnectError),
    (httpx.UnsupportedProtocol, errors.ConnectError),
    (httpx.ProxyError, errors.ConnectError),
    (httpx.InvalidURL, errors.ConnectError),
    (httpx.TimeoutException, errors.Timeout),  # read / write / pool
    (httpx.TransportError, errors.ProtocolError),  # reset, incomplete chunked body, ...
)

# What ``except`` clauses catch to hand an exception to ``transport_error``.
CAUGHT = (httpx.TransportError, httpx.InvalidURL, aiohttp.ClientError)

_MESSAGES = {
    errors.ConnectError: "{name}: cannot connect to {where}: {detail}",
    errors.Timeout: "{name}: no answer from {where} in time ({kind})",
    errors.ProtocolError: "{name}: connection to {where} failed: {detail} ({kind})",
}


def _classify(exc: BaseException) -> tuple[type[errors.ProviderError], BaseException] | None:
    for candidate in (exc.__cause__, exc):
        if candidate is None:
            continue
        for exception_class, error_class in TRANSPORT_ERRORS:
            if isinstance(candidate, exception_class):
                return error_class, candidate
    return None


def transport_error(exc: BaseException, *, name: str, where: str,
                    scrub: Callable[[str], str] = str) -> errors.ProviderError | None:
    """The taxonomy error for a transport exception, or None when ``exc`` is not one.

    ``where`` is the upstream's address (already free of credentials) and ``scrub``
    removes secrets from the exception's text.
    """
    found = _classify(exc)
    if found is None:
        return None
    error_class, cause = found
    kind = type(cause).__name__
    detail = scrub(str(cause) or kind)
    return error_class(_MESSAGES[error_class].format(name=name, where=where, detail=detail, kind=kind))


def safe_url(url: str) -> str:
    """The URL as a message may show it: no userinfo, no query string (base.redact_urls)."""
    return redact_urls(url)


# --- clients -------------------------------------------------------------------------------


class NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing.

    An upstream's cookies must not be stored by a client every consumer's requests share,
    and sent back on someone else's call. httpx keeps them by default, and reading them
    costs ~5 % of the gateway's CPU per plain request (an email.message per response).
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def client(*, timeout: float, connect_timeout: float, limits: httpx.Limits = LIMITS,
           **kwargs) -> httpx.AsyncClient:
    """A pooled ``httpx.AsyncClient`` on the aiohttp transport, keeping no cookies."""
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        transport=AiohttpTransport(limits=limits, verify=kwargs.pop("verify", True)),
        limits=limits,
        **kwargs,
    )
    # httpx wraps whatever jar it is given in a plain Cookies, so the jar is set after.
    http._cookies = NoCookies()
    return http


def untie(response: httpx.Response) -> None:
    """Drop a read and closed response's hold on its body stream.

    httpx's ``Response`` and the ``BoundAsyncStream`` it reads from refer to each other:
    without this, every upstream answer (with the aiohttp objects under it, ~40 in all)
    is a reference cycle only the garbage collector frees, and its collections were ~5 %
    of the gateway's CPU per request. Call it once the body was read or the response
    closed; nothing reads ``stream`` after that.
    """
    response.stream = None  # type: ignore[assignment]


T = TypeVar("T")


class ClientHolder(Generic[T]):
    """One pooled client per provider, made on first use inside the running event loop.

    A client's connections belong to the loop that opened them: if the provider is later
    used from another loop (tests, a management command) a fresh client is made for that
    loop. ``aclose`` (called by ``providers.registry.aclose_all``) closes the client when
    it runs in the client's loop; a client of a loop that is gone is just dropped.
    """

    def __init__(self, name: str, open: Callable[[], T], close: Callable[[T], Awaitable[None]],
                 is_closed: Callable[[T], bool]):
        self.name = name
        self._open = open
        self._close = close
        self._is_closed = is_closed
        self._client: T | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._is_closed(self._client):
            if self._client is not None and not self._is_closed(self._client):
                logger.debug("%s: new HTTP client for a new event loop", self.name)
            self._client = self._open()
            self._loop = loop
        return self._client

    @property
    def current(self) -> T | None:
        """The client made last, if any (without making one)."""
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        loop, self._loop = self._loop, None
        if client is None or self._is_closed(client):
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            await self._close(client)
