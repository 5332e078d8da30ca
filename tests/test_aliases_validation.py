"""Issue 2: every alias validation rule (README#aliases-file), directly and through every write path.

The same rule is checked through ``validate_document``/``validate_alias``, the
``import_aliases`` command, the admin form and the /v1/aliases API; each failure must
name the alias, the field and the reason.
"""
import json
import re
from urllib.parse import quote

import pytest
import yaml
from django.core.management import CommandError, call_command

from routing.models import Alias, ChainEntry
from routing.validators import AliasError, EntrySpec, validate_alias, validate_document, validate_target

GOOD = "groq/llama-3.1-8b-instant"
LONE_SURROGATE = re.compile(r"\\ud[89a-f]", re.IGNORECASE)  # as json.dumps escapes it

# (alias name, body, expected field, fragments of the reason)
BAD_ALIASES = [
    ("fast-text", {"chain": [GOOD]}, "name", ["not a valid alias name", "mana/<class>"]),
    ("other/fast", {"chain": [GOOD]}, "name", ["not a valid alias name", "mana/<class>"]),
    ("mana/", {"chain": [GOOD]}, "name", ["not a valid alias name", "one segment"]),
    ("mana/a/b", {"chain": [GOOD]}, "name", ["not a valid alias name", "one segment"]),
    ("mana/x", {"chain": []}, "chain", ["non-empty list"]),
    ("mana/x", {"chain": GOOD}, "chain", ["non-empty list"]),
    ("mana/x", {"chain": None}, "chain", ["non-empty list"]),
    ("mana/x", {"description": "no chain"}, "chain", ["required"]),
    ("mana/x", {"chain": ["qwen2.5:7b"]}, "chain[0]", ["'qwen2.5:7b'", "'provider/model'"]),
    ("mana/x", {"chain": [GOOD, "bogus/model"]}, "chain[1]", ["unknown provider 'bogus'", "known:", "groq"]),
    ("mana/x", {"chain": ["ollama/"]}, "chain[0]", ["empty or padded model name"]),
    ("mana/x", {"chain": [42]}, "chain[0]", ["'provider/model' string or a mapping"]),
    ("mana/x", {"chain": [["groq", "m"]]}, "chain[0]", ["'provider/model' string or a mapping"]),
    ("mana/x", {"chain": [{"enabled": False}]}, "chain[0]", ["needs 'target: provider/model'"]),
    ("mana/x", {"chain": [{"target": GOOD, "timeout": 3}]}, "chain[0]", ["unknown option(s) timeout", "allowed"]),
    ("mana/x", {"chain": [{"target": "bogus/m"}]}, "chain[0].target", ["unknown provider 'bogus'"]),
    ("mana/x", {"chain": [{"target": 7}]}, "chain[0].target", ["'provider/model' string"]),
    ("mana/x", {"chain": [{"target": GOOD, "enabled": "no"}]}, "chain[0].enabled", ["true or false"]),
    ("mana/x", {"chain": [{"target": GOOD, "enabled": 0}]}, "chain[0].enabled", ["true or false"]),
    ("mana/x", {"chain": [{"target": GOOD, "first_token_timeout": "10"}]}, "chain[0].first_token_timeout",
     ["positive number of seconds"]),
    ("mana/x", {"chain": [{"target": GOOD, "first_token_timeout": 0}]}, "chain[0].first_token_timeout",
     ["positive number of seconds"]),
    ("mana/x", {"chain": [{"target": GOOD, "first_token_timeout": -1}]}, "chain[0].first_token_timeout",
     ["positive number of seconds"]),
    ("mana/x", {"chain": [{"target": GOOD, "first_token_timeout": True}]}, "chain[0].first_token_timeout",
     ["positive number of seconds"]),
    ("mana/x", {"chain": [GOOD], "description": 5}, "description", ["must be a string"]),
    ("mana/x", {"chain": [GOOD], "colour": "red"}, "colour", ["unknown field(s) colour"]),
    ("mana/x", [GOOD], "body", ["must be a mapping"]),
    # Issue 14: the continuation flags are booleans, never strings or numbers.
    ("mana/x", {"chain": [GOOD], "stream_continuation": "yes"}, "stream_continuation",
     ["'stream_continuation' must be true or false", "'yes'"]),
    ("mana/x", {"chain": [{"target": GOOD, "prefill": 1}]}, "chain[0].prefill", ["'prefill' must be true or false"]),
    ("mana/x", GOOD, "body", ["must be a mapping"]),
    # Issue 9: names and targets reach headers, logs and metric labels (the rule chat applies to
    # `model`); text must be storable; every field is bounded.
    ("mana/" + "a" * 65, {"chain": [GOOD]}, "name", ["longer than 'mana/' and 64 characters"]),
    ("mana/x\n", {"chain": [GOOD]}, "name", ["not a valid alias name"]),
    ("mana/x\x00", {"chain": [GOOD]}, "name", ["not a valid alias name"]),
    ("mana/x", {"chain": ["groq/llama\x00"]}, "chain[0]", ["U+0000", "control and unprintable"]),
    ("mana/x", {"chain": ["groq/a\x1b[31m"]}, "chain[0]", ["U+001B", "control and unprintable"]),
    ("mana/x", {"chain": ["groq/a\r\nX-Evil: 1"]}, "chain[0]", ["U+000D"]),
    ("mana/x", {"chain": [GOOD, "groq/a\nb"]}, "chain[1]", ["U+000A"]),
    ("mana/x", {"chain": ["groq/a\tb"]}, "chain[0]", ["U+0009"]),
    ("mana/x", {"chain": ["groq/a\x7f"]}, "chain[0]", ["U+007F"]),
    ("mana/x", {"chain": ["groq/a\x85"]}, "chain[0]", ["U+0085"]),
    ("mana/x", {"chain": ["groq/a\u200bb"]}, "chain[0]", ["U+200B"]),
    ("mana/x", {"chain": [{"target": "groq/\ud800"}]}, "chain[0].target", ["U+D800"]),
    ("mana/x", {"chain": ["groq/" + "m" * 196]}, "chain[0]", ["longer than 200 characters"]),
    ("mana/x", {"chain": [f"groq/m{i}" for i in range(33)]}, "chain", ["has 33 entries", "at most 32"]),
    ("mana/x", {"chain": [GOOD, "ollama/x", GOOD]}, "chain[2]", ["repeats chain[0]", "once"]),
    ("mana/x", {"chain": [GOOD, {"target": GOOD, "enabled": False}]}, "chain[1]", ["repeats chain[0]"]),
    ("mana/x", {"chain": [GOOD], "description": "a" * 2001}, "description", ["longer than 2000 characters"]),
    ("mana/x", {"chain": [GOOD], "description": "lone \ud800"}, "description", ["U+D800", "lone surrogates"]),
    ("mana/x", {"chain": [GOOD], "description": "clear \x1b[2J"}, "description", ["U+001B"]),
    ("mana/x", {"chain": [GOOD], "description": "nul \x00"}, "description", ["U+0000"]),
    ("mana/x", {"chain": [GOOD], "description": "c1 \x9b"}, "description", ["U+009B"]),
    ("mana/x", {"chain": [GOOD], "\ud800": 1}, "'\\ud800'", ["unknown field(s) '\\ud800'"]),
]
IDS = [f"{name}-{field}-{i}" for i, (name, _, field, _) in enumerate(BAD_ALIASES)]


