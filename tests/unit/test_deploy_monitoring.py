"""Alerts, the Grafana dashboard and the prometheus-adapter rules speak our real series.

Every expression must name only series and labels that service/metrics.py exposes. Where
Debian's prometheus package provides promtool, the alert rules also pass `promtool check rules`
and their unit tests (`promtool test rules`: every alert seen firing and seen quiet), and every
dashboard and adapter query parses as PromQL (checked by wrapping each in a recording rule).
Without promtool those tests skip, except in CI (CI set), where .ci/run installs it and a
missing promtool fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from multitask_serve.service import admin, oip, openai_compat, routes, tei
from multitask_serve.service.app import INFERENCE
from tests.deploy import K8S, ROOT, by_kind, check_expression, exposed_series, kustomization, render

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool not installed (Debian: apt-get install prometheus)",
)
DASHBOARD = json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())
ADAPTER = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter.yaml").read_text())
ALERT_GROUPS = by_kind(render(), "PrometheusRule")[0]["spec"]["groups"]
ALERTS = {rule["alert"]: rule for group in ALERT_GROUPS for rule in group["rules"]}
RUNBOOK = ROOT / "docs" / "runbook.md"
# Where docs/runbook.md is read: a placeholder, like the image registry (prometheusrule.yaml).
RUNBOOK_URL = "https://git.example.com/multitask-serve/blob/main/docs/runbook.md"


def _dashboard_queries() -> list[str]:
    return [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]


def _panel(title: str) -> str:
    [panel] = [p for p in DASHBOARD["panels"] if p["title"] == title]
    [target] = panel["targets"]
    return str(target["expr"])


def _as_promql(query: str) -> str:
    """Grafana and adapter templates replaced by values, so that promtool can parse the rest."""
    query = query.replace("$__rate_interval", "5m")
    query = re.sub(r"<<\.LabelMatchers>>", 'namespace="mts"', query)
    return re.sub(r"<<\.GroupBy>>", "pod", query)


def _adapter_queries() -> list[str]:
    """Each rule's query, with the series its seriesQuery discovers in place of <<.Series>>."""
    return [
        rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].partition("{")[0])
        for rule in ADAPTER["rules"]["custom"]
    ]


def _promtool(*args: str, cwd: Path) -> str:
    assert PROMTOOL is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rules_file(tmp_path: Path, groups: list[dict[str, Any]]) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "expr",
    [rule["expr"] for group in ALERT_GROUPS for rule in group["rules"]]
    + _dashboard_queries()
    + _adapter_queries(),
)
def test_every_query_names_series_and_labels_the_service_exposes(expr):
    assert check_expression(expr) == []


def test_the_name_check_catches_a_misspelt_series_or_label():
    assert check_expression('rate(mts_request_total{task="a"}[5m])')
    assert check_expression('sum by (stage) (rate(mts_requests_total{stage="a"}[5m]))')
    # A label another series has, grouped on one without it (the histograms have no task label).
    assert check_expression("sum by (task, le) (rate(mts_head_load_duration_seconds_bucket[5m]))")


def test_every_task_has_only_its_request_counter_the_other_per_task_series_are_rare():
    """A task label multiplies a series by the number of tasks: every task gets only the request
    counter (one line per outcome); the others exist for a refused head or a shadow candidate
    (service/metrics.py says why each is per task, or not)."""
    per_task = {name for name, labels in exposed_series().items() if "task" in labels}
    assert per_task == {
        "mts_requests_total",
        "mts_head_load_failures_total",  # only for a refused head
        "mts_long_texts_total",  # only for a task that got a text longer than the served length
        "mts_shadow_texts_total",  # only for a task with a shadow candidate (few)
        "mts_shadow_agreements_total",
        "mts_shadow_head_duration_seconds_bucket",
        "mts_shadow_head_duration_seconds_sum",
        "mts_shadow_head_duration_seconds_count",
    }


def test_the_dashboard_covers_latency_throughput_errors_batching_and_heads():
    queries = " ".join(_dashboard_queries())
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) (rate(mts_request_duration_seconds_bucket"
            in queries
        )
    for series in (
        # Per task: traffic and errors (the one per-task serving series).
        'mts_requests_total{namespace=~"$namespace", task=~"$task", outcome="ok"}',
        'outcome="error"',
        "sum by (kind, le) (rate(mts_head_duration_seconds_bucket",
        "mts_batch_texts",
        "mts_queue_wait_duration_seconds_bucket",
        "mts_requests_in_flight",
        # Residency: served and loaded heads, loaded bytes against the budget, the hit ratio, cold
        # loads and evictions.
        "max by (pod) (mts_heads_served",
        "max by (pod) (mts_heads_loaded",
        "mts_head_loaded_bytes",
        "mts_head_memory_budget_bytes",
        'mts_head_lookups_total{namespace=~"$namespace", result="hit"}',
        "histogram_quantile(0.95, sum by (le) (rate(mts_head_cold_load_duration_seconds_bucket",
        "rate(mts_head_evictions_total",
        # Every HTTP answer per status class, the limits' 429s apart from 5xx and other 4xx.
        'mts_http_requests_total{namespace=~"$namespace", status=~"5.."}',
        'mts_http_requests_total{namespace=~"$namespace", status="429"}',
        'status=~"4..", status!="429"',
        # Shadow candidates: agreement with the served head, and what they skipped.
        "mts_shadow_agreements_total",
        "mts_shadow_texts_total",
    ):
        assert series in queries
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in DASHBOARD["templating"]["list"]} == {
        "datasource",
        "namespace",
        "task",
    }


