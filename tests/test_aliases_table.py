"""Issue 2: the in-memory alias registry serves without queries and follows every commit."""
import pytest
from django.db import transaction

from manallm.errors import ModelNotFound
from routing.models import Alias, ChainEntry, Revision
from routing.table import AliasTable, Entry, aliases


def make(name, chain, *, default=False):
    alias = Alias.objects.create(name=name, is_default=default)
    for i, target in enumerate(chain):
        alias.entries.create(position=i, target=target)
    return alias


def targets(name):
    return [entry.target for entry in aliases.resolve(name)[1]]


@pytest.mark.django_db
def test_resolve_makes_no_query(django_assert_num_queries):
    make("mana/fast-text", ["ollama/qwen2.5:7b", "groq/llama-3.1-8b-instant"], default=True)
    alias = make("mana/opts", ["openrouter/anthropic/claude-3-haiku"])
    ChainEntry.objects.filter(alias=alias).update(enabled=False, first_token_timeout=4)
    aliases.load()
    with django_assert_num_queries(0):
        assert aliases.resolve("mana/fast-text") == ("mana/fast-text", (
            Entry("ollama", "qwen2.5:7b"), Entry("groq", "llama-3.1-8b-instant")))
        assert aliases.resolve(None)[0] == "mana/fast-text"
        assert aliases.resolve("")[0] == "mana/fast-text"
        assert aliases.resolve("mana/opts")[1] == (Entry("openrouter", "anthropic/claude-3-haiku", False, 4.0),)
        assert aliases.resolve("openrouter/anthropic/claude-3-haiku") == (
            None, (Entry("openrouter", "anthropic/claude-3-haiku"),))
        assert aliases.resolve("gemma3:4b") == (None, (Entry("ollama", "gemma3:4b"),))
        with pytest.raises(ModelNotFound) as caught:
            aliases.resolve("mana/nope")
        assert "mana/fast-text" in caught.value.message and "mana/opts" in caught.value.message
        with pytest.raises(ModelNotFound):
            aliases.resolve("bogus/model")
        for _ in range(100):
            aliases.resolve("mana/fast-text")


@pytest.mark.django_db
def test_steady_state_poll_is_one_query(django_assert_num_queries):
    make("mana/a", ["ollama/a"])
    aliases.load()
    snapshot = aliases.snapshot
    with django_assert_num_queries(1):
        aliases.poll()
    assert aliases.snapshot is snapshot  # nothing moved: not reloaded


@pytest.mark.django_db
def test_no_default():
    make("mana/a", ["ollama/a"])
    aliases.load()
    with pytest.raises(ModelNotFound):
        aliases.resolve(None)


@pytest.mark.django_db(transaction=True)
def test_orm_commits_are_served():
    aliases.load()
    alias = make("mana/a", ["ollama/a"], default=True)
    assert targets("mana/a") == ["ollama/a"] and aliases.resolve(None)[0] == "mana/a"

    entry = alias.entries.create(position=1, target="groq/b")
    assert targets("mana/a") == ["ollama/a", "groq/b"]
    first = alias.entries.get(target="ollama/a")
    first.position = 2  # reorder: groq first
    first.save()
    assert targets("mana/a") == ["groq/b", "ollama/a"]

    entry.delete()
    assert targets("mana/a") == ["ollama/a"]
    alias.description = "changed"
    alias.save()
    assert aliases.snapshot.aliases["mana/a"].description == "changed"

    other = make("mana/b", ["openai/gpt-4o-mini"])
    other.is_default = True
    other.save()
    assert aliases.resolve(None)[0] == "mana/b"

    alias.delete()
    with pytest.raises(ModelNotFound):
        aliases.resolve("mana/a")


@pytest.mark.django_db(transaction=True)
def test_change_is_served_after_commit_not_before():
    make("mana/a", ["ollama/a"])
    aliases.load()
    with transaction.atomic():
        alias = Alias.objects.get(name="mana/a")
        alias.entries.create(position=1, target="groq/b")
        alias.entries.filter(target="ollama/a").delete()
        assert targets("mana/a") == ["ollama/a"]  # not committed yet
    assert targets("mana/a") == ["groq/b"]

    # A rolled-back change is never served.
    with pytest.raises(RuntimeError), transaction.atomic():
        make("mana/ghost", ["ollama/g"])
        raise RuntimeError
    with pytest.raises(ModelNotFound):
        aliases.resolve("mana/ghost")
    assert not Alias.objects.filter(name="mana/ghost").exists()


@pytest.mark.django_db(transaction=True)
def test_every_write_moves_the_revision():
    start = Revision.current()
    alias = make("mana/a", ["ollama/a"])
    assert Revision.current() > start
    now = Revision.current()
    alias.set_chain(alias.specs()[::-1])
    assert Revision.current() > now
    now = Revision.current()
    alias.delete()
    assert Revision.current() > now


@pytest.mark.django_db(transaction=True)
def test_poll_picks_up_another_process_write():
    """Another process's write: this process only sees the revision move."""
    make("mana/a", ["ollama/a"])
    other = AliasTable()  # stands for a second process's registry
    other.load()
    # Write the way another process would, with no signal reaching `other`.
    ChainEntry.objects.filter(alias__name="mana/a").update(target="groq/z")
    other.poll()
    assert [e.target for e in other.resolve("mana/a")[1]] == ["ollama/a"]  # revision did not move
    Revision.bump()  # as another process committing a change would
    other.poll()
    assert [e.target for e in other.resolve("mana/a")[1]] == ["groq/z"]


@pytest.mark.django_db(transaction=True)
def test_import_and_api_paths_refresh_the_registry(tmp_path, client):
    from django.core.management import call_command

    aliases.load()
    path = tmp_path / "a.yaml"
    path.write_text("aliases:\n  mana/x:\n    chain: [ollama/a, groq/b]\ndefault: mana/x\n")
    call_command("import_aliases", str(path), stdout=None)
    assert targets("mana/x") == ["ollama/a", "groq/b"] and aliases.resolve(None)[0] == "mana/x"
    path.write_text("aliases:\n  mana/x:\n    chain: [groq/b]\n  mana/y:\n    chain: [openai/c]\ndefault: mana/y\n")
    call_command("import_aliases", str(path), stdout=None)
    assert targets("mana/x") == ["groq/b"] and aliases.resolve(None)[0] == "mana/y"
    path.write_text("aliases:\n  mana/y:\n    chain: [openai/c]\ndefault: mana/y\n")
    call_command("import_aliases", str(path), "--prune", stdout=None)
    with pytest.raises(ModelNotFound):
        aliases.resolve("mana/x")