def assert_names(message, *, alias, field, reasons):
    if alias:
        assert repr(alias) in message, message
    assert field in message, message
    for reason in reasons:
        assert reason in message, message


# --- the validator ----------------------------------------------------------------------


@pytest.mark.parametrize("name,body,field,reasons", BAD_ALIASES, ids=IDS)
def test_validate_alias_rejects(name, body, field, reasons):
    with pytest.raises(AliasError) as caught:
        validate_alias(name, body)
    error = caught.value
    assert error.field == field
    assert error.alias == name
    assert_names(str(error), alias=name, field=field, reasons=reasons)


@pytest.mark.parametrize("name,body,field,reasons", BAD_ALIASES, ids=IDS)
def test_validate_document_rejects_same_rules(name, body, field, reasons):
    document = {"aliases": {"mana/ok": {"chain": [GOOD]}, name: body}, "default": "mana/ok"}
    with pytest.raises(AliasError) as caught:
        validate_document(document)
    assert caught.value.field == field
    assert_names(str(caught.value), alias=name, field=field, reasons=reasons)


def test_validate_alias_normalises():
    spec = validate_alias("mana/fast-text", {"description": None, "chain": [
        "ollama/qwen2.5:7b",
        "openrouter/anthropic/claude-3-haiku",
        {"target": GOOD, "enabled": False, "first_token_timeout": 10},
        {"target": "openai/gpt-4o-mini"},
    ]})
    assert spec.description == ""
    assert spec.chain == (
        EntrySpec("ollama/qwen2.5:7b"),
        EntrySpec("openrouter/anthropic/claude-3-haiku"),
        EntrySpec(GOOD, False, 10.0),
        EntrySpec("openai/gpt-4o-mini"),
    )
    # A mapping with no options is written back in the short string form.
    assert spec.to_data()["chain"] == ["ollama/qwen2.5:7b", "openrouter/anthropic/claude-3-haiku",
                                       {"target": GOOD, "enabled": False, "first_token_timeout": 10.0},
                                       "openai/gpt-4o-mini"]


