"""The Grafana dashboard and the Prometheus alert rules in deploy/ (README#dashboards-and-alerts):
promtool accepts the rules and their unit cases, the dashboard is importable, and every
metric and label its queries and the alerts use is one a running gateway exports.

promtool comes from Debian's prometheus package, unpacked by .ci/run (tests.helpers.ci_tool).
"""
import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from manallm import metrics
from tests.helpers import chat, ci_tool
from tests.server import module_gateway

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "manallm.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_CASES = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
# Grafana's macros, as Grafana substitutes them before sending a query.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Families declared in manallm/metrics.py that the traffic below cannot produce (consumer
# limits, the response cache, opt-in stream continuation): /metrics names them (HELP and
# TYPE) with no sample. Every other queried metric must have a sample.
MAY_BE_EMPTY = {"mana_llm_consumer_requests_total", "mana_llm_consumer_tokens_total",
                "mana_llm_rate_limited_total", "mana_llm_cache_requests_total",
                "mana_llm_stream_continuations_total"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}

gw = module_gateway("deploy-monitoring")


# --- reading queries ----------------------------------------------------------------------


def dashboard_queries():
    """Every PromQL expression of the dashboard (panel targets, rows' panels, variables)."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_queries():
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def expand(expr):
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def metric_names(expr):
    """The metric names a PromQL expression selects (strings, label matchers, ranges and
    groupings removed; a name followed by "(" is a function or an aggregation)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expand(expr))
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    return {m.group() for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr)
            if m.group().lower() not in PROMQL_WORDS and not expr[m.end():].lstrip().startswith("(")}


def label_names(expr):
    """The label names an expression matches on or groups by."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = {m.group(1) for block in re.findall(r"\{([^}]*)\}", expr) for m in re.finditer(r"(\w+)\s*[!=]", block)}
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        names |= {name.strip() for name in group.split(",") if name.strip()}
    return names


def test_the_name_reader_finds_what_a_query_selects():
    expr = ('histogram_quantile(0.95, sum by (le, provider) (rate(a_seconds_bucket{view=~"x|y"}[$__rate_interval])))'
            ' / on () sum(label_replace(b_total, "alias", "mana/$1", "model", "(.+)")) > 0 unless c')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}
    assert label_names(expr) == {"view", "le", "provider"}


# --- promtool -----------------------------------------------------------------------------


def promtool(*args):
    return subprocess.run([ci_tool("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_alert_rules():
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_the_alerts_fire_when_they_should_and_not_otherwise():
    """alerts_test.yml: each alert fires after its `for:`, and the look-alikes do not
    (a breaker open on one replica only, /ready's 503s, an alias whose entries fail)."""
    result = promtool("test", "rules", str(ALERT_CASES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each dashboard query, macros expanded, as a recording rule: promtool parses it."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expand(expr)} for i, expr in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- the dashboard ------------------------------------------------------------------------


def test_the_dashboard_is_importable_and_covers_the_console_topics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "manallm" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    queries = "\n".join(dashboard_queries())
    # traffic by alias and by consumer, fallbacks by reason, breaker states, latency and
    # TTFT quantiles, tokens, cache hit ratio, refusals by limit
    for needle in ["by (alias, target) (rate(mana_llm_alias_resolved_total", "by (consumer, status)",
                   "by (reason) (rate(mana_llm_fallback_total", "mana_llm_provider_healthy",
                   "mana_llm_deployment_healthy", "histogram_quantile(0.99, sum by (le) (rate(mana_llm_llm_latency_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(mana_llm_time_to_first_token_seconds_bucket",
                   "mana_llm_tokens_total", "mana_llm_consumer_tokens_total", 'mana_llm_cache_requests_total{result="hit"}',
                   "by (limit) (rate(mana_llm_rate_limited_total"]:
        assert needle in queries, needle


# --- against a running gateway ------------------------------------------------------------


def exported(text):
    """(family names with their type, sample names, label names by sample name) of a scrape.

    prometheus_client prints HELP and TYPE for every declared family, even one with no
    labelled child yet, in one process. (Under PROMETHEUS_MULTIPROC_DIR a family appears
    only once some process wrote a sample: the consumer and cache panels stay empty until
    then, like any Prometheus series.)
    """
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return families, labels


def is_family(name, families):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in families or (base != name and families.get(base) == "histogram")


def declared_labels(name):
    """Label names manallm/metrics.py declares for a metric (for families with no sample)."""
    for metric in vars(metrics).values():
        base = getattr(metric, "_name", None)
        if base and name in {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}:
            return set(metric._labelnames)
    return set()


def test_every_metric_the_dashboard_and_alerts_query_is_exported(gw, http, fake):
    # Traffic that makes the labelled series exist: a fallback with a retry and a breaker
    # opened on a deployment, a stream (time to first token), a chain that runs out.
    fake.fault("ollama", "qwen2.5:7b", status=500)
    for _ in range(3):
        assert http.post("/v1/chat/completions", json=chat("mana/fast-text")).status_code == 200
    assert http.post("/v1/chat/completions", json=chat("mana/long-form", stream=True)).status_code == 200
    fake.fault("ollama", "gemma3:12b", status=500)
    fake.fault("groq", "llama-3.3-70b-versatile", status=500)
    fake.fault("openrouter", "anthropic/claude-3.5-haiku", status=500)
    assert http.post("/v1/chat/completions", json=chat("mana/long-form")).status_code == 503

    text = http.get("/metrics").text
    families, labels = exported(text)
    queries = dashboard_queries() + alert_queries()
    used = {name for expr in queries for name in metric_names(expr)}
    assert len(used) >= 15 and "mana_llm_llm_latency_seconds_bucket" in used, used

    assert {name for name in used if not is_family(name, families)} == set(), "queried but not exported"
    assert {name for name in used if name not in labels} <= MAY_BE_EMPTY, "queried, exported, but no sample"

    for expr in queries:
        known = {"le"} | {label for name in metric_names(expr)
                          for label in labels.get(name) or declared_labels(name)}
        if "label_replace" in expr:
            known |= set(re.findall(r'label_replace\([^"]*"(\w+)"', expr))
        assert label_names(expand(expr)) <= known, (expr, sorted(known))
