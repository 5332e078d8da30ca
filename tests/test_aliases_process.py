"""Issue 2 with real gateway processes: SIGHUP reload, the import command as a process,
and a change written through one process served by another within one second (README#aliases-file)."""
import signal
import time

import httpx
import yaml

from tests.helpers import chat as chat_body, wait_for

ADMIN = {"Authorization": "Bearer admin-key"}
CLIENT = {"Authorization": "Bearer client-key"}
KEYS = {"MANA_LLM_API_KEY": "client-key", "MANA_LLM_ADMIN_KEY": "admin-key"}


def write(path, aliases, default):
    path.write_text(yaml.safe_dump({"aliases": aliases, "default": default}, sort_keys=False))
    return path


def aliases(server):
    response = httpx.get(f"{server.url}/v1/aliases", headers=CLIENT, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def chat(server, model):
    return httpx.post(f"{server.url}/v1/chat/completions", headers=CLIENT, timeout=10,
                      json=chat_body(model, "hello"))


def served_by(server, model):
    """The entry that answered a chat for this model, or None."""
    response = chat(server, model)
    if response.status_code != 200:
        return None
    assert response.json()["model"] == response.headers["X-Mana-LLM-Resolved"]
    return response.headers["X-Mana-LLM-Resolved"]


def test_sighup_reload_and_import_process(make_server, fake, tmp_path):
    path = write(tmp_path / "aliases.yaml", {
        "mana/hup": {"description": "v1", "chain": ["ollama/qwen2.5:7b"]},
        "mana/other": {"description": "", "chain": ["groq/llama-3.3-70b-versatile"]},
    }, "mana/hup")
    server = make_server(env={"ALIASES_FILE": str(path), **KEYS})
    # First start imported the file into the empty database.
    data = aliases(server)
    assert data["default"] == "mana/hup"
    assert [(a["name"], a["chain"]) for a in data["aliases"]] == [
        ("mana/hup", ["ollama/qwen2.5:7b"]), ("mana/other", ["groq/llama-3.3-70b-versatile"])]
    assert served_by(server, "mana/hup") == "ollama/qwen2.5:7b"

    # A changed file + SIGHUP: the database and this worker's registry follow.
    write(path, {
        "mana/hup": {"description": "v2", "chain": [{"target": "ollama/qwen2.5:7b", "enabled": False},
                                                    "groq/llama-3.1-8b-instant"]},
        "mana/other": {"description": "", "chain": ["groq/llama-3.3-70b-versatile"]},
        "mana/added": {"description": "new", "chain": ["openrouter/openai/gpt-4o-mini"]},
    }, "mana/added")
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: aliases(server)["default"] == "mana/added", timeout=5), server.logs()
    data = aliases(server)
    assert {a["name"]: a["chain"] for a in data["aliases"]} == {
        "mana/added": ["openrouter/openai/gpt-4o-mini"],
        "mana/hup": [{"target": "ollama/qwen2.5:7b", "enabled": False}, "groq/llama-3.1-8b-instant"],
        "mana/other": ["groq/llama-3.3-70b-versatile"],
    }
    assert wait_for(lambda: served_by(server, "mana/hup") == "groq/llama-3.1-8b-instant", timeout=1), server.logs()
    assert served_by(server, "") == "openrouter/openai/gpt-4o-mini"  # the new default
    assert "SIGHUP: reloaded" in server.logs()

    # A broken file + SIGHUP: nothing changes, the log says why, the server still serves.
    before = aliases(server)
    path.write_text(path.read_text().replace("groq/llama-3.1-8b-instant", "bogus/model"))
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: "SIGHUP: not reloading" in server.logs(), timeout=5), server.logs()
    log = server.logs()
    assert "alias 'mana/hup' chain[1]: entry 'bogus/model' names unknown provider 'bogus'" in log
    assert "aliases unchanged" in log
    path.write_text("- just\n- a list\n")
    server.signal(signal.SIGHUP)
    assert wait_for(lambda: "root: the file must be a mapping" in server.logs(), timeout=5), server.logs()
    assert aliases(server) == before
    assert served_by(server, "mana/hup") == "groq/llama-3.1-8b-instant"
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200

    # The import command as a real process: a bad file exits non-zero, says why, writes nothing.
    bad = write(tmp_path / "bad.yaml", {
        "mana/aaa": {"chain": ["ollama/qwen2.5:7b"]},
        "mana/bbb": {"chain": [{"target": "groq/llama-3.1-8b-instant", "colour": "red"}]},
    }, "mana/aaa")
    result = server.manage("import_aliases", str(bad), "--prune", check=False)
    assert result.returncode != 0
    assert "alias 'mana/bbb' chain[0]: unknown option(s) colour" in result.stderr
    assert "nothing was written" in result.stderr
    assert aliases(server) == before

    # A good file through the command process is served by the running server within 1 s.
    good = write(tmp_path / "good.yaml", {"mana/aaa": {"chain": ["together/meta-llama/Llama-3-8b"]}}, "mana/aaa")
    result = server.manage("import_aliases", str(good), "--prune")
    assert "created 1, updated 0, unchanged 0, deleted 3" in result.stdout
    start = time.monotonic()
    assert wait_for(lambda: served_by(server, "") == "together/meta-llama/Llama-3-8b", timeout=1), server.logs()
    assert time.monotonic() - start < 1
    assert [a["name"] for a in aliases(server)["aliases"]] == ["mana/aaa"]

    # `make run`'s first-start step on a populated database: nothing imported.
    result = server.manage("import_aliases_if_empty")
    assert "aliases present; not importing" in result.stdout
    assert [a["name"] for a in aliases(server)["aliases"]] == ["mana/aaa"]


