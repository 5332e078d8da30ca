"""Alias history (README#alias-history): a change by every path is recorded with its actor and
the alias before and after, readable after a delete, and a restore is a recorded change
served by another process within a second."""
import signal
import time
from contextlib import closing

import httpx
import pytest
import yaml

from routing.models import Alias, AliasChange
from routing.table import aliases
from tests.helpers import admin_login, assert_error, chat, create_superuser, csrf_token_of, wait_for

ADMIN = {"Authorization": "Bearer admin-key"}
CLIENT = {"Authorization": "Bearer client-key"}
KEYS = {"MANA_LLM_API_KEY": "client-key", "MANA_LLM_ADMIN_KEY": "admin-key"}


def write(path, chain, description=""):
    path.write_text(yaml.safe_dump({"aliases": {"mana/hist": {"description": description, "chain": chain}},
                                    "default": "mana/hist"}, sort_keys=False))
    return path


def history(server, name="mana/hist"):
    response = httpx.get(f"{server.url}/v1/aliases/{name}/history", headers=ADMIN, timeout=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["alias"] == name
    return body["history"]


def brief(entries):
    return [(e["actor"], e["action"]) for e in entries]


def served_by(server, model):
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=CLIENT, json=chat(model), timeout=10)
    return response.headers.get("X-Mana-LLM-Resolved") if response.status_code == 200 else None


def test_history_from_import_api_sighup_and_after_delete(make_server, fake, tmp_path):
    path = write(tmp_path / "aliases.yaml", ["ollama/qwen2.5:7b"], "v1")
    server = make_server(env={"ALIASES_FILE": str(path), **KEYS})
    # First start imported the file (import_aliases_if_empty runs import_aliases).
    [first] = history(server)
    assert brief([first]) == [("import_aliases", "created")]
    assert first["before"] is None
    assert first["after"] == {"description": "v1", "chain": ["ollama/qwen2.5:7b"], "default": True}

    # The API, as the admin key's consumer; the same body again records nothing.
    body = {"description": "v2", "chain": [{"target": "ollama/qwen2.5:7b", "first_token_timeout": 5},
                                           "groq/llama-3.1-8b-instant"]}
    for _ in range(2):
        assert httpx.put(f"{server.url}/v1/aliases/mana/hist", headers=ADMIN, json=body, timeout=5).status_code == 200
    entries = history(server)
    assert brief(entries) == [("api:admin", "updated"), ("import_aliases", "created")]
    assert entries[0]["before"] == first["after"]
    assert entries[0]["after"] == {**body, "default": True}
    assert entries[0]["at"] >= first["at"]

    # SIGHUP re-imports the file.
    write(path, ["groq/llama-3.3-70b-versatile"], "v3")
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: len(history(server)) == 3, timeout=5), server.logs()
    entries = history(server)
    assert brief(entries)[0] == ("sighup", "updated")
    assert entries[0]["after"]["chain"] == ["groq/llama-3.3-70b-versatile"]

    # The import command, as its own process, and its dry run (nothing written, nothing recorded).
    write(path, ["openrouter/openai/gpt-4o-mini"], "v4")
    server.manage("import_aliases", str(path), "--dry-run")
    assert len(history(server)) == 3
    server.manage("import_aliases", str(path))
    assert brief(history(server))[0] == ("import_aliases", "updated")

    # Deleted through the API (another alias is the default first): its history stays readable.
    other = {"description": "", "chain": ["ollama/gemma3:12b"], "default": True}
    assert httpx.put(f"{server.url}/v1/aliases/mana/other", headers=ADMIN, json=other, timeout=5).status_code == 201
    assert brief(history(server))[0] == ("api:admin", "updated")  # it lost the default mark
    assert "default" not in history(server)[0]["after"]
    assert httpx.delete(f"{server.url}/v1/aliases/mana/hist", headers=ADMIN, timeout=5).status_code == 204
    entries = history(server)
    assert brief(entries)[0] == ("api:admin", "deleted")
    assert entries[0]["before"] == {"description": "v4", "chain": ["openrouter/openai/gpt-4o-mini"]}
    assert entries[0]["after"] is None
    assert [e["action"] for e in entries] == ["deleted", "updated", "updated", "updated", "updated", "created"]
    assert brief(history(server, "mana/other")) == [("api:admin", "created")]

    # Who may read it: the admin key only; an alias that never existed is a 404.
    url = f"{server.url}/v1/aliases/mana/hist/history"
    assert_error(httpx.get(url, headers=CLIENT, timeout=5), 403, "permission_error")
    assert_error(httpx.get(url, timeout=5), 401, "authentication_error")
    assert_error(httpx.get(f"{server.url}/v1/aliases/mana/never/history", headers=ADMIN, timeout=5),
                 404, "model_not_found", param="name")


