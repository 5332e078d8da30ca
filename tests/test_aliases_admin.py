"""Issue 2: the Django admin edits aliases with their chain inline (README#aliases-file)."""
import re

import pytest

from routing.models import Alias, ChainEntry
from routing.table import aliases
from routing.validators import EntrySpec

ADD = "/admin/routing/alias/add/"
LIST = "/admin/routing/alias/"


@pytest.fixture
def admin(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def post_alias(client, url, name, rows, *, description="", is_default=False, initial=0, stream_continuation=False):
    data = {"name": name, "description": description, "entries-TOTAL_FORMS": str(len(rows)),
            "entries-INITIAL_FORMS": str(initial), "entries-MIN_NUM_FORMS": "0", "entries-MAX_NUM_FORMS": "1000"}
    if is_default:
        data["is_default"] = "on"
    if stream_continuation:
        data["stream_continuation"] = "on"
    for i, row in enumerate(rows):
        for key, value in row.items():
            if value is False or value is None:
                continue
            data[f"entries-{i}-{key}"] = "on" if value is True else str(value)
    return client.post(url, data)


def row_of(html, name):
    """The changelist table row that links to this alias."""
    for row in re.findall(r"<tr.*?</tr>", html, re.S):
        if f">{name}</a>" in row:
            return row
    raise AssertionError(f"no row for {name}")


@pytest.mark.django_db
def test_add_form_has_chain_inline(admin):
    response = admin.get(ADD)
    assert response.status_code == 200
    html = response.content.decode()
    for field in ("entries-TOTAL_FORMS", "entries-INITIAL_FORMS", "entries-0-position", "entries-0-target",
                  "entries-0-enabled", "entries-0-first_token_timeout"):
        assert f'name="{field}"' in html, field


@pytest.mark.django_db(transaction=True)
def test_add_then_edit_and_reorder(admin):
    aliases.load()
    response = post_alias(admin, ADD, "mana/admin-made", [
        {"position": 0, "target": "ollama/qwen2.5:7b", "enabled": True},
        {"position": 1, "target": "groq/llama-3.1-8b-instant", "enabled": False, "first_token_timeout": 7},
        {"position": 2, "target": "openrouter/anthropic/claude-3-haiku", "enabled": True},
    ], description="made here", is_default=True)
    assert response.status_code == 302, response.context and response.context.get("errors")
    alias = Alias.objects.get(name="mana/admin-made")
    assert alias.description == "made here" and alias.is_default
    assert alias.specs() == [EntrySpec("ollama/qwen2.5:7b"),
                             EntrySpec("groq/llama-3.1-8b-instant", False, 7.0),
                             EntrySpec("openrouter/anthropic/claude-3-haiku")]
    # The process that committed serves the change at once (signals -> registry).
    assert aliases.snapshot.default == "mana/admin-made"
    assert [e.target for e in aliases.snapshot.aliases["mana/admin-made"].chain][0] == "ollama/qwen2.5:7b"

    # Reorder: the cloud entry first, the local one last; drop the disabled one.
    ids = list(alias.entries.values_list("id", flat=True))
    change = f"/admin/routing/alias/{alias.pk}/change/"
    assert admin.get(change).status_code == 200
    response = post_alias(admin, change, "mana/admin-made", [
        {"id": ids[0], "alias": alias.pk, "position": 5, "target": "ollama/qwen2.5:7b", "enabled": True},
        {"id": ids[1], "alias": alias.pk, "position": 1, "target": "groq/llama-3.1-8b-instant",
         "enabled": False, "DELETE": True},
        {"id": ids[2], "alias": alias.pk, "position": 0, "target": "openrouter/anthropic/claude-3-haiku",
         "enabled": True},
    ], description="made here", is_default=True, initial=3)
    assert response.status_code == 302, response.context and response.context.get("errors")
    assert [spec.target for spec in alias.specs()] == ["openrouter/anthropic/claude-3-haiku", "ollama/qwen2.5:7b"]
    assert [e.target for e in aliases.snapshot.aliases["mana/admin-made"].chain] == [
        "openrouter/anthropic/claude-3-haiku", "ollama/qwen2.5:7b"]
    assert aliases.resolve("mana/admin-made")[1][0].target == "openrouter/anthropic/claude-3-haiku"


@pytest.mark.django_db(transaction=True)
def test_stream_continuation_checkbox_and_prefill_column(admin):
    aliases.load()
    html = admin.get(ADD).content.decode()
    assert 'name="stream_continuation"' in html and 'name="entries-0-prefill"' in html
    response = post_alias(admin, ADD, "mana/cont", [
        {"position": 0, "target": "ollama/qwen2.5:7b", "enabled": True},
        {"position": 1, "target": "groq/llama-3.1-8b-instant", "enabled": True, "prefill": True},
    ], stream_continuation=True)
    assert response.status_code == 302, response.context and response.context.get("errors")
    alias = Alias.objects.get(name="mana/cont")
    assert alias.stream_continuation
    assert alias.specs() == [EntrySpec("ollama/qwen2.5:7b"), EntrySpec("groq/llama-3.1-8b-instant", prefill=True)]
    # The process that committed serves it at once: the router reads both from memory.
    view = aliases.snapshot.aliases["mana/cont"]
    assert view.stream_continuation and [e.prefill for e in view.chain] == [False, True]
    assert aliases.continuation_chain("mana/cont") == view.chain


@pytest.mark.django_db
def test_validation_errors_shown_on_form(admin):
    response = post_alias(admin, ADD, "mana/x", [{"position": 0, "target": "bogus/model", "enabled": True}])
    assert response.status_code == 200
    html = response.content.decode()
    assert "errorlist" in html and "unknown provider &#x27;bogus&#x27;" in html

    response = post_alias(admin, ADD, "mana/x", [])
    assert response.status_code == 200
    html = response.content.decode()
    assert "alias &#x27;mana/x&#x27; chain: must be a non-empty list" in html

    response = post_alias(admin, ADD, "mana/x/y", [{"position": 0, "target": "groq/m", "enabled": True}])
    assert response.status_code == 200
    assert "is not a valid alias name" in response.content.decode()
    assert not Alias.objects.exists()


@pytest.mark.django_db
def test_changelist_shows_chain_default_and_searches(admin):
    fast = Alias.objects.create(name="mana/fast-text", description="Short answers", is_default=True)
    fast.entries.create(position=0, target="ollama/qwen2.5:7b")
    fast.entries.create(position=1, target="groq/llama-3.1-8b-instant", enabled=False)
    long = Alias.objects.create(name="mana/long-form", description="Long")
    long.entries.create(position=0, target="ollama/gemma3:12b")
    long.entries.create(position=1, target="openrouter/anthropic/claude-3.5-haiku")

    html = admin.get(LIST).content.decode()
    fast_row, long_row = row_of(html, "mana/fast-text"), row_of(html, "mana/long-form")
    assert "ollama/qwen2.5:7b → groq/llama-3.1-8b-instant (disabled)" in fast_row
    assert "ollama/gemma3:12b → openrouter/anthropic/claude-3.5-haiku" in long_row
    # The default is marked (the boolean column), the other is not.
    assert 'alt="True"' in fast_row and 'alt="False"' in long_row

    def names(query):
        page = admin.get(LIST, {"q": query}).content.decode()
        return sorted(set(re.findall(r">(mana/[\w.:-]+)</a>", page)))

    assert names("long") == ["mana/long-form"]
    assert names("mana/fast-text") == ["mana/fast-text"]
    assert names("claude-3.5") == ["mana/long-form"]  # by target
    assert names("ollama") == ["mana/fast-text", "mana/long-form"]  # one row each, not one per entry
    assert names("nothing-like-this") == []
    filtered = admin.get(LIST, {"is_default__exact": "1"}).content.decode()
    assert sorted(set(re.findall(r">(mana/[\w.:-]+)</a>", filtered))) == ["mana/fast-text"]


@pytest.mark.django_db
def test_marking_another_default_moves_the_mark(admin):
    old = Alias.objects.create(name="mana/old", is_default=True)
    old.entries.create(position=0, target="ollama/a")
    response = post_alias(admin, ADD, "mana/new", [{"position": 0, "target": "groq/b", "enabled": True}],
                          is_default=True)
    assert response.status_code == 302, response.context and response.context.get("errors")
    assert list(Alias.objects.filter(is_default=True).values_list("name", flat=True)) == ["mana/new"]
    # Editing the old one back to the default moves the mark again.
    entry = old.entries.get()
    response = post_alias(admin, f"/admin/routing/alias/{old.pk}/change/", "mana/old", [
        {"id": entry.pk, "alias": old.pk, "position": 0, "target": "ollama/a", "enabled": True}],
        is_default=True, initial=1)
    assert response.status_code == 302, response.context and response.context.get("errors")
    assert list(Alias.objects.filter(is_default=True).values_list("name", flat=True)) == ["mana/old"]


@pytest.mark.django_db
def test_anonymous_and_non_staff_cannot_use_admin(client, django_user_model):
    assert client.get(LIST).status_code == 302  # to the login page
    client.force_login(django_user_model.objects.create_user("joe", password="pw"))
    assert client.get(LIST).status_code == 302
    assert post_alias(client, ADD, "mana/x", [{"position": 0, "target": "groq/b", "enabled": True}]).status_code == 302
    assert not ChainEntry.objects.exists()


@pytest.mark.django_db
def test_default_alias_cannot_be_deleted(admin):
    default = Alias.objects.create(name="mana/default", is_default=True)
    other = Alias.objects.create(name="mana/other")
    delete_page = f"/admin/routing/alias/{default.pk}/delete/"
    message = "&#x27;mana/default&#x27; is the default alias; make another alias the default first."

    # Its own delete page: back to the change page with the reason, before any confirmation.
    for response in (admin.get(delete_page, follow=True), admin.post(delete_page, {"post": "yes"}, follow=True)):
        assert response.redirect_chain[-1][0] == f"/admin/routing/alias/{default.pk}/change/"
        assert message in response.content.decode()
    # The bulk action refuses a selection holding it, even confirmed; nothing is deleted.
    for data in ({}, {"post": "yes"}):
        response = admin.post(LIST, {"action": "delete_selected", "_selected_action": [default.pk, other.pk], **data},
                              follow=True)
        assert response.status_code == 200
        assert f"Nothing deleted: {message}" in response.content.decode()
    assert Alias.objects.count() == 2

    # Any other alias deletes as usual, one at a time or in bulk.
    assert admin.post(f"/admin/routing/alias/{other.pk}/delete/", {"post": "yes"}).status_code == 302
    third = Alias.objects.create(name="mana/third")
    response = admin.post(LIST, {"action": "delete_selected", "_selected_action": [third.pk], "post": "yes"})
    assert response.status_code == 302
    assert list(Alias.objects.values_list("name", flat=True)) == ["mana/default"]