@pytest.mark.parametrize("data,field,reason", [
    ([{"mana/x": {"chain": [GOOD]}}], "root", "must be a mapping"),
    ("just a string", "root", "must be a mapping"),
    (42, "root", "must be a mapping"),
    (None, "root", "must be a mapping"),
    ({"aliases": {"mana/x": {"chain": [GOOD]}}, "extra": 1}, "root", "unknown top-level key(s) extra"),
    ({"aliases": {}}, "aliases", "non-empty mapping"),
    ({"aliases": [{"mana/x": {"chain": [GOOD]}}]}, "aliases", "non-empty mapping"),
    ({"default": "mana/x"}, "aliases", "non-empty mapping"),
    ({"aliases": {"mana/x": {"chain": [GOOD]}}, "default": "mana/missing"}, "default",
     "'mana/missing' is not an alias defined"),
    ({"aliases": {"mana/x": {"chain": [GOOD]}}, "default": "x"}, "default", "'x' is not an alias defined"),
])
def test_validate_document_structure(data, field, reason):
    with pytest.raises(AliasError) as caught:
        validate_document(data)
    assert caught.value.field == field
    assert field in str(caught.value) and reason in str(caught.value)


def test_validate_document_accepts_shipped_file():
    from django.conf import settings

    with open(settings.BASE_DIR / "aliases.yaml") as stream:
        document = validate_document(yaml.safe_load(stream))
    assert document.default == "mana/fast-text"
    assert set(document.aliases) == {"mana/fast-text", "mana/long-form", "mana/structured",
                                     "mana/reasoning", "mana/vision"}
    from django.conf import settings as s
    cloud = set(s.PROVIDER_NAMES) - {"ollama"}
    for spec in document.aliases.values():
        assert spec.chain[-1].target.partition("/")[0] in cloud


# --- the YAML import --------------------------------------------------------------------


def write_yaml(path, data):
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.mark.django_db
@pytest.mark.parametrize("name,body,field,reasons", BAD_ALIASES, ids=IDS)
def test_import_rejects(tmp_path, name, body, field, reasons):
    path = write_yaml(tmp_path / "a.yaml", {"aliases": {"mana/first": {"chain": [GOOD]}, name: body}})
    with pytest.raises(CommandError) as caught:
        call_command("import_aliases", path, stdout=None)
    message = str(caught.value)
    assert path in message and "nothing was written" in message
    assert_names(message, alias=name, field=field, reasons=reasons)
    assert not Alias.objects.exists()  # the valid first alias was not created either


@pytest.mark.django_db
@pytest.mark.parametrize("text,reason", [
    ("- mana/x\n- mana/y\n", "root: the file must be a mapping"),
    ("just a scalar\n", "root: the file must be a mapping"),
    ("", "root: the file must be a mapping"),
    ("aliases: [\n", "is not valid YAML"),
    ("aliases:\n  mana/x:\n    chain: [groq/m]\ndefault: mana/y\n", "default: 'mana/y' is not an alias defined"),
])
def test_import_rejects_documents(tmp_path, text, reason):
    path = write_yaml(tmp_path / "a.yaml", text)
    with pytest.raises(CommandError, match="nothing was written") as caught:
        call_command("import_aliases", path)
    assert reason in str(caught.value)
    assert not Alias.objects.exists()


