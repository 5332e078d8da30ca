"""With REDIS_URL, a change committed in one process reaches the others at once.

Both gateways poll only every 30 s here, so anything seen within a second came over
the channel layer. Needs a redis-server binary (.ci/run installs one when it can).
"""
import httpx
import pytest

from tests.helpers import chat, wait_for

@pytest.fixture
def pair(make_server, tmp_path, redis_url, fake):
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    env = {"REDIS_URL": redis_url, "STATE_POLL_INTERVAL": "30", "RETRIES": "0"}
    a = make_server(env=env, database=database, name="a")
    b = make_server(env=env, database=database, name="b", prepare=False)
    return a, b


def test_an_alias_saved_in_one_process_is_served_by_the_other_at_once(pair):
    a, b = pair
    body = {"description": "pushed", "chain": ["groq/pushed-model"]}
    assert httpx.put(f"{a.url}/v1/aliases/mana/pushed", json=body).status_code == 201

    def served_by_b():
        reply = httpx.post(f"{b.url}/v1/chat/completions",
                           json=chat("mana/pushed"))
        return reply.status_code == 200 and reply.json()["model"] == "groq/pushed-model"

    assert wait_for(served_by_b, timeout=1.0)


def test_a_breaker_tripped_in_one_process_is_seen_by_the_other_at_once(pair, fake):
    a, b = pair
    fake.fault("groq", "tripped", status=500)
    for _ in range(2):  # BREAKER_FAILURE_THRESHOLD
        httpx.post(f"{a.url}/v1/chat/completions",
                   json=chat("groq/tripped"))

    def open_in_b():
        models = httpx.get(f"{b.url}/v1/health").json()["providers"]["groq"]["models"]
        return models.get("tripped", {}).get("status") == "unhealthy"

    assert wait_for(open_in_b, timeout=1.0)
