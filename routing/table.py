"""The alias table each process serves from memory (README#model-names, README#aliases-file).

``aliases.snapshot`` is an immutable ``Snapshot`` swapped whole on reload, so the
request path reads it without a lock and without a query. It is reloaded when the
``Revision`` counter moves (``poll``, run by manallm.background off the request path) or
right after this process commits a change (``invalidate``, from routing.signals).
"""
import logging
from dataclasses import dataclass, field

from django.conf import settings

from manallm.revision import RevisionedTable

from .validators import AliasSpec, EntrySpec

logger = logging.getLogger("manallm.routing")


@dataclass(frozen=True)
class Entry:
    """One chain entry as the router sees it."""

    provider: str
    model: str
    enabled: bool = True
    first_token_timeout: float | None = None
    prefill: bool = False

    @property
    def target(self) -> str:
        return f"{self.provider}/{self.model}"

    @classmethod
    def from_spec(cls, spec: EntrySpec) -> "Entry":
        provider, _, model = spec.target.partition("/")
        return cls(provider, model, spec.enabled, spec.first_token_timeout, spec.prefill)

    def spec(self) -> EntrySpec:
        return EntrySpec(self.target, self.enabled, self.first_token_timeout, self.prefill)


@dataclass(frozen=True)
class AliasView:
    name: str
    description: str
    chain: tuple  # of Entry
    stream_continuation: bool = False
    cache_ttl: int = 0  # seconds answers stay in the response cache; 0: none (routing.cache)

    def spec(self) -> AliasSpec:
        """The alias as the validator's value: ``spec().to_data()`` is its YAML/API form."""
        return AliasSpec(self.name, self.description, tuple(entry.spec() for entry in self.chain),
                         self.stream_continuation, self.cache_ttl)

@dataclass(frozen=True)
class Snapshot:
    revision: int = -1
    aliases: dict = field(default_factory=dict)  # name -> AliasView
    default: str | None = None


class AliasTable(RevisionedTable):
    def __init__(self):
        super().__init__(Snapshot())

    def __str__(self):
        return "aliases"

    @property
    def counter(self):
        """The revision this table follows (its model, imported once the apps are loaded)."""
        from .models import Revision

        return Revision

    def read(self, revision: int) -> Snapshot:
        """Every alias, as the request path reads them."""
        from .models import Alias

        aliases, default = {}, None
        for alias in Alias.objects.prefetch_related("entries"):
            aliases[alias.name] = AliasView(
                alias.name, alias.description, tuple(Entry.from_spec(entry.spec()) for entry in alias.entries.all()),
                alias.stream_continuation, alias.cache_ttl,
            )
            if alias.is_default:
                default = alias.name
        return Snapshot(revision, aliases, default)

    # --- model names (README#model-names) -----------------------------------------------

    def requested_name(self, name: str | None) -> str:
        """The model name as asked, in one form (README#model-names): the default alias for
        none, ``ollama/<name>`` for a bare name, else the name itself. What scopes, usage
        and the request log see; the chain itself comes from ``resolve``."""
        if not name:
            return self.snapshot.default or ""
        if "/" not in name:
            return f"ollama/{name}"
        return name

    def resolve(self, name: str | None) -> tuple[str | None, tuple[Entry, ...]]:
        """The chain for a requested model name: (alias name or None, tuple of Entry).

        Raises ModelNotFound for an unknown alias, provider or missing default.
        """
        from manallm.errors import ModelNotFound

        snapshot = self.snapshot
        if not name:
            if snapshot.default is None:
                raise ModelNotFound("No model given and no default alias is configured.", param="model")
            name = snapshot.default
        if name.startswith("mana/"):
            alias = snapshot.aliases.get(name)
            if alias is None:
                known = ", ".join(sorted(snapshot.aliases)) or "none"
                raise ModelNotFound(f"Unknown alias {name!r}. Known aliases: {known}.", param="model")
            return alias.name, alias.chain
        provider, slash, model = name.partition("/")
        if not slash:
            return None, (Entry("ollama", name),)
        if provider not in settings.PROVIDER_NAMES or not model:
            raise ModelNotFound(
                f"Unknown model {name!r}: use an alias (mana/<class>), provider/model with a provider of "
                f"{', '.join(settings.PROVIDER_NAMES)}, or a bare Ollama model name.", param="model")
        return None, (Entry(provider, model),)

    def continuation_chain(self, alias: str | None) -> tuple[Entry, ...] | None:
        """The chain a stream of ``alias`` may continue on after a mid-stream failure, or
        None when the alias does not opt in (README#stream-continuation): one dict lookup."""
        view = self.snapshot.aliases.get(alias) if alias else None
        return view.chain if view is not None and view.stream_continuation else None

    def cache_ttl(self, name: str) -> int:
        """Seconds ``name``'s answers stay in the response cache; 0 for an alias without a
        cache, a ``provider/model`` name or an unknown name: one dict lookup."""
        view = self.snapshot.aliases.get(name)
        return view.cache_ttl if view is not None else 0


aliases = AliasTable()
