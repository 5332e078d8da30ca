"""Django's ASGI handler, minus the per-request threads the gateway's hot path never needs.

Two costs measured with py-spy on the chat path, both from sync work Django does around
every request:
- Django enters a fresh ``ThreadSensitiveContext`` per request, so that work ran on a
  thread created and joined for that request alone. Without it, asgiref sends it to its
  one process-wide sync thread. The few sync views (admin, management API) then share
  that thread instead of getting one each: plenty for operator traffic.
- The sync receivers of ``request_started`` (``reset_queries``,
  ``close_old_connections``) and Django's ``response.close()`` (which sends
  ``request_finished``) each cost a thread hop. On the DB-free paths
  (``manallm.paths``: chat, embeddings, models, health, metrics) the receivers skip the
  database and the response is closed inline; every other request still gets Django's
  behaviour, so connection ageing and health checks work as usual.

``handle`` is a fork of Django's. ``FORKED_FROM`` records the Django version and the
hash of the upstream method it was taken from; ``check_fork`` (a system check, so
``manage.py check``, ``migrate`` and ``runserver`` run it, and a test) fails loudly when
either moves: re-read the upstream method, carry its change over, then update the record.

Every ASGI request also enters through ``on_request_started``: the process's background
state (``manallm.background``) is loaded before the first request is served.
"""
import asyncio
import contextvars
import hashlib
import inspect
import tempfile

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import checks, signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest, get_script_prefix
from django.db import close_old_connections, reset_queries
from django.urls import set_script_prefix

from . import background
from .paths import is_db_free

# What handle() was forked from: Django's major.minor and sha256 of the upstream source.
FORKED_FROM = ((5, 2), "98faeb5bef800331e6a8002fbc96b30e4122a23438ae45a047190a531ea11323")

_db_free = contextvars.ContextVar("manallm_db_free_request", default=False)
# True once get_asgi_application() has replaced Django's request_started receivers.
_owns_connection_housekeeping = False


class RequestBody(tempfile.SpooledTemporaryFile):
    """A request body as read from the ASGI server: ``received`` bytes in all, and
    ``too_large`` when that passed ``MAX_REQUEST_BYTES`` (the bytes were then dropped)."""

    received = 0
    too_large = False


class GatewayRequest(ASGIRequest):
    """Django's ASGI request, knowing its body's real size.

    A chunked body has no Content-Length, and DRF reads such a body as empty; the body
    has been read whole by now, so its length is known and set. ``body_too_large`` is
    what ``manallm.jsonbody`` answers with a 413 (README#endpoints, one limit for every
    body, chunked or not).
    """

    def __init__(self, scope, body_file):
        super().__init__(scope, body_file)
        self.body_too_large = getattr(body_file, "too_large", False)
        received = getattr(body_file, "received", 0)
        if received and not self.META.get("CONTENT_LENGTH"):
            self.META["CONTENT_LENGTH"] = str(received)


