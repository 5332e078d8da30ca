"""Usage attribution, /v1/usage and prices (README#consumers): per-request sums written as
hourly rows off the request path, nothing lost across a PostgreSQL outage, flushed on
SIGTERM; the report's filters, group_by, cost and client-key isolation; prices through the
aliases file (import, --dry-run, --prune, export) and the admin.
"""
import io
import signal
import sqlite3
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import pytest
import yaml
from django.core.management import call_command

from consumers import reports, usage as usage_module
from consumers.admin_usage import usage_summary
from consumers.models import Price, UsageHour
from consumers.prices import PriceError, validate_prices
from consumers.usage import UsageBook
from manallm.exchange import Exchange
from routing import aliasfile
from routing.validators import AliasError
from tests.helpers import FakeClock, add_consumer, assert_error, chat, key_served, new_consumer_key, sdk, wait_for

HOUR = datetime(2026, 3, 15, 12, tzinfo=timezone.utc)
ADMIN = "test-admin-key"


def finished(consumer="team", requested="mana/fast-text", target="groq/a", status=200, prompt=10, completion=5,
             cache=None, error_type=None, limited=None):
    ex = Exchange("request-id", consumer, "chat", requested=requested)
    ex.target, ex.status, ex.cache, ex.error_type, ex.limited = target, status, cache, error_type, limited
    ex.prompt_tokens, ex.completion_tokens = prompt, completion
    return ex


def table():
    return {(row.consumer, row.model, row.target): (row.requests, row.errors, row.prompt_tokens,
                                                    row.completion_tokens, row.cache_hits)
            for row in UsageHour.objects.all()}


# --- the book: what counts, and nothing lost -----------------------------------------------


@pytest.mark.django_db
def test_record_counts_errors_hits_and_not_the_refused(monkeypatch):
    book = UsageBook(FakeClock(HOUR.timestamp() + 10))
    for ex in (finished(), finished(status=503, target=None, prompt=0, completion=0),
               finished(error_type="stream_idle_timeout"), finished(error_type="client_disconnected"),
               finished(cache="hit", prompt=99, completion=99), finished(status=429, limited="rpm")):
        book.record(ex)
    assert book.flush() == 2
    assert table() == {("team", "mana/fast-text", "groq/a"): (4, 1, 30, 15, 1),
                       ("team", "mana/fast-text", ""): (1, 1, 0, 0, 0)}
    # A second process adding to the same hour's row increments it.
    other = UsageBook(FakeClock(HOUR.timestamp() + 20))
    other.record(finished())
    other.flush()
    assert table()[("team", "mana/fast-text", "groq/a")] == (5, 1, 40, 20, 1)
    assert UsageHour.objects.get(target="groq/a").hour == HOUR


@pytest.mark.django_db
def test_names_no_alias_or_provider_knows_share_one_row():
    """A client's typos (or a flood of invented names) answered 404 must not each grow a
    usage row and a metric label of their own."""
    book = UsageBook(FakeClock(HOUR.timestamp() + 10))
    for name in ("mana/typo", "mana/\u2028odd", "nope/" + "x" * 200):
        book.record(finished(requested=name, target=None, status=404, error_type="model_not_found",
                             prompt=0, completion=0))
    book.flush()
    assert table() == {("team", "(unknown model)", ""): (3, 3, 0, 0, 0)}


@pytest.mark.django_db
def test_a_refused_write_keeps_the_sums(monkeypatch):
    book = UsageBook(FakeClock(HOUR.timestamp()))
    book.record(finished())

    def down(batch):
        raise usage_module.IntegrityError("the database is away")  # any database error

    monkeypatch.setattr(usage_module, "write", down)
    with pytest.raises(Exception):
        book.flush()
    book.record(finished(prompt=1, completion=1))
    monkeypatch.undo()
    assert book.flush() == 1
    assert table() == {("team", "mana/fast-text", "groq/a"): (2, 0, 11, 6, 0)}


# --- reports: group_by, filters, cost ---------------------------------------------------


