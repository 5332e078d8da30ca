"""The consumer management API's representation and validation (README#consumers).

Validation is consumers.validators' (the one validator the admin's form uses too). A
consumer reads as its fields plus its keys, each as ``{"prefix", "created", "expires_at",
"revoked", "last_used_unix"}``: never a key, never a hash.
"""
from datetime import UTC, datetime

from django.db import IntegrityError, transaction
from rest_framework import serializers

from . import keys
from .models import Consumer, ConsumerKey
from .validators import FIELDS, ConsumerError, field_name, parse_time, validate_consumer


def invalid(error: ConsumerError, code: str = "invalid_consumer") -> serializers.ValidationError:
    return serializers.ValidationError({error.field: [str(error)]}, code=code)


def fields_of(consumer: Consumer) -> dict:
    return {field: getattr(consumer, field) for field in FIELDS}


def iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None


def key_data(row: ConsumerKey) -> dict:
    last_used = max(filter(None, (row.last_used.timestamp() if row.last_used else None,
                                  keys.pending_last_use(row.hash))), default=None)
    return {"prefix": row.prefix, "created": iso(row.created), "expires_at": iso(row.expires_at),
            "revoked": row.revoked_at is not None, "last_used_unix": round(last_used, 3) if last_used else None}


class ConsumerSerializer(serializers.Serializer):
    """A consumer in (POST: every field, ``name`` required; PATCH: the fields to change,
    the name from the URL) and out (its fields and keys). No declared fields: the
    validator checks every one, with messages naming it."""

    def to_representation(self, consumer: Consumer) -> dict:
        data = fields_of(consumer)
        data["budget_period"] = data["budget_period"] or None
        data["keys"] = [key_data(row) for row in consumer.keys.all()]
        return data

    def run_validation(self, data=serializers.empty) -> dict:
        if not isinstance(data, dict):  # before DRF's own empty-value check: null is a body like any other
            raise invalid(ConsumerError("body", "must be a JSON object"))
        return super().run_validation(data)

    def to_internal_value(self, data: dict) -> dict:
        try:
            if self.instance is None:
                return validate_consumer(data)
            if "name" in data and data["name"] != self.instance.name:
                raise ConsumerError("name", "cannot be changed (usage is kept by name): create a new consumer")
            merged = {**fields_of(self.instance), **data}
            if "token_budget" in data and data["token_budget"] is None and "budget_period" not in data:
                merged["budget_period"] = ""  # dropping the budget drops its period
            return validate_consumer(merged, name=self.instance.name)
        except ConsumerError as error:
            raise invalid(error) from error

    def create(self, validated_data: dict) -> Consumer:
        try:
            with transaction.atomic():
                return Consumer.objects.create(**validated_data)
        except IntegrityError as error:
            raise invalid(ConsumerError("name", f"a consumer named {validated_data['name']!r} already exists"),
                          code="consumer_exists") from error

    def update(self, consumer: Consumer, validated_data: dict) -> Consumer:
        for field, value in validated_data.items():
            setattr(consumer, field, value)
        consumer.save()
        return consumer


class KeyRequestSerializer(serializers.Serializer):
    """``POST /v1/consumers/<name>/keys``: an optional ``{"expires_at"}`` (ISO-8601 or Unix seconds)."""

    def run_validation(self, data=serializers.empty) -> dict:
        if data is serializers.empty or data is None:
            data = {}
        if not isinstance(data, dict):
            raise invalid(ConsumerError("body", "must be a JSON object: {\"expires_at\": ...} or {}"))
        unknown = sorted(field_name(key) for key in data if key != "expires_at")
        try:
            if unknown:
                raise ConsumerError(unknown[0], "unknown field; a key request has only expires_at")
            return {"expires_at": parse_time("expires_at", data.get("expires_at"))}
        except ConsumerError as error:
            raise invalid(error) from error
