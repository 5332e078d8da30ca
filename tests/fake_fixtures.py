"""pytest fixtures for the fake LLM upstream (register with
``pytest_plugins = ["tests.fake_fixtures"]`` in tests/conftest.py)."""

import pytest

from fixtures.fake_upstream import FakeUpstream


@pytest.fixture(scope="session")
def fake_upstream():
    """One FakeUpstream server (background thread) for the whole session."""
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake(fake_upstream):
    """The session FakeUpstream with faults and stats cleared."""
    fake_upstream.clear()
    yield fake_upstream
