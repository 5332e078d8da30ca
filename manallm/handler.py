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
  (``DB_FREE_PATHS``: chat, embeddings, models, health, metrics) the receivers skip the
  database and the response is closed inline; every other request still gets Django's
  behaviour, so connection ageing and health checks work as usual.
"""
import asyncio
import contextvars

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections, reset_queries
from django.urls import set_script_prefix

DB_FREE_PATHS = ("/v1/chat/", "/v1/embeddings", "/v1/models", "/health", "/v1/health", "/metrics")
_db_free = contextvars.ContextVar("manallm_db_free_request", default=False)


class GatewayASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        path = scope.get("path", "")
        # /v1/health/<provider>/reset writes through the ORM: not DB-free.
        token = _db_free.set(path.startswith(DB_FREE_PATHS) and not path.endswith("/reset"))
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
        set_script_prefix(get_script_prefix(scope))
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
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
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


async def _request_started(**kwargs):
    # request_started is sent with asend: a sync receiver would always cost a hop.
    reset_queries()  # in-memory only: DEBUG's query log
    if not _db_free.get():
        await sync_to_async(close_old_connections)()


def _close_old_connections_finished(**kwargs):
    # request_finished is sent from response.close(), already on the sync thread
    # (asgiref carries the context variable there).
    if not _db_free.get():
        close_old_connections()


def get_asgi_application():
    django.setup(set_prefix=False)
    signals.request_started.disconnect(reset_queries)
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    signals.request_started.connect(_request_started)
    signals.request_finished.connect(_close_old_connections_finished)
    return GatewayASGIHandler()
