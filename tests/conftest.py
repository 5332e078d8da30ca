import subprocess

import httpx
import pytest

from tests.helpers import free_port, redis_up, server_binary, wait_for
from tests.server import gateway_server

pytest_plugins = ["tests.fake_fixtures"]


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no adapters, no poller and empty caches in this process."""
    from manallm import background
    from providers import registry
    from routing import catalog

    registry.reset()
    background.stop()
    catalog.clear()
    yield
    registry.reset()
    background.stop()


@pytest.fixture
def make_server(tmp_path, fake_upstream):
    """Start real gateway processes: make_server(env={...}, database=None, prepare=True)."""
    servers = []

    def make(env=None, database=None, prepare=True, name="gw"):
        server = gateway_server(tmp_path / name, fake_upstream.url, env, database)
        if prepare:
            server.prepare()
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(make_server, fake):
    """One gateway process with every provider pointed at the fake upstream."""
    return make_server()


@pytest.fixture
def http(gw, fake):
    """An httpx client for the module's ``gw`` gateway (see tests.server.module_gateway)."""
    with httpx.Client(base_url=gw.url, timeout=20) as client:
        yield client


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server of this test's own, on a free loopback port."""
    binary = server_binary("redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: redis_up(port), timeout=10), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
