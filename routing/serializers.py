"""The alias management API's representation and validation (README#endpoints).

Validation is routing.validators' (the one validator the YAML import and the admin use
too); the write is the model layer's ``Alias.objects.put``.
"""
from rest_framework import serializers

from .models import Alias, AliasChange
from .table import AliasView
from .validators import AliasError, validate_alias


class AliasSerializer(serializers.Serializer):
    """``{"name", "description", "chain", "stream_continuation"?, "cache_ttl"?}`` out and
    ``{"description", "chain", "stream_continuation"?, "cache_ttl"?, "default"?}`` in, the name coming from the URL
    (``context["name"]``): the aliases file's shape (README#aliases-file), so a GET body
    less its name can be PUT back. A chain entry is a ``provider/model`` string, or a mapping
    ``{"target", "enabled", "first_token_timeout", "prefill"}`` when it carries options;
    ``stream_continuation`` appears only when true, ``cache_ttl`` (seconds, README#response-cache)
    only when not 0.

    No declared fields: the chain's entries are strings or mappings, which
    validate_alias already checks with messages naming the alias and the field.
    """

    def to_representation(self, alias: Alias | AliasView) -> dict:
        # The database's alias (a PUT's answer) or the in-memory table's (reads): one shape.
        return {"name": alias.name, **alias.spec().to_data()}

    created = False  # set by save(): whether the PUT made a new alias

    def run_validation(self, data=serializers.empty) -> dict:
        # Before DRF's own empty-value check, so that a JSON null gets the same answer as
        # any other body that is not an object.
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"body": ["The body must be a JSON object with 'description' and 'chain'."]})
        return super().run_validation(data)

    def to_internal_value(self, data: dict) -> dict:
        make_default = data.get("default", False)
        if not isinstance(make_default, bool):
            raise serializers.ValidationError({"default": ["'default' must be true or false."]})
        body = {key: value for key, value in data.items() if key != "default"}
        try:
            spec = validate_alias(self.context["name"], body)
        except AliasError as exc:
            raise serializers.ValidationError({exc.field or "body": [str(exc)]}, code="invalid_alias") from exc
        return {"spec": spec, "default": make_default}

    def create(self, validated_data: dict) -> Alias:
        """Create or replace (PUT): the model layer's one alias write."""
        alias, self.created = Alias.objects.put(validated_data["spec"], default=validated_data["default"])
        return alias


class AliasChangeSerializer(serializers.ModelSerializer):
    """One history entry (README#alias-history): ``{"id", "at", "actor", "action", "before", "after"}``
    (``id`` names the change for a restore)."""

    class Meta:
        model = AliasChange
        fields = ["id", "at", "actor", "action", "before", "after"]