def test_change_propagates_across_processes(make_server, fake, tmp_path):
    db = f"sqlite:///{tmp_path}/shared.sqlite3"
    a = make_server(database=db, name="a", env=KEYS)
    b = make_server(database=db, name="b", prepare=False, env=KEYS)
    # B is up and serving the shipped aliases (its registry and poller are running).
    assert served_by(b, "mana/fast-text") == "ollama/qwen2.5:7b"
    assert chat(b, "mana/xproc").status_code == 404

    # Writes through either process need the admin key.
    body = {"description": "cross", "chain": ["groq/llama-3.1-8b-instant"]}
    assert httpx.put(f"{b.url}/v1/aliases/mana/xproc", json=body, timeout=5).status_code == 401
    assert httpx.put(f"{b.url}/v1/aliases/mana/xproc", json=body, headers=CLIENT, timeout=5).status_code == 403

    response = httpx.put(f"{a.url}/v1/aliases/mana/xproc", json=body, headers=ADMIN, timeout=5)
    assert response.status_code == 201, response.text
    start = time.monotonic()
    assert wait_for(lambda: served_by(b, "mana/xproc") == "groq/llama-3.1-8b-instant", timeout=5), b.logs()
    assert time.monotonic() - start < 1
    response = httpx.get(f"{b.url}/v1/aliases/mana%2Fxproc", headers=CLIENT, timeout=5)
    assert response.status_code == 200 and response.json() == {"name": "mana/xproc", **body}
    assert httpx.get(f"{b.url}/v1/aliases/mana/xproc", headers=CLIENT, timeout=5).json()["chain"] == body["chain"]

    # Replace (percent-encoded name, X-API-Key): B follows.
    response = httpx.put(f"{a.url}/v1/aliases/mana%2Fxproc", headers={"X-API-Key": "admin-key"}, timeout=5,
                         json={"description": "cross", "chain": ["openrouter/openai/gpt-4o-mini"]})
    assert response.status_code == 200, response.text
    start = time.monotonic()
    assert wait_for(lambda: served_by(b, "mana/xproc") == "openrouter/openai/gpt-4o-mini", timeout=5), b.logs()
    assert time.monotonic() - start < 1

    # Delete through A: B stops serving it.
    assert httpx.delete(f"{a.url}/v1/aliases/mana/xproc", headers=ADMIN, timeout=5).status_code == 204
    start = time.monotonic()
    assert wait_for(lambda: chat(b, "mana/xproc").status_code == 404, timeout=5), b.logs()
    assert time.monotonic() - start < 1
    error = chat(b, "mana/xproc").json()["error"]
    assert error["type"] == "model_not_found" and "mana/fast-text" in error["message"]
    assert httpx.get(f"{b.url}/v1/aliases/mana/xproc", headers=CLIENT, timeout=5).status_code == 404
    assert httpx.delete(f"{a.url}/v1/aliases/mana/xproc", headers=ADMIN, timeout=5).status_code == 404
