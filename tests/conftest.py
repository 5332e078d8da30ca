import pytest

from tests.server import Server, provider_env

pytest_plugins = ["tests.fake_fixtures"]


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with no adapters, no poller and empty caches in this process."""
    from manallm import runtime
    from providers import registry
    from routing import catalog

    registry.reset()
    runtime.stop()
    catalog.clear()
    yield
    registry.reset()
    runtime.stop()


@pytest.fixture
def make_server(tmp_path, fake_upstream):
    """Start real gateway processes: make_server(env={...}, database=None, prepare=True)."""
    servers = []

    def make(env=None, database=None, prepare=True, name="gw"):
        server = Server(tmp_path / name, {**provider_env(fake_upstream.url), **(env or {})}, database)
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
