"""Placeholder: the usage summary shown on a consumer's admin page (replaced by the usage work)."""


def usage_summary(consumer) -> str:
    return "—"
