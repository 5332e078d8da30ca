"""The one validator of alias data (README#aliases-file), used by the YAML import, the admin and the API.

Each function raises ``AliasError`` with the alias, the field and the reason, and returns
the normalised value: a chain entry always comes back as an ``EntrySpec``.
"""
import re
from dataclasses import dataclass

from django.conf import settings

from manallm.text import shown, unprintable
from providers.model_names import model_problem

ALIAS_NAME = re.compile(r"mana/[A-Za-z0-9][A-Za-z0-9._:-]*")  # fullmatch: "$" would let a final "\n" in
ENTRY_OPTIONS = {"target", "enabled", "first_token_timeout", "prefill"}
ALIAS_FIELDS = {"description", "chain", "stream_continuation", "cache_ttl"}

# The bounds of alias data (README#aliases-file). A target fits ChainEntry.target's column.
MAX_CLASS_CHARS = 64  # after "mana/"
MAX_TARGET_CHARS = 200
MAX_CHAIN_ENTRIES = 32
MAX_DESCRIPTION_CHARS = 2000
MAX_CACHE_TTL = 30 * 24 * 3600  # seconds: a cached answer older than a month is not worth keeping

def _keys(keys) -> list[str]:
    """Unknown mapping keys as they may appear in a message and in ``param``, sorted."""
    return sorted(key if isinstance(key, str) and len(key) <= 80 and unprintable(key) is None else shown(key)
                  for key in keys)


class AliasError(ValueError):
    def __init__(self, reason: str, *, alias: str | None = None, field: str | None = None):
        self.alias, self.field, self.reason = alias, field, reason
        where = " ".join(part for part in (f"alias {shown(alias)}" if alias else "", field or "") if part)
        super().__init__(f"{where}: {reason}" if where else reason)


@dataclass(frozen=True)
class EntrySpec:
    target: str
    enabled: bool = True
    first_token_timeout: float | None = None
    prefill: bool = False  # accepts an assistant prefill: may continue a cut stream (README#stream-continuation)

    @property
    def has_options(self) -> bool:
        return not self.enabled or self.first_token_timeout is not None or self.prefill

    def to_data(self):
        """The YAML/API form: a plain string unless the entry carries options."""
        if not self.has_options:
            return self.target
        data = {"target": self.target}
        if not self.enabled:
            data["enabled"] = False
        if self.first_token_timeout is not None:
            timeout = self.first_token_timeout
            data["first_token_timeout"] = int(timeout) if float(timeout).is_integer() else timeout
        if self.prefill:
            data["prefill"] = True
        return data


def validate_alias_name(name: object) -> str:
    if not isinstance(name, str) or not ALIAS_NAME.fullmatch(name):
        raise AliasError(
            f"{shown(name)} is not a valid alias name: use 'mana/<class>' with one segment "
            "of letters, digits, '.', '_', ':' or '-'",
            alias=name if isinstance(name, str) else None,
            field="name",
        )
    if len(name) > len("mana/") + MAX_CLASS_CHARS:
        raise AliasError(f"is longer than 'mana/' and {MAX_CLASS_CHARS} characters", alias=name, field="name")
    return name


def validate_target(target: object, *, alias: str | None = None, field: str = "chain") -> str:
    """A ``provider/model`` string whose provider manallm knows."""
    if not isinstance(target, str) or "/" not in target:
        raise AliasError(f"entry {shown(target)} must be a 'provider/model' string", alias=alias, field=field)
    if len(target) > MAX_TARGET_CHARS:
        raise AliasError(f"entry {shown(target)} is longer than {MAX_TARGET_CHARS} characters",
                         alias=alias, field=field)
    bad = unprintable(target)
    if bad:
        raise AliasError(f"entry {shown(target)} contains {bad}: control and unprintable characters are "
                         "not allowed", alias=alias, field=field)
    provider, _, model = target.partition("/")
    if provider not in settings.PROVIDER_NAMES:
        known = ", ".join(settings.PROVIDER_NAMES)
        raise AliasError(f"entry {shown(target)} names unknown provider {shown(provider)} (known: {known})",
                         alias=alias, field=field)
    if not model.strip() or model != model.strip():
        raise AliasError(f"entry {shown(target)} has an empty or padded model name", alias=alias, field=field)
    problem = model_problem(provider, model)  # what the provider's adapter can send (providers.model_names)
    if problem:
        raise AliasError(f"entry {shown(target)}: the model name {problem}", alias=alias, field=field)
    return target


def validate_first_token_timeout(value: object, *, alias: str | None = None,
                                 field: str = "first_token_timeout") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise AliasError(f"{value!r} must be a positive number of seconds", alias=alias, field=field)
    return float(value)