def test_the_hpa_reads_a_metric_the_adapter_exposes():
    hpa = by_kind(render(), "HorizontalPodAutoscaler")[0]
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    exposed = {rule["name"]["as"] for rule in ADAPTER["rules"]["custom"]}
    assert pods and set(pods) <= exposed


def test_every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet():
    alerts = set(ALERTS)
    assert len(alerts) == 10
    cases = yaml.safe_load((K8S / "monitoring" / "alerts-test.yaml").read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    fired = {c["alertname"] for c in checks if c["exp_alerts"]}
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert fired == alerts and quiet == alerts


def test_replicas_are_compared_on_heads_served_never_on_heads_loaded():
    """Replicas load heads on demand within MTS_HEAD_MEMORY_MB, so their loaded counts differ on a
    healthy fleet; the served ones must meet."""
    rules = {rule["alert"]: rule["expr"] for group in ALERT_GROUPS for rule in group["rules"]}
    for alert in ("MtsReplicasDisagree", "MtsNoHeadsServed"):
        assert "mts_heads_served" in rules[alert] and "mts_heads_loaded" not in rules[alert]
    assert not any("mts_heads_loaded" in expr for expr in rules.values())
    replicas = next(p for p in DASHBOARD["panels"] if p["title"] == "Replicas")
    assert "mts_heads_served" in replicas["targets"][0]["expr"]


def test_the_ratio_alerts_read_5xx_and_429_apart_with_a_traffic_floor():
    rules = {rule["alert"]: rule["expr"] for group in ALERT_GROUPS for rule in group["rules"]}
    errors, shedding = rules["MtsErrorRatioHigh"], rules["MtsLoadShedding"]
    assert 'status=~"5.."' in errors and "429" not in errors
    assert 'status="429"' in shedding and "5.." not in shedding
    for expr in (errors, shedding):
        assert "sum by (namespace, route) (rate(mts_http_requests_total[5m])) > 0.2" in expr


def _anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer (GitHub's) gives the headings: lowercase, punctuation but
    hyphens dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_its_own_runbook_section_and_every_section_is_an_alert():
    runbook = RUNBOOK.read_text()
    sections = set(re.findall(r"^## (Mts\w+)$", runbook, flags=re.MULTILINE))
    assert sections == set(ALERTS)
    for name, rule in ALERTS.items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_URL}#{name.lower()}"
        assert url.partition("#")[2] in _anchors(runbook), name


def test_the_docs_name_every_alert_and_count_them_right():
    """docs/deploy.md's list of alerts, and the rule count its promtool output shows."""
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"`(Mts[A-Za-z0-9]+)`", deploy))
    assert named == set(ALERTS)
    counts = re.findall(r"SUCCESS: (\d+) rules found", deploy)
    assert counts and {int(c) for c in counts} == {len(ALERTS)}


def test_prometheus_operator_of_kube_prometheus_stack_selects_the_monitor_and_the_rules():
    """kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules by its release
    label (serviceMonitorSelectorNilUsesHelmValues, ruleSelectorNilUsesHelmValues: true by
    default): without it, nothing is scraped and no alert exists."""
    docs = render()
    for kind in ("ServiceMonitor", "PrometheusRule"):
        [doc] = by_kind(docs, kind)
        assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind


def test_an_alert_fires_when_no_replica_is_scraped_in_the_kustomizations_namespace():
    expr = ALERTS["MtsMetricsAbsent"]["expr"].strip()
    assert expr == f'absent(mts_heads_served{{namespace="{kustomization()["namespace"]}"}})'
    assert ALERTS["MtsMetricsAbsent"]["labels"]["severity"] == "critical"


def test_readiness_failures_alert_on_the_outcomes_that_answer_503():
    expr = ALERTS["MtsReadinessFailing"]["expr"]
    assert 'mts_readiness_probes_total{outcome=~"stuck|stopped|failed"}' in expr
    assert "busy" not in expr and '"ok"' not in expr


def test_the_p99_alert_needs_traffic_like_the_ratio_alerts():
    expr = ALERTS["MtsLatencyP99High"]["expr"]
    assert "sum by (namespace) (rate(mts_request_duration_seconds_count[5m])) > 0.2" in expr


