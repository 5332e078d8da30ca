"""The pooled upstream client (providers.transport) on a real loopback server."""
from aiohttp import web

from providers import transport


async def test_an_upstream_cookie_is_never_sent_back_on_a_later_call():
    seen = []

    async def handler(request):
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "consumer-a-secret")
        return response

    app = web.Application()
    app.router.add_route("*", "/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = transport.client(timeout=5, connect_timeout=2)
    try:
        for _ in range(2):
            response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.headers.get("set-cookie", "").startswith("session=")
        assert seen == [None, None]  # a shared client must not carry one consumer's cookie to the next
        assert not client.cookies
    finally:
        await client.aclose()
        await runner.cleanup()