# --- the admin, in process -------------------------------------------------------------


@pytest.fixture
def admin(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def form(name, chain, *, description="", is_default=False, ids=(), pk=None):
    data = {"name": name, "description": description, "entries-TOTAL_FORMS": str(len(chain)),
            "entries-INITIAL_FORMS": str(len(ids)), "entries-MIN_NUM_FORMS": "0", "entries-MAX_NUM_FORMS": "1000"}
    if is_default:
        data["is_default"] = "on"
    for i, target in enumerate(chain):
        data |= {f"entries-{i}-position": str(i), f"entries-{i}-target": target, f"entries-{i}-enabled": "on"}
        if i < len(ids):
            data[f"entries-{i}-id"] = str(ids[i])
            data[f"entries-{i}-alias"] = str(Alias.objects.get(name=name).pk) if pk is None else str(pk)
    return data


def entry_ids(alias):
    """The chain rows' ids now (a save replaces the chain whole, so they change)."""
    return list(alias.entries.values_list("id", flat=True))


def changes(name):
    return [(c.actor, c.action) for c in AliasChange.objects.filter(alias=name)]


@pytest.mark.django_db(transaction=True)
def test_admin_changes_are_recorded_and_restored(admin):
    aliases.load()
    assert admin.post("/admin/routing/alias/add/", form("mana/adm", ["ollama/qwen2.5:7b"])).status_code == 302
    alias = Alias.objects.get(name="mana/adm")
    assert changes("mana/adm") == [("admin:root", "created")]
    page = f"/admin/routing/alias/{alias.pk}/change/"

    # Saved unchanged: no record. Description and chain changed in one save: one record.
    assert admin.post(page, form("mana/adm", ["ollama/qwen2.5:7b"], ids=entry_ids(alias))).status_code == 302
    assert len(changes("mana/adm")) == 1
    data = form("mana/adm", ["groq/llama-3.1-8b-instant", "ollama/qwen2.5:7b"], description="two",
                ids=entry_ids(alias))
    assert admin.post(page, data).status_code == 302
    assert changes("mana/adm") == [("admin:root", "updated"), ("admin:root", "created")]
    latest = AliasChange.objects.filter(alias="mana/adm").first()
    assert latest.before == {"description": "", "chain": ["ollama/qwen2.5:7b"]}
    assert latest.after == {"description": "two", "chain": ["groq/llama-3.1-8b-instant", "ollama/qwen2.5:7b"]}

    # The alias page: route preview, history with a marked diff, restore buttons, Try it.
    html = admin.get(page).content.decode()
    assert 'id="route-preview"' in html and "Would serve now" in html
    assert '<span class="added">+ - groq/llama-3.1-8b-instant</span>' in html
    assert '<span class="removed">- description: &#x27;&#x27;</span>' in html
    assert html.count("Restore this version") == 1  # the newest row is the alias now
    assert 'id="try-form"' in html

    # Restore the first version: recorded as restored, by the admin, served at once.
    created = AliasChange.objects.filter(alias="mana/adm").last()
    response = admin.post(f"/admin/routing/alias/history/{created.pk}/restore/")
    assert response.status_code == 302 and response["Location"] == page
    assert changes("mana/adm")[0] == ("admin:root", "restored")
    assert Alias.objects.get(name="mana/adm").spec().to_data() == created.after
    assert [e.target for e in aliases.snapshot.aliases["mana/adm"].chain] == ["ollama/qwen2.5:7b"]
    # Restoring what the alias already is records nothing.
    admin.post(f"/admin/routing/alias/history/{created.pk}/restore/")
    assert len(changes("mana/adm")) == 3
    assert admin.get(f"/admin/routing/alias/history/{created.pk}/restore/").status_code == 405

    # A bulk delete from the list, then the deleted alias restored from "Alias changes".
    response = admin.post("/admin/routing/alias/", {"action": "delete_selected", "_selected_action": [alias.pk],
                                                    "post": "yes"})
    assert response.status_code == 302
    assert changes("mana/adm")[0] == ("admin:root", "deleted")
    deleted = AliasChange.objects.filter(alias="mana/adm").first()
    listing = admin.get("/admin/routing/aliaschange/?alias__exact=mana/adm").content.decode()
    assert f"/admin/routing/aliaschange/{deleted.pk}/change/" in listing
    html = admin.get(f"/admin/routing/aliaschange/{deleted.pk}/change/").content.decode()
    assert "does not exist now" in html and "Restore this version" in html
    response = admin.post(f"/admin/routing/alias/history/{deleted.pk}/restore/")
    assert response.status_code == 302
    assert changes("mana/adm")[0] == ("admin:root", "restored")
    assert "mana/adm" in aliases.snapshot.aliases


@pytest.mark.django_db(transaction=True)
def test_admin_default_move_and_rename_are_recorded(admin):
    aliases.load()
    admin.post("/admin/routing/alias/add/", form("mana/one", ["ollama/qwen2.5:7b"], is_default=True))
    admin.post("/admin/routing/alias/add/", form("mana/two", ["ollama/qwen2.5:7b"]))
    two = Alias.objects.get(name="mana/two")
    page = f"/admin/routing/alias/{two.pk}/change/"
    assert admin.post(page, form("mana/two", ["ollama/qwen2.5:7b"], is_default=True,
                                 ids=entry_ids(two))).status_code == 302
    assert AliasChange.objects.get(alias="mana/one", action="updated").after == {
        "description": "", "chain": ["ollama/qwen2.5:7b"]}
    assert AliasChange.objects.filter(alias="mana/two").first().after["default"] is True
    # A rename: the new name created, the old one deleted.
    assert admin.post(page, form("mana/three", ["ollama/qwen2.5:7b"], is_default=True, ids=entry_ids(two),
                                 pk=two.pk)).status_code == 302
    assert changes("mana/three") == [("admin:root", "created")]
    assert changes("mana/two")[0] == ("admin:root", "deleted")


# --- a restore reaches every process ----------------------------------------------------


def test_restore_propagates_to_another_process(make_server, fake, tmp_path):
    db = f"sqlite:///{tmp_path}/shared.sqlite3"
    a = make_server(database=db, name="a", env=KEYS)
    b = make_server(database=db, name="b", prepare=False, env=KEYS)
    for chain in (["groq/llama-3.1-8b-instant"], ["openrouter/openai/gpt-4o-mini"]):
        response = httpx.put(f"{a.url}/v1/aliases/mana/xrestore", headers=ADMIN, timeout=5,
                             json={"description": "", "chain": chain})
        assert response.status_code in (200, 201), response.text
    assert wait_for(lambda: served_by(b, "mana/xrestore") == "openrouter/openai/gpt-4o-mini", timeout=5)
    created = history(a, "mana/xrestore")[-1]
    assert created["action"] == "created"

    with closing(admin_login(a, *create_superuser(a))) as session:
        def restore(change_id):
            page = session.get("/admin/routing/alias/")
            response = session.post(f"/admin/routing/alias/history/{change_id}/restore/",
                                    data={"csrfmiddlewaretoken": csrf_token_of(page.text)})
            assert response.status_code == 302, response.text[:2000]

        restore(created["id"])
        start = time.monotonic()
        assert wait_for(lambda: served_by(b, "mana/xrestore") == "groq/llama-3.1-8b-instant", timeout=5), b.logs()
        assert time.monotonic() - start < 1
        assert brief(history(b, "mana/xrestore"))[0] == ("admin:root", "restored")

        # A deleted alias comes back from its deletion's row.
        assert httpx.delete(f"{a.url}/v1/aliases/mana/xrestore", headers=ADMIN, timeout=5).status_code == 204
        assert wait_for(lambda: served_by(b, "mana/xrestore") is None, timeout=5)
        deleted = history(a, "mana/xrestore")[0]
        assert deleted["action"] == "deleted"
        restore(deleted["id"])
        start = time.monotonic()
        assert wait_for(lambda: served_by(b, "mana/xrestore") == "groq/llama-3.1-8b-instant", timeout=5), b.logs()
        assert time.monotonic() - start < 1