class GatewayASGIHandler(ASGIHandler):
    request_class = GatewayRequest

    async def read_body(self, receive):
        """Django's ``read_body``, keeping at most ``MAX_REQUEST_BYTES``: past that the rest
        is read and dropped (the server must take the whole request before it answers)
        and the body is marked too large, whether or not a Content-Length announced it."""
        limit = settings.MAX_REQUEST_BYTES
        body_file = RequestBody(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            chunk = message.get("body") or b""
            body_file.received += len(chunk)
            if body_file.received > limit and not body_file.too_large:
                body_file.too_large = True
                body_file.truncate(0)
            if chunk and not body_file.too_large:
                body_file.write(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        token = _db_free.set(is_db_free(scope.get("path", "")))
        try:
            await self.handle(scope, receive, send)
        finally:
            _db_free.reset(token)

    async def handle(self, scope, receive, send):
        """Django 5.2's ``ASGIHandler.handle``, closing DB-free responses inline."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        prefix = get_script_prefix(scope)
        if prefix or not _db_free.get():
            # An empty root_path is Django's default prefix ("/") already, and the DB-free
            # paths never reverse a URL: spared an asgiref Local write per request.
            set_script_prefix(prefix)
        # The gateway's own entry hook is awaited directly: asend would wrap it in a task
        # and a gather per request (~2 % of a chat request's CPU). Any other receiver of
        # request_started still gets the signal.
        await on_request_started(self.__class__, scope=scope)
        if signals.request_started.has_listeners(self.__class__):
            await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self._close(error_response)
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        # listen_for_disconnect() goes first so it is checked (and cancels) first.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                # Django calls task.result() and catches RequestAborted, which daphne's
                # http.disconnect after every answer makes the listener raise: re-raised
                # here, its traceback held this frame and with it the request, the response
                # and both tasks in a cycle only the garbage collector could free (~90
                # objects a request, most of the collector's work). Read, not re-raised.
                error = asyncio.CancelledError() if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, RequestAborted):
                    if isinstance(error, AssertionError):
                        body_file.close()
                    raise error
            else:
                task.cancel()  # lets a streaming view see the disconnect
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await self._close(response)
        body_file.close()

    async def _close(self, response):
        if _db_free.get():
            response.close()
        else:
            await sync_to_async(response.close)()


async def on_request_started(sender, **kwargs) -> None:
    """Where every ASGI request enters, before Django builds it (this handler's, and the
    async test client's): background state first, then the connection housekeeping.

    request_started is sent with asend: a sync receiver would always cost a hop.
    """
    if "scope" not in kwargs:
        return  # a sync request (Django's sync test client): nothing here concerns it
    await background.ensure_started()
    if _owns_connection_housekeeping:
        if settings.DEBUG:
            reset_queries()  # DEBUG's query log (nothing is logged without DEBUG)
        if not _db_free.get():
            await sync_to_async(close_old_connections)()


def _close_old_connections_finished(**kwargs):
    # request_finished is sent from response.close(), already on the sync thread
    # (asgiref carries the context variable there).
    if not _db_free.get():
        close_old_connections()


def get_asgi_application() -> GatewayASGIHandler:
    """Django's ``get_asgi_application`` for the gateway's handler (see the module docstring)."""
    global _owns_connection_housekeeping
    django.setup(set_prefix=False)
    signals.request_started.disconnect(reset_queries)
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    # ManallmConfig.ready() connects it for the async test client; this handler calls it itself.
    signals.request_started.disconnect(on_request_started)
    signals.request_finished.connect(_close_old_connections_finished)
    _owns_connection_housekeeping = True
    return GatewayASGIHandler()


def upstream_fingerprint() -> tuple[tuple[int, int], str]:
    """The installed Django's major.minor and sha256 of its ``ASGIHandler.handle``."""
    source = inspect.getsource(ASGIHandler.handle)
    return tuple(django.VERSION[:2]), hashlib.sha256(source.encode()).hexdigest()


def check_fork(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """System check: the forked ``handle`` still matches the Django it was taken from."""
    (version, digest), (forked_version, forked_digest) = upstream_fingerprint(), FORKED_FROM
    errors = []
    if version != forked_version:
        errors.append(checks.Error(
            f"manallm.handler.GatewayASGIHandler.handle is a fork of Django "
            f"{'.'.join(map(str, forked_version))}'s ASGIHandler.handle; Django "
            f"{'.'.join(map(str, version))} is installed.",
            hint="Compare the fork with the installed ASGIHandler.handle, carry any upstream change over, "
                 "then update manallm.handler.FORKED_FROM.",
            id="manallm.E001",
        ))
    if digest != forked_digest:
        errors.append(checks.Error(
            "Django's ASGIHandler.handle changed since manallm.handler.GatewayASGIHandler.handle was forked "
            f"from it (sha256 {digest}, fork recorded {forked_digest}).",
            hint="Carry the upstream change over to the fork, then update manallm.handler.FORKED_FROM.",
            id="manallm.E002",
        ))
    return errors