@pytest.fixture
def rows(db):
    def add(consumer, model, target, hour, prompt, completion, requests=1, errors=0):
        UsageHour.objects.create(consumer=consumer, model=model, target=target, hour=hour, requests=requests,
                                 errors=errors, prompt_tokens=prompt, completion_tokens=completion)

    later = HOUR.replace(hour=13)
    add("a", "mana/fast-text", "groq/priced", HOUR, 1_000_000, 500_000, requests=3)
    add("a", "mana/fast-text", "openai/unpriced", HOUR, 10, 0, errors=1)
    add("a", "mana/fast-text", "groq/priced", later, 2_000_000, 0)
    add("a", "groq/priced", "groq/priced", later, 0, 1_000_000)
    add("b", "mana/fast-text", "", later, 0, 0, errors=1)
    Price.objects.create(target="groq/priced", prompt=Decimal("0.05"), completion=Decimal("0.08"))


def test_report_groups_and_costs(rows):
    since, until = HOUR, HOUR.replace(hour=14)
    by_default = reports.usage_rows(since, until)
    assert by_default == [
        {"consumer": "a", "model": "groq/priced", "requests": 1, "errors": 0, "prompt_tokens": 0,
         "completion_tokens": 1_000_000, "cache_hits": 0, "cost": 0.08},
        # openai/unpriced served tokens and has no price: the row's cost is unknown.
        {"consumer": "a", "model": "mana/fast-text", "requests": 5, "errors": 1, "prompt_tokens": 3_000_010,
         "completion_tokens": 500_000, "cache_hits": 0, "cost": None},
        {"consumer": "b", "model": "mana/fast-text", "requests": 1, "errors": 1, "prompt_tokens": 0,
         "completion_tokens": 0, "cache_hits": 0, "cost": 0.0},
    ]
    by_target = reports.usage_rows(since, until, consumer="a", model="mana/fast-text", group_by=("target",))
    assert [(row["target"], row["requests"], row["cost"]) for row in by_target] == [
        ("groq/priced", 4, 0.19), ("openai/unpriced", 1, None)]
    by_hour = reports.usage_rows(since, until, group_by=("hour",))
    assert [(row["hour"], row["requests"]) for row in by_hour] == [("2026-03-15T12:00:00Z", 4),
                                                                   ("2026-03-15T13:00:00Z", 3)]
    # The hours overlapping [since, until): 12:30 still holds the 12:00 row, 13:00 ends before it.
    assert sum(row["requests"] for row in reports.usage_rows(HOUR.replace(minute=30), HOUR.replace(hour=13))) == 4


def test_usage_summary_is_safe_html(rows):
    UsageHour.objects.create(consumer="a", model="<script>x</script>", target="groq/priced",
                             hour=datetime.now(timezone.utc), requests=2, prompt_tokens=1000)
    html = usage_summary("a")
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>" not in html
    assert "last 24 hours" in html and "this month" in html and "$0.0001" in html


# --- prices: the aliases file and the admin ---------------------------------------------

DOC = {"aliases": {"mana/fast-text": {"description": "fast", "chain": ["groq/llama-3.1-8b-instant"]}},
       "default": "mana/fast-text",
       "prices": {"groq/llama-3.1-8b-instant": {"prompt": 0.05, "completion": 0.08},
                  "openrouter/anthropic/claude-3-haiku": {"prompt": 0.25, "completion": 1.25}}}