def validate_entry(entry: object, *, alias: str | None = None, index: int = 0) -> "EntrySpec":
    field = f"chain[{index}]"
    if isinstance(entry, str):
        return EntrySpec(validate_target(entry, alias=alias, field=field))
    if not isinstance(entry, dict):
        raise AliasError("must be a 'provider/model' string or a mapping with 'target'", alias=alias, field=field)
    unknown = set(entry) - ENTRY_OPTIONS
    if unknown:
        raise AliasError(f"unknown option(s) {', '.join(_keys(unknown))}; allowed: "
                         f"{', '.join(sorted(ENTRY_OPTIONS))}", alias=alias, field=field)
    if "target" not in entry:
        raise AliasError("a mapping entry needs 'target: provider/model'", alias=alias, field=field)
    enabled = validate_flag(entry.get("enabled", True), alias=alias, field=f"{field}.enabled")
    return EntrySpec(
        validate_target(entry["target"], alias=alias, field=f"{field}.target"),
        enabled,
        validate_first_token_timeout(entry.get("first_token_timeout"), alias=alias,
                                     field=f"{field}.first_token_timeout"),
        validate_flag(entry.get("prefill", False), alias=alias, field=f"{field}.prefill"),
    )


def validate_flag(value: object, *, alias: str | None = None, field: str) -> bool:
    """A YAML/JSON boolean: ``true`` or ``false``, never a string or a number."""
    if not isinstance(value, bool):
        raise AliasError(f"'{field.rpartition('.')[2]}' must be true or false, not {shown(value)}",
                         alias=alias, field=field)
    return value


def validate_chain(chain: object, *, alias: str | None = None) -> list["EntrySpec"]:
    if not isinstance(chain, list) or not chain:
        raise AliasError("must be a non-empty list of 'provider/model' entries", alias=alias, field="chain")
    if len(chain) > MAX_CHAIN_ENTRIES:
        raise AliasError(f"has {len(chain)} entries; at most {MAX_CHAIN_ENTRIES} are allowed", alias=alias,
                         field="chain")
    specs, seen = [], {}
    for i, entry in enumerate(chain):
        spec = validate_entry(entry, alias=alias, index=i)
        if spec.target in seen:
            raise AliasError(f"entry {shown(spec.target)} repeats chain[{seen[spec.target]}]; "
                             "each target may appear once", alias=alias, field=f"chain[{i}]")
        seen[spec.target] = i
        specs.append(spec)
    return specs


def validate_description(description: object, *, alias: str | None = None) -> str:
    if description is None:
        return ""
    if not isinstance(description, str):
        raise AliasError("must be a string", alias=alias, field="description")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise AliasError(f"is longer than {MAX_DESCRIPTION_CHARS} characters", alias=alias, field="description")
    bad = unprintable(description, free_text=True)
    if bad:
        raise AliasError(f"contains {bad}: control characters (other than tab and line breaks) and lone "
                         "surrogates are not allowed", alias=alias, field="description")
    return description


def validate_cache_ttl(value: object, *, alias: str | None = None) -> int:
    """Seconds an answer stays in the response cache: a whole number from 0 (absent: 0,
    no cache) to MAX_CACHE_TTL."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CACHE_TTL:
        raise AliasError(f"{shown(value)} must be a whole number of seconds from 0 to {MAX_CACHE_TTL} (30 days)",
                         alias=alias, field="cache_ttl")
    return value


@dataclass(frozen=True)
class AliasSpec:
    name: str
    description: str
    chain: tuple
    stream_continuation: bool = False  # README#stream-continuation
    cache_ttl: int = 0  # seconds; 0: no response cache (README#response-cache)

    def to_data(self):
        """The YAML/API form: ``stream_continuation`` and ``cache_ttl`` only when set, entries
        as EntrySpec.to_data."""
        data = {"description": self.description, "chain": [entry.to_data() for entry in self.chain]}
        if self.stream_continuation:
            data["stream_continuation"] = True
        if self.cache_ttl:
            data["cache_ttl"] = self.cache_ttl
        return data


def validate_alias(name: object, body: object) -> "AliasSpec":
    """One alias: its name and a ``{"description", "chain"}`` mapping."""
    validate_alias_name(name)
    if not isinstance(body, dict):
        raise AliasError("must be a mapping with 'description' and 'chain'", alias=name, field="body")
    unknown = _keys(set(body) - ALIAS_FIELDS)
    if unknown:
        raise AliasError(f"unknown field(s) {', '.join(unknown)}", alias=name, field=unknown[0])
    if "chain" not in body:
        raise AliasError("is required", alias=name, field="chain")
    return AliasSpec(name, validate_description(body.get("description"), alias=name),
                     tuple(validate_chain(body["chain"], alias=name)),
                     validate_flag(body.get("stream_continuation", False), alias=name, field="stream_continuation"),
                     validate_cache_ttl(body.get("cache_ttl"), alias=name))


@dataclass(frozen=True)
class AliasDocument:
    aliases: dict  # name -> AliasSpec
    default: str | None


def validate_document(data: object) -> "AliasDocument":
    """A whole aliases file: ``{"aliases": {name: {...}}, "default": name}``."""
    if not isinstance(data, dict):
        raise AliasError("the file must be a mapping with 'aliases' and 'default'", field="root")
    unknown = set(data) - {"aliases", "default"}
    if unknown:
        raise AliasError(f"unknown top-level key(s) {', '.join(_keys(unknown))}", field="root")
    aliases = data.get("aliases")
    if not isinstance(aliases, dict) or not aliases:
        raise AliasError("must be a non-empty mapping of alias name to alias", field="aliases")
    specs = {name: validate_alias(name, body) for name, body in aliases.items()}
    default = data.get("default")
    if default is not None and default not in specs:
        raise AliasError(f"{shown(default)} is not an alias defined in this file", field="default")
    return AliasDocument(specs, default)
