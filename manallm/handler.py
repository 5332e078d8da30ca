"""Django's ASGI handler, minus the per-request threads the gateway's hot path never needs.

Two costs measured with py-spy on the chat path, both from sync work Django does around
every request:
- Django enters a fresh ``ThreadSensitiveContext`` per request, so that work ran on a
  thread created and joined for that request alone. Without it, asgiref sends it to its
  one process-wide sync thread. The few sync views (admin, management API) then share
  that thread instead of getting one each: plenty for operator traffic.
- ``close_old_connections`` is a sync receiver of ``request_started`` and
  ``request_finished``, so each of them cost a thread hop. The DB-free paths
  (``DB_FREE_PATHS``: chat, embeddings, models, health, metrics) skip it; every other
  request still gets it, so connection ageing and health checks work as in Django.
"""
import contextvars

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections

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


async def _close_old_connections(**kwargs):
    if not _db_free.get():
        await sync_to_async(close_old_connections)()


def get_asgi_application():
    django.setup(set_prefix=False)
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    signals.request_started.connect(_close_old_connections)
    signals.request_finished.connect(_close_old_connections)
    return GatewayASGIHandler()