def write_yaml(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run_import(*args):
    out = io.StringIO()
    call_command("import_aliases", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_prices_round_trip_through_import_and_export(tmp_path):
    path = write_yaml(tmp_path / "a.yaml", DOC)
    assert "dry run" in run_import(path, "--dry-run") and not Price.objects.exists()
    out = run_import(path)
    assert "create price groq/llama-3.1-8b-instant" in out and "prices: created 2" in out
    assert aliasfile.export_data() == DOC
    exported = io.StringIO()
    aliasfile.dump(exported)
    assert yaml.safe_load(exported.getvalue()) == DOC

    changed = {**DOC, "prices": {"groq/llama-3.1-8b-instant": {"prompt": 0.06, "completion": 0.08}}}
    path = write_yaml(tmp_path / "b.yaml", changed)
    out = run_import(path)
    assert "update price groq/llama-3.1-8b-instant" in out and Price.objects.count() == 2  # no --prune
    out = run_import(path, "--prune")
    assert "delete price openrouter/anthropic/claude-3-haiku" in out
    assert aliasfile.export_data()["prices"] == changed["prices"]


@pytest.mark.parametrize("prices, field", [
    ({"groq/x": {"prompt": -1, "completion": 0}}, "prices.groq/x.prompt"),
    ({"groq/x": {"prompt": "cheap", "completion": 0}}, "prices.groq/x.prompt"),
    ({"groq/x": {"prompt": True, "completion": 0}}, "prices.groq/x.prompt"),
    ({"groq/x": {"prompt": 0.0000001, "completion": 0}}, "prices.groq/x.prompt"),
    ({"groq/x": {"prompt": 1e9, "completion": 0}}, "prices.groq/x.prompt"),
    ({"groq/x": {"prompt": 1}}, "prices.groq/x.completion"),
    ({"groq/x": {"prompt": 1, "completion": 1, "cached": 1}}, "prices.groq/x"),
    ({"no-slash": {"prompt": 1, "completion": 1}}, "prices.no-slash"),
    ({"groq/x\n": {"prompt": 1, "completion": 1}}, "prices"),
    ({"groq/" + "x" * 300: {"prompt": 1, "completion": 1}}, "prices"),
    (["groq/x"], "prices"),
])
def test_bad_prices_are_refused_naming_the_field(prices, field):
    with pytest.raises(PriceError) as info:
        validate_prices(prices)
    assert info.value.field == field


@pytest.mark.django_db
def test_a_bad_price_in_the_file_writes_nothing(tmp_path):
    path = write_yaml(tmp_path / "a.yaml", {**DOC, "prices": {"groq/x": {"prompt": -1, "completion": 0}}})
    with pytest.raises(AliasError) as info:
        aliasfile.sync(path)
    assert info.value.field == "prices.groq/x.prompt"
    assert not Price.objects.exists()


@pytest.mark.django_db
def test_price_admin_validates_with_the_one_validator(client, django_user_model):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    url = "/admin/consumers/price/add/"
    response = client.post(url, {"target": "groq/x", "prompt": "-1", "completion": "0.1"})
    assert response.status_code == 200 and not Price.objects.exists()
    response = client.post(url, {"target": "no slash", "prompt": "1", "completion": "0.1"})
    assert response.status_code == 200 and "provider/model" in response.content.decode()
    response = client.post(url, {"target": "groq/x", "prompt": "0.05", "completion": "0.08"})
    assert response.status_code == 302
    assert Price.objects.get(target="groq/x").completion == Decimal("0.08")


# --- end to end: /v1/usage on a real gateway ---------------------------------------------


def usage(server, key=ADMIN, **params):
    return httpx.get(f"{server.url}/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def tokens_of(completion):
    return completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_usage_api_filters_groups_costs_and_isolates(make_server, fake):
    gw = make_server(env={"MANA_LLM_ADMIN_KEY": ADMIN, "USAGE_FLUSH_SECONDS": "0.2"})
    bot, other = new_consumer_key(), new_consumer_key()
    add_consumer(gw, "bot", bot)
    add_consumer(gw, "other", other)
    gw.manage("shell", "-c", "from consumers.models import Price; "
                             "Price.objects.create(target='ollama/qwen2.5:7b', prompt=2, completion=4)")
    assert key_served(gw, "bot", bot) and key_served(gw, "other", other)
    answers = [sdk(gw, api_key=bot).chat.completions.create(**chat(text=f"hello {n}")) for n in range(3)]
    direct = sdk(gw, api_key=other).chat.completions.create(**chat("groq/llama-3.1-8b-instant"))
    assert {answer.model for answer in answers} == {"ollama/qwen2.5:7b"}
    prompt = sum(answer.usage.prompt_tokens for answer in answers)
    completion = sum(answer.usage.completion_tokens for answer in answers)

    def rows(**params):
        response = usage(gw, **params)
        assert response.status_code == 200, response.text
        return response.json()

    assert wait_for(lambda: sum(row["requests"] for row in rows()["rows"]) == 4, timeout=10), gw.logs()
    body = rows()
    assert body["group_by"] == ["consumer", "model"] and body["since"] < body["until"]
    assert body["rows"] == [
        {"consumer": "bot", "model": "mana/fast-text", "requests": 3, "errors": 0, "prompt_tokens": prompt,
         "completion_tokens": completion, "cache_hits": 0,
         "cost": pytest.approx((prompt * 2 + completion * 4) / 1e6)},
        {"consumer": "other", "model": "groq/llama-3.1-8b-instant", "requests": 1, "errors": 0,
         "prompt_tokens": direct.usage.prompt_tokens, "completion_tokens": direct.usage.completion_tokens,
         "cache_hits": 0, "cost": None},
    ]
    by_target = rows(group_by="target,hour", model="mana/fast-text")
    assert [(row["target"], row["requests"]) for row in by_target["rows"]] == [("ollama/qwen2.5:7b", 3)]
    assert set(by_target["rows"][0]) >= {"target", "hour"} and "consumer" not in by_target["rows"][0]
    assert rows(consumer="other", group_by="consumer")["rows"][0]["requests"] == 1
    assert rows(since="2000-01-01T00:00:00Z", until="946771200")["rows"] == []

    # A client key reads its own consumer's rows only; naming another is a 403.
    own = usage(gw, bot, group_by="consumer")
    assert own.status_code == 200 and [row["consumer"] for row in own.json()["rows"]] == ["bot"]
    assert_error(usage(gw, bot, consumer="other"), 403, "permission_denied", param="consumer")
    assert usage(gw, bot, consumer="bot").status_code == 200
    for params, param in (({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"),
                          ({"since": "99999999999999"}, "since"), ({"group_by": "consumer,cost"}, "group_by"),
                          ({"group_by": ""}, "group_by"), ({"since": "2030-01-01", "until": "2029-01-01"}, "since"),
                          ({"model": "x" * 301}, "model")):
        assert_error(usage(gw, **params), 400, "invalid_request_error", param=param)
    for key in (bot, other):
        assert key not in gw.logs()


# --- faults: a PostgreSQL outage, a graceful stop -----------------------------------------


def test_usage_held_through_a_postgres_outage(make_server, postgres, postgres_url, fake):
    """Two processes on one PostgreSQL: the rows of a PostgreSQL outage are written once it is
    back, both processes adding to the same hour's rows."""
    env = {"MANA_LLM_ADMIN_KEY": ADMIN, "USAGE_FLUSH_SECONDS": "0.2"}
    a = make_server(env=env, database=postgres_url, name="a")
    b = make_server(env=env, database=postgres_url, name="b", prepare=False)
    key = new_consumer_key()
    add_consumer(a, "held", key)
    assert key_served(a, "held", key) and key_served(b, "held", key)
    headers = {"Authorization": f"Bearer {key}"}

    def send(count):
        for n in range(count):
            server = (a, b)[n % 2]
            response = httpx.post(f"{server.url}/v1/chat/completions", json=chat(), headers=headers, timeout=20)
            assert response.status_code == 200, response.text

    send(4)
    postgres.stop()
    try:
        send(6)
    finally:
        postgres.start()

    def requests():
        response = usage(a, consumer="held")
        return response.json()["rows"][0]["requests"] if response.status_code == 200 and response.json()["rows"] else 0

    assert wait_for(lambda: requests() == 10, timeout=15), (requests(), a.logs()[-3000:], b.logs()[-3000:])
    assert usage(a, consumer="held", group_by="consumer,model,target").json()["rows"][0]["requests"] == 10


def test_sigterm_flushes_usage(tmp_path, fake_upstream, fake):
    from tests.server import gateway_server

    server = gateway_server(tmp_path, fake_upstream.url, {"USAGE_FLUSH_SECONDS": "3600"}).prepare().launch()
    try:
        for _ in range(3):
            assert httpx.post(f"{server.url}/v1/chat/completions", json=chat(), timeout=20).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.logs()
    finally:
        server.stop()
    database = server.database.removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        found = connection.execute("SELECT consumer, model, requests FROM consumers_usagehour").fetchall()
    assert found == [("anonymous", "mana/fast-text", 3)], server.logs()
    assert "usage flushed (1 rows)" in server.logs()
