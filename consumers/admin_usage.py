"""The admin's side of usage and prices (README#consumers).

``usage_summary`` is the usage block of a consumer's admin page (consumers.admin shows it):
the last 24 hours and this UTC month, by model, from consumers.reports. ``PriceAdmin``
edits the prices the aliases file's ``prices:`` holds, validated by consumers.prices.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import reports
from .models import Consumer, Price
from .prices import PriceError, validate_price


def _cost(cost: float | None) -> str:
    return "unknown (a target has no price)" if cost is None else f"${cost:,.4f}"


def usage_summary(consumer: Consumer | str) -> SafeString:
    """Safe HTML: requests, tokens and cost by model, last 24 hours and this month."""
    name = consumer if isinstance(consumer, str) else consumer.name
    blocks = []
    for title, rows in reports.summary(name).items():
        if not rows:
            blocks.append(format_html("<h4>{}</h4><p>No requests.</p>", title))
            continue
        total_cost = None if any(row["cost"] is None for row in rows) else sum(row["cost"] for row in rows)
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (row["model"], row["requests"], row["errors"], row["prompt_tokens"] + row["completion_tokens"],
             _cost(row["cost"])) for row in rows))
        blocks.append(format_html(
            "<h4>{}</h4><table class='usage-summary'><thead><tr><th>model</th><th>requests</th><th>errors</th>"
            "<th>tokens</th><th>cost</th></tr></thead><tbody>{}</tbody><tfoot><tr><th>total</th><th>{}</th>"
            "<th>{}</th><th>{}</th><th>{}</th></tr></tfoot></table>",
            title, body, sum(row["requests"] for row in rows), sum(row["errors"] for row in rows),
            sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows), _cost(total_cost)))
    return format_html_join("", "{}", ((block,) for block in blocks))


class PriceForm(forms.ModelForm):
    class Meta:
        model = Price
        fields = ["target", "prompt", "completion"]
        help_texts = {"prompt": "USD per million prompt tokens.", "completion": "USD per million completion tokens."}

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            validate_price(data.get("target"), {"prompt": data.get("prompt"), "completion": data.get("completion")})
        except PriceError as exc:
            field = exc.field.rpartition(".")[2]
            self.add_error(field if field in self.fields else "target", exc.reason)
        return data


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    form = PriceForm
    list_display = ("target", "prompt", "completion")
    search_fields = ("target",)
