"""Issue 2: import_aliases / export_aliases / import_aliases_if_empty (README#commands, README#aliases-file)."""
import io

import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, call_command

from routing import aliasfile
from routing.models import Alias, ChainEntry
from routing.validators import EntrySpec

DOC = {
    "aliases": {
        "mana/fast-text": {"description": "Short answers", "chain": [
            "ollama/qwen2.5:7b",
            {"target": "groq/llama-3.1-8b-instant", "enabled": False},
            {"target": "openrouter/anthropic/claude-3-haiku", "first_token_timeout": 10},
        ]},
        "mana/long-form": {"description": "Long", "chain": ["ollama/gemma3:12b", "groq/llama-3.3-70b-versatile"]},
    },
    "default": "mana/fast-text",
}


def write(path, data):
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run(*args):
    out = io.StringIO()
    call_command("import_aliases", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def db_state():
    return {alias.name: (alias.description, alias.is_default, tuple(alias.specs()))
            for alias in Alias.objects.prefetch_related("entries")}


@pytest.mark.django_db
def test_import_counts_and_idempotence(tmp_path):
    path = write(tmp_path / "a.yaml", DOC)
    out = run(path)
    assert "create mana/fast-text" in out and "create mana/long-form" in out
    assert "default (none) -> mana/fast-text" in out
    assert "created 2, updated 0, unchanged 0, deleted 0" in out
    state = db_state()
    assert state["mana/fast-text"] == ("Short answers", True, (
        EntrySpec("ollama/qwen2.5:7b"),
        EntrySpec("groq/llama-3.1-8b-instant", enabled=False),
        EntrySpec("openrouter/anthropic/claude-3-haiku", first_token_timeout=10.0),
    ))
    assert state["mana/long-form"][1] is False
    positions = list(Alias.objects.get(name="mana/fast-text").entries.values_list("position", "target"))
    assert [p for p, _ in positions] == [0, 1, 2]

    # A second import of the same file changes nothing.
    out = run(path)
    assert out.strip() == "created 0, updated 0, unchanged 2, deleted 0"
    assert db_state() == state

    # Changing one alias's chain order and another's description: two updates.
    doc = yaml.safe_load(open(path))
    doc["aliases"]["mana/fast-text"]["chain"].reverse()
    doc["aliases"]["mana/long-form"]["description"] = "Longer"
    doc["aliases"]["mana/vision"] = {"chain": ["ollama/llava:7b"]}
    doc["default"] = "mana/vision"
    write(tmp_path / "a.yaml", doc)
    out = run(path)
    assert "update mana/fast-text" in out and "update mana/long-form" in out and "create mana/vision" in out
    assert "default mana/fast-text -> mana/vision" in out
    assert "created 1, updated 2, unchanged 0, deleted 0" in out
    state = db_state()
    assert state["mana/fast-text"][2][0] == EntrySpec("openrouter/anthropic/claude-3-haiku", first_token_timeout=10.0)
    assert state["mana/long-form"][0] == "Longer"
    assert [name for name, s in state.items() if s[1]] == ["mana/vision"]


@pytest.mark.django_db
def test_dry_run_prints_diff_and_writes_nothing(tmp_path):
    run(write(tmp_path / "a.yaml", DOC))
    before = db_state()
    doc = {"aliases": {"mana/fast-text": {"description": "changed", "chain": ["ollama/qwen2.5:7b"]},
                       "mana/new": {"chain": ["openai/gpt-4o-mini"]}},
           "default": "mana/new"}
    path = write(tmp_path / "b.yaml", doc)
    out = run(path, "--dry-run", "--prune")
    assert "create mana/new" in out
    assert "update mana/fast-text" in out
    assert "delete mana/long-form" in out
    assert "default mana/fast-text -> mana/new" in out
    assert "dry run, nothing written" in out and "created 1, updated 1, unchanged 0, deleted 1" in out
    assert db_state() == before


@pytest.mark.django_db
def test_prune(tmp_path, client):
    run(write(tmp_path / "a.yaml", DOC))
    # An alias made outside the file (API, admin) survives a plain import ...
    response = client.put("/v1/aliases/mana/extra", {"chain": ["together/meta-llama/Llama-3-8b"]},
                          content_type="application/json")
    assert response.status_code == 201
    Alias.objects.create(name="mana/admin-made").entries.create(position=0, target="ollama/llama3.1:8b")
    out = run(write(tmp_path / "a.yaml", DOC))
    assert "created 0, updated 0, unchanged 2, deleted 0" in out
    assert {"mana/extra", "mana/admin-made"} <= set(db_state())
    # ... and --prune removes what the file does not define, with their entries.
    out = run(str(tmp_path / "a.yaml"), "--prune")
    assert "delete mana/admin-made" in out and "delete mana/extra" in out
    assert "created 0, updated 0, unchanged 2, deleted 2" in out
    assert set(db_state()) == {"mana/fast-text", "mana/long-form"}
    assert not ChainEntry.objects.exclude(alias__name__in=["mana/fast-text", "mana/long-form"]).exists()


@pytest.mark.django_db
def test_prune_never_leaves_the_gateway_without_a_default(tmp_path):
    run(write(tmp_path / "a.yaml", DOC))
    before = db_state()
    lone = {"aliases": {"mana/only": {"chain": ["ollama/qwen2.5:7b"]}}}  # no default: key
    with pytest.raises(CommandError, match="default"):
        run(write(tmp_path / "b.yaml", lone), "--prune")
    assert db_state() == before
    out = run(write(tmp_path / "c.yaml", {**lone, "default": "mana/only"}), "--prune")
    assert "default mana/fast-text -> mana/only" in out
    assert set(db_state()) == {"mana/only"}


@pytest.mark.django_db
def test_invalid_file_changes_nothing(tmp_path):
    run(write(tmp_path / "a.yaml", DOC))
    before = db_state()
    doc = {"aliases": {
        "mana/aaa-new": {"chain": ["ollama/qwen2.5:7b"]},  # valid, sorts first
        "mana/fast-text": {"chain": ["groq/llama-3.1-8b-instant"]},  # a valid update
        "mana/zzz": {"chain": ["nope/model"]},  # the bad one
    }, "default": "mana/aaa-new"}
    path = write(tmp_path / "bad.yaml", doc)
    for args in ([path], [path, "--prune"], [path, "--dry-run"]):
        with pytest.raises(CommandError) as caught:
            run(*args)
        assert "alias 'mana/zzz' chain[0]: entry 'nope/model' names unknown provider 'nope'" in str(caught.value)
        assert db_state() == before


@pytest.mark.django_db
def test_apply_is_one_transaction(tmp_path, monkeypatch):
    """A failure half-way through the write rolls back what was already written."""
    run(write(tmp_path / "a.yaml", DOC))
    before = db_state()
    doc = {"aliases": {"mana/aaa": {"chain": ["ollama/qwen2.5:7b"]},
                       "mana/fast-text": {"chain": ["groq/llama-3.1-8b-instant"]}},
           "default": "mana/aaa"}
    path = write(tmp_path / "b.yaml", doc)
    original = Alias.set_chain
    calls = []

    def failing(self, specs):
        calls.append(self.name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(self, specs)

    monkeypatch.setattr(Alias, "set_chain", failing)
    with pytest.raises(RuntimeError):
        aliasfile.sync(path, prune=True)
    assert calls == ["mana/aaa", "mana/fast-text"]
    assert db_state() == before


@pytest.mark.django_db
def test_export_import_round_trip(tmp_path):
    run(write(tmp_path / "a.yaml", DOC))
    # Aliases made through the ORM (the admin's path) with options round-trip too.
    alias = Alias.objects.create(name="mana/orm", description="made in the admin")
    alias.entries.create(position=0, target="google/gemini-2.5-flash", first_token_timeout=2.5)
    alias.entries.create(position=1, target="openai/gpt-4o-mini", enabled=False)
    before = db_state()

    exported = tmp_path / "exported.yaml"
    err = io.StringIO()
    call_command("export_aliases", str(exported), stdout=io.StringIO(), stderr=err)
    assert f"wrote {exported}" in err.getvalue()
    data = yaml.safe_load(exported.read_text())
    assert data["default"] == "mana/fast-text"
    assert list(data["aliases"]) == sorted(data["aliases"])
    # Short string form without options, a mapping with only the options that are set.
    assert data["aliases"]["mana/fast-text"] == {"description": "Short answers", "chain": [
        "ollama/qwen2.5:7b",
        {"target": "groq/llama-3.1-8b-instant", "enabled": False},
        {"target": "openrouter/anthropic/claude-3-haiku", "first_token_timeout": 10.0},
    ]}
    assert "first_token_timeout: 10\n" in exported.read_text()  # as written, not 10.0
    assert data["aliases"]["mana/long-form"]["chain"] == ["ollama/gemma3:12b", "groq/llama-3.3-70b-versatile"]
    assert data["aliases"]["mana/orm"]["chain"] == [
        {"target": "google/gemini-2.5-flash", "first_token_timeout": 2.5},
        {"target": "openai/gpt-4o-mini", "enabled": False},
    ]

    # Importing the export is a no-op ...
    out = run(str(exported), "--prune")
    assert out.strip() == "created 0, updated 0, unchanged 3, deleted 0"
    assert db_state() == before

    # ... and rebuilds the same database from nothing.
    Alias.objects.all().delete()
    out = run(str(exported))
    assert "created 3, updated 0, unchanged 0, deleted 0" in out
    assert db_state() == before

    # Export to standard output: the same YAML.
    stdout = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(stdout):
        call_command("export_aliases")
    assert yaml.safe_load(stdout.getvalue()) == data


@pytest.mark.django_db
def test_stream_continuation_and_prefill_round_trip(tmp_path):
    doc = {"aliases": {
        "mana/cont": {"description": "", "stream_continuation": True, "chain": [
            "ollama/qwen2.5:7b", {"target": "groq/llama-3.1-8b-instant", "prefill": True}]},
        "mana/plain": {"description": "", "chain": [{"target": "ollama/gemma3:12b", "prefill": False}]},
    }}
    assert "created 2" in run(write(tmp_path / "a.yaml", doc))
    cont = Alias.objects.get(name="mana/cont")
    assert cont.stream_continuation and [e.prefill for e in cont.entries.all()] == [False, True]
    exported = tmp_path / "e.yaml"
    call_command("export_aliases", str(exported), stderr=io.StringIO())
    data = yaml.safe_load(exported.read_text())["aliases"]
    assert data["mana/cont"] == doc["aliases"]["mana/cont"]
    # Options at their defaults are not written: the short string form, no stream_continuation key.
    assert data["mana/plain"] == {"description": "", "chain": ["ollama/gemma3:12b"]}
    assert "stream_continuation" not in exported.read_text().split("mana/plain")[1]
    # Changing only the option is an update, and it is written.
    doc["aliases"]["mana/cont"]["stream_continuation"] = False
    doc["aliases"]["mana/cont"]["chain"][1] = "groq/llama-3.1-8b-instant"
    assert "update mana/cont\ncreated 0, updated 1, unchanged 1" in run(write(tmp_path / "a.yaml", doc))
    cont = Alias.objects.get(name="mana/cont")
    assert not cont.stream_continuation and not any(e.prefill for e in cont.entries.all())


@pytest.mark.django_db
def test_shipped_file_imports_and_round_trips(tmp_path):
    out = run(str(settings.BASE_DIR / "aliases.yaml"))
    assert "created 5, updated 0, unchanged 0, deleted 0" in out
    exported = tmp_path / "e.yaml"
    call_command("export_aliases", str(exported), stderr=io.StringIO())
    original = yaml.safe_load((settings.BASE_DIR / "aliases.yaml").read_text())
    assert yaml.safe_load(exported.read_text()) == {
        "aliases": dict(sorted(original["aliases"].items())), "default": original["default"]}


@pytest.mark.django_db
def test_import_default_path_is_aliases_file(tmp_path, settings):
    settings.ALIASES_FILE = write(tmp_path / "env.yaml", DOC)
    assert "created 2" in run()


@pytest.mark.django_db
def test_import_aliases_if_empty(tmp_path, settings):
    settings.ALIASES_FILE = write(tmp_path / "a.yaml", DOC)
    out = io.StringIO()
    call_command("import_aliases_if_empty", stdout=out)
    assert "created 2, updated 0, unchanged 0, deleted 0" in out.getvalue()
    before = db_state()

    # Not empty: the file is not read again, even when it changed (or broke).
    write(tmp_path / "a.yaml", {"aliases": {"mana/other": {"chain": ["ollama/x"]}}})
    out = io.StringIO()
    call_command("import_aliases_if_empty", stdout=out)
    assert "aliases present; not importing" in out.getvalue()
    write(tmp_path / "a.yaml", "- broken\n")
    call_command("import_aliases_if_empty", stdout=io.StringIO())
    assert db_state() == before


@pytest.mark.django_db
def test_import_aliases_if_empty_with_bad_file_fails(tmp_path, settings):
    settings.ALIASES_FILE = write(tmp_path / "a.yaml", "- broken\n")
    with pytest.raises(CommandError, match="root: the file must be a mapping"):
        call_command("import_aliases_if_empty", stdout=io.StringIO())
    assert not Alias.objects.exists()