@pytest.mark.django_db
def test_import_missing_file(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_aliases", str(tmp_path / "absent.yaml"))


# --- the admin form ---------------------------------------------------------------------


def admin_post(client, url, name, rows, *, is_default=False, initial=0, description=""):
    data = {"name": name, "description": description, "entries-TOTAL_FORMS": str(len(rows)),
            "entries-INITIAL_FORMS": str(initial), "entries-MIN_NUM_FORMS": "0", "entries-MAX_NUM_FORMS": "1000"}
    if is_default:
        data["is_default"] = "on"
    for i, row in enumerate(rows):
        for key, value in row.items():
            if value is True:
                value = "on"
            if value is False or value is None:
                continue
            data[f"entries-{i}-{key}"] = str(value)
    return client.post(url, data)


@pytest.fixture
def admin_client_(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def form_errors(response):
    """Every error message the admin rendered, as text."""
    from django.utils.html import strip_tags

    assert response.status_code == 200, response.status_code  # re-rendered form, not a redirect
    context = response.context
    texts = [str(e) for e in context["errors"]]
    for formset in context["inline_admin_formsets"]:
        texts += [str(e) for e in formset.formset.non_form_errors()]
        for form in formset.formset.forms:
            for field, errors in form.errors.items():
                texts += [f"{field}: {e}" for e in errors]
    assert texts, strip_tags(response.content.decode())[:2000]
    return " | ".join(texts)


ADMIN_CASES = [
    ("mana/a/b", [{"position": 0, "target": GOOD, "enabled": True}], ["not a valid alias name"]),
    ("fast", [{"position": 0, "target": GOOD, "enabled": True}], ["not a valid alias name"]),
    ("mana/x", [], ["'mana/x'", "chain", "non-empty list"]),
    ("mana/x", [{"position": 0, "target": "bogus/m", "enabled": True}], ["target", "unknown provider 'bogus'"]),
    ("mana/x", [{"position": 0, "target": "nomodel", "enabled": True}], ["target", "'provider/model'"]),
    ("mana/x", [{"position": 0, "target": GOOD, "enabled": True, "first_token_timeout": -2}],
     ["first_token_timeout", "positive number of seconds"]),
]


def rows_of(*targets):
    return [{"position": i, "target": target, "enabled": True} for i, target in enumerate(targets)]


ADMIN_CASES += [
    ("mana/" + "a" * 65, rows_of(GOOD), ["longer than 'mana/' and 64 characters"]),
    ("mana/x", rows_of("groq/a\x1b[31m"), ["target", "U+001B", "control and unprintable"]),
    ("mana/x", rows_of("groq/a\r\nX-Evil: 1"), ["target", "U+000D"]),
    ("mana/x", rows_of("groq/a\x85b"), ["target", "U+0085"]),  # the form strips it at either end
    ("mana/x", rows_of("groq/" + "m" * 196), ["target", "200 characters"]),  # the column's message first
    ("mana/x", rows_of(*(f"groq/m{i}" for i in range(33))), ["'mana/x' chain: has 33 entries; at most 32"]),
    ("mana/x", rows_of(GOOD, "ollama/x", GOOD), ["'mana/x' chain[2]", "repeats chain[0]"]),
]


@pytest.mark.django_db
@pytest.mark.parametrize("name,rows,reasons", ADMIN_CASES)
def test_admin_form_rejects(admin_client_, name, rows, reasons):
    response = admin_post(admin_client_, "/admin/routing/alias/add/", name, rows)
    errors = form_errors(response)
    for reason in reasons:
        assert reason in errors, errors
    assert not Alias.objects.exists() and not ChainEntry.objects.exists()


@pytest.mark.django_db
def test_admin_form_rejects_emptying_an_existing_chain(admin_client_):
    alias = Alias.objects.create(name="mana/x")
    entry = ChainEntry.objects.create(alias=alias, position=0, target=GOOD)
    response = admin_post(admin_client_, f"/admin/routing/alias/{alias.pk}/change/", "mana/x",
                          [{"id": entry.pk, "alias": alias.pk, "position": 0, "target": GOOD, "enabled": True,
                            "DELETE": True}], initial=1)
    errors = form_errors(response)
    assert "alias 'mana/x' chain: must be a non-empty list" in errors
    assert list(alias.entries.values_list("target", flat=True)) == [GOOD]


# --- the API ----------------------------------------------------------------------------


# A name with a line break matches no URL route (404 in the envelope), so it never reaches the validator.
API_CASES = [(case, id_) for case, id_ in zip(BAD_ALIASES, IDS) if case[2] != "body" and "\n" not in case[0]]


@pytest.mark.django_db
@pytest.mark.parametrize("name,body,field,reasons", [c for c, _ in API_CASES], ids=[i for _, i in API_CASES])
def test_api_put_rejects(client, name, body, field, reasons):
    response = client.put(f"/v1/aliases/{quote(name, safe='/')}", body, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if LONE_SURROGATE.search(json.dumps(body)):  # the API's JSON parser refuses it before the validator
        assert error["code"] == "invalid_json" and "surrogate" in error["message"].lower(), error
        assert not Alias.objects.exists()
        return
    assert error["param"] == field
    assert_names(error["message"], alias=name, field=field, reasons=reasons)
    assert not Alias.objects.exists()


@pytest.mark.django_db
def test_api_put_rejects_body_shapes(client):
    response = client.put("/v1/aliases/mana/x", [GOOD], content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"
    response = client.put("/v1/aliases/mana/x", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = client.put("/v1/aliases/mana/x", {"chain": [GOOD], "default": "yes"}, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "default"
    assert not Alias.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("description,reason", [
    ("clear \x1b[2J", "description: contains U+001B"),
    ("c1 \x9b", "description: contains U+009B"),
    ("d" * 2001, "description: is longer than 2000 characters"),
])
def test_admin_form_rejects_descriptions(admin_client_, description, reason):
    response = admin_post(admin_client_, "/admin/routing/alias/add/", "mana/x", rows_of(GOOD),
                          description=description)
    assert reason in form_errors(response)
    assert not Alias.objects.exists()


# --- one message on every path, and one rule with chat ----------------------------------------


SAME_MESSAGE_CASES = [
    ("mana/" + "a" * 65, [GOOD], ""),
    ("mana/x", ["groq/a\x1b[31m"], ""),
    ("mana/x", [GOOD, "ollama/x", GOOD], ""),
    ("mana/x", [GOOD], "tab\tok, escape \x1b not"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("name,chain,description", SAME_MESSAGE_CASES)
def test_every_path_shows_the_validators_message(tmp_path, admin_client_, name, chain, description):
    with pytest.raises(AliasError) as caught:
        validate_alias(name, {"description": description, "chain": chain})
    expected = caught.value
    path = write_yaml(tmp_path / "a.yaml", {"aliases": {name: {"description": description, "chain": chain}}})
    with pytest.raises(CommandError) as imported:
        call_command("import_aliases", path)
    assert str(expected) in str(imported.value)
    api = admin_client_.put(f"/v1/aliases/{name}", {"description": description, "chain": chain},
                            content_type="application/json").json()["error"]
    assert (api["message"], api["param"]) == (str(expected), expected.field)
    # The admin shows a field's own error beside the field (the reason), the rest whole.
    admin = form_errors(admin_post(admin_client_, "/admin/routing/alias/add/", name, rows_of(*chain),
                                   description=description))
    assert expected.reason in admin
    assert not Alias.objects.exists()


@pytest.mark.django_db
def test_values_at_the_bounds_are_accepted(client):
    name = "mana/" + "a" * 64
    chain = ["groq/" + "m" * 195] + [f"ollama/m{i}" for i in range(31)]
    description = "d" * 1989 + "\tline\r\n\u00e9\U0001f469\u200d\U0001f4bb"  # tab, CRLF, emoji with a ZWJ
    assert len(description) <= 2000
    response = client.put(f"/v1/aliases/{name}", {"description": description, "chain": chain},
                          content_type="application/json")
    assert response.status_code == 201, response.content
    alias = Alias.objects.get(name=name)
    assert alias.description == description
    assert [entry.target for entry in alias.entries.all()] == chain


def test_chat_and_aliases_share_one_name_rule():
    """A request's model and an alias's chain entry are refused for the same characters."""
    from manallm.errors import InvalidRequest
    from routing.schema import check_model

    unfit = ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f", "\u200b", "\u2028", "\u00a0", "\ud800"]
    fine = ["e\u0301", "\u00e9", "\u4e2d", ":", "@", " "]
    for char in unfit + fine:
        target = f"groq/a{char}b"
        try:
            check_model({"model": target})
            chat_ok = True
        except InvalidRequest:
            chat_ok = False
        try:
            validate_target(target)
            alias_ok = True
        except AliasError:
            alias_ok = False
        assert chat_ok == alias_ok == (char in fine), repr(char)