def _app_routes() -> dict[str, bool]:
    """Every POST route template of the service -> whether it runs inference."""
    app = FastAPI()
    for router in (routes.router, tei.router, openai_compat.router, oip.router, admin.router):
        app.include_router(router)
    return {
        str(r.path): INFERENCE("POST", r.path.replace("{task}", "t").replace("{version}", "1"))
        for r in iter_route_contexts(app.router.routes)
        if "POST" in (getattr(r, "methods", None) or ())
    }


def test_requests_per_second_counts_each_request_once_on_the_inference_routes():
    """mts_requests_total counts a request once per task it asks for: the stat reads the counter
    of HTTP answers instead, on exactly the routes that run inference (PromQL anchors regexes)."""
    expr = _panel("Requests/s")
    assert "mts_requests_total" not in expr and "mts_http_requests_total" in expr
    [pattern] = re.findall(r'route=~"([^"]+)"', expr)
    templates = _app_routes()
    assert sum(templates.values()) >= 8  # /predict, TEI, OpenAI, OIP: the check checks something
    for template, inference in templates.items():
        assert bool(re.fullmatch(pattern, template)) == inference, template


def _evaluable(query: str) -> str:
    """A dashboard query with Grafana's variables set: namespace mts, every task, 5m ranges."""
    query = query.replace('"$namespace"', '"mts"').replace('"$task"', '".*"')
    return query.replace("$__rate_interval", "5m")


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ", ".join(f'{k}="{v}"' for k, v in {"namespace": "mts", **labels}.items())
    return {"series": f"{name}{{{matchers}}}", "values": values}


@needs_promtool
def test_the_dashboard_counts_a_multitask_request_once_and_shows_a_heads_first_failure(tmp_path):
    """Evaluated by promtool on series as the service writes them. Per second: one /predict
    request for three tasks (three mts_requests_total samples), half a 429 on the v2 route, and
    probes, scrapes and a repository index that are no predictions: 1.5 requests/s. A head first
    refused at 25m: its failure counter appears with the value 1, which the panel shows for the
    5 minutes after (increase() alone shows nothing, then 0)."""
    http = "mts_http_requests_total"
    requests = [
        _series(http, "0+60x10", route="/predict", method="POST", status="200"),
        _series(http, "0+30x10", route="/v2/models/{task}/infer", method="POST", status="429"),
        _series(http, "0+60x10", route="/v2/repository/index", method="POST", status="200"),
        _series(http, "0+6x10", route="/readyz", method="GET", status="200"),
        _series(http, "0+4x10", route="/metrics", method="GET", status="200"),
        *(_series("mts_requests_total", "0+60x10", task=t, outcome="ok") for t in "abc"),
    ]
    failures = [
        _series("mts_head_load_failures_total", "_x25 1x40", pod="mts-a", task="reviews"),
        _series("mts_head_load_failures_total", "2x65", pod="mts-a", task="mood"),
    ]
    shown = _evaluable(_panel("Head load failures"))
    first = [{"labels": '{task="reviews"}', "value": 1}]
    expected = {"24m": [], "25m": first, "29m": first, "31m": []}
    cases = {
        "rule_files": [_rules_file(tmp_path, ALERT_GROUPS).name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": requests,
                "promql_expr_test": [
                    {
                        "expr": _evaluable(_panel("Requests/s")),
                        "eval_time": "5m",
                        "exp_samples": [{"labels": "{}", "value": 1.5}],
                    }
                ],
            },
            {
                "interval": "1m",
                "input_series": failures,
                "promql_expr_test": [
                    {"expr": shown, "eval_time": when, "exp_samples": samples}
                    for when, samples in expected.items()
                ],
            },
        ],
    }
    (tmp_path / "dashboard-test.yaml").write_text(yaml.safe_dump(cases, sort_keys=False))
    assert "SUCCESS" in _promtool("test", "rules", "dashboard-test.yaml", cwd=tmp_path)


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests(tmp_path):
    rules = _rules_file(tmp_path, ALERT_GROUPS)
    assert "SUCCESS" in _promtool("check", "rules", rules.name, cwd=tmp_path)
    shutil.copy(K8S / "monitoring" / "alerts-test.yaml", tmp_path)
    assert "SUCCESS" in _promtool("test", "rules", "alerts-test.yaml", cwd=tmp_path)


@needs_promtool
def test_dashboard_and_adapter_queries_parse_as_promql(tmp_path):
    queries = _dashboard_queries() + _adapter_queries()
    recorded = [
        {"record": f"check:query_{i}", "expr": _as_promql(q)} for i, q in enumerate(queries)
    ]
    rules = _rules_file(tmp_path, [{"name": "queries", "rules": recorded}])
    out = _promtool("check", "rules", rules.name, cwd=tmp_path)
    assert f"SUCCESS: {len(queries)} rules found" in out
    broken = _rules_file(tmp_path, [{"name": "q", "rules": [{"record": "x:y", "expr": "sum("}]}])
    assert subprocess.run([PROMTOOL, "check", "rules", str(broken)], capture_output=True).returncode
