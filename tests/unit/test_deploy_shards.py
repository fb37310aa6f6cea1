"""k8s/examples/shards: one shard map renders a replica set per shard and the HTTPRoutes in front.

The generated overlays are what generate.py writes from shards.yaml; each shard is the base's
replica set renamed, labelled and given its MTS_TASKS, and nothing else of the base changes;
every rendered manifest is valid (built-in kinds against the pinned Kubernetes schemas, the
HTTPRoutes against the Gateway API v1.6.1 CRD's schema, tests/data/gateway-api/, and its CEL
limits); and the routes, read by tests/httproute.py's emulator, send every task-addressed path
to the shard whose selector the service would apply (the service's own TaskSelector as oracle).
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from multitask_serve.modelrepo.types import TASK_NAME_RE
from multitask_serve.service import admin, oip, openai_compat, routes, selection, tei
from multitask_serve.service.listeners import admin_only
from multitask_serve.service.selection import TaskSelector
from tests.deploy import (
    KUBERNETES_VERSION,
    SHARDS,
    by_kind,
    env_values,
    kustomization,
    render,
    render_shards,
    shard_generator,
)
from tests.httproute import backend

gen = shard_generator()
MAP = gen.load(SHARDS / "shards.yaml")
DOCS = render_shards()
BASE = render()
REPLICASET = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
ROUTES = by_kind(DOCS, "HTTPRoute")
GATEWAY_API = json.loads(
    (
        Path(__file__).resolve().parent.parent / "data" / "gateway-api" / "httproute-v1.json"
    ).read_text()
)
# The CRD's CEL rule for Exact and PathPrefix values (jsonschema does not run CEL).
PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _named(kind: str, name: str, docs: list[dict[str, Any]] = DOCS) -> dict[str, Any]:
    [doc] = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def _selector(shard: str) -> TaskSelector:
    """What the shard's pods serve: MTS_TASKS as the rendered Deployment declares it, parsed by
    the service."""
    container = _named("Deployment", f"mts-{shard}")["spec"]["template"]["spec"]["containers"][0]
    return TaskSelector.parse(env_values(container)["MTS_TASKS"].split(","))


def _unsharded(node: Any, shard: str) -> Any:
    """A shard's resource with its name back to mts and its shard label gone."""
    if isinstance(node, dict):
        return {
            k: _unsharded(v, shard)
            for k, v in node.items()
            if not (k == gen.SHARD_LABEL and v == shard)
        }
    if isinstance(node, list):
        return [_unsharded(v, shard) for v in node]
    return "mts" if node == f"mts-{shard}" else node


def test_the_generated_overlays_are_what_the_shard_map_gives():
    assert gen.files(MAP) == gen.on_disk(SHARDS / "generated")
    assert gen.main(["--check"]) == 0


def test_the_generator_knows_task_names_and_patterns_as_the_service_does():
    assert gen.TASK_NAME_RE.pattern == TASK_NAME_RE.pattern
    assert gen.PATTERN_RE.pattern == selection.PATTERN_RE.pattern


def test_the_overlay_names_the_base_s_namespace_labels_and_serving_image():
    base, overlay = kustomization(), kustomization(SHARDS)
    assert overlay["namespace"] == base["namespace"] and overlay["labels"] == base["labels"]
    [serving] = [i for i in base["images"] if i["name"] == "multitask-serve"]
    assert overlay["images"] == [serving]


def test_each_shard_is_the_base_s_replica_set_renamed_labelled_and_given_its_tasks():
    base = {d["kind"]: d for d in BASE if d["kind"] in REPLICASET}
    assert {(d["kind"], d["metadata"]["name"]) for d in DOCS if d["kind"] in REPLICASET} == {
        (kind, f"mts-{shard}") for kind in REPLICASET for shard in MAP.shards
    }
    for shard, patterns in MAP.shards.items():
        name, label = f"mts-{shard}", {gen.SHARD_LABEL: shard}
        deployment = _named("Deployment", name)
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert env_values(container)["MTS_TASKS"] == ",".join(patterns)
        assert _selector(shard).patterns == patterns
        selectors = [
            deployment["spec"]["selector"]["matchLabels"],
            _named("Service", name)["spec"]["selector"],
            _named("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"],
            *(c["labelSelector"]["matchLabels"] for c in pod["spec"]["topologySpreadConstraints"]),
        ]
        for selector in selectors:
            assert label.items() <= selector.items() <= pod["metadata"]["labels"].items()
        hpa = _named("HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        # Apart from its name, its shard label and MTS_TASKS, each is the base's.
        for kind in REPLICASET:
            undone = _unsharded(_named(kind, name), shard)
            if kind == "Deployment":
                env = undone["spec"]["template"]["spec"]["containers"][0]["env"]
                env[:] = [v for v in env if v["name"] != "MTS_TASKS"]
            assert undone == base[kind], kind


def test_the_shards_share_the_rest_of_the_base_unchanged():
    rest = {_id(d): d for d in BASE if d["kind"] not in REPLICASET}
    added = {_id(d): d for d in DOCS if d["kind"] not in REPLICASET | {"HTTPRoute"}}
    assert added == rest  # one volume, Job, ConfigMap, ServiceAccount, policies, monitoring
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind(DOCS, "Deployment")]
    [serving] = [p for p in by_kind(DOCS, "NetworkPolicy") if p["metadata"]["name"] == "mts"]
    monitor = by_kind(DOCS, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"]
    for labels in pods:  # the shards' pods are the base's serving pods to these
        assert serving["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    for service in by_kind(DOCS, "Service"):
        assert monitor.items() <= service["metadata"]["labels"].items()


@pytest.mark.parametrize("doc", [d for d in DOCS if d["kind"] != "HTTPRoute"], ids=_id)
def test_every_rendered_shard_manifest_is_valid_for_the_pinned_kubernetes_version(doc):
    if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
        assert doc == _named(doc["kind"], doc["metadata"]["name"], BASE)  # checked there
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _route_problems(route: dict[str, Any]) -> list[str]:
    """The HTTPRoute CRD's schema errors, and its CEL rules the generated routes could break."""
    validator = jsonschema.Draft202012Validator(GATEWAY_API["HTTPRoute"])
    problems = [e.message for e in validator.iter_errors(route)]
    rules = route["spec"].get("rules", [])
    if sum(len(r.get("matches", [])) for r in rules) > gen.MAX_ROUTE_MATCHES:
        problems.append("more than 128 matches")
    for rule in rules:
        for match in rule.get("matches", []):
            path = match.get("path", {})
            if path.get("type") in ("Exact", "PathPrefix"):
                value = path["value"]
                if not value.startswith("/") or not PATH_CHARS.match(value) or "//" in value:
                    problems.append(f"path {value!r}")
    return problems


def test_the_httproutes_are_valid_gateway_api_v1_within_its_limits():
    assert GATEWAY_API["_gateway_api_version"] == "v1.6.1"
    assert [r["metadata"]["name"] for r in ROUTES] == ["mts"]
    services = {(s["metadata"]["name"], p["port"]) for s in by_kind(DOCS, "Service")
                for p in s["spec"]["ports"]}  # fmt: skip
    for route in ROUTES:
        assert _route_problems(route) == []
        assert route["metadata"]["namespace"] == "mts"
        assert route["spec"]["parentRefs"] == list(MAP.parent_refs)
        for rule in route["spec"]["rules"]:
            assert {(r["name"], r["port"]) for r in rule["backendRefs"]} <= services
    # The checks themselves: each of these breaks the CRD.
    broken = copy.deepcopy(ROUTES[0])
    broken["spec"]["rules"][1]["matches"][0]["path"]["type"] = "Prefix"
    broken["spec"]["rules"][0]["backendRefs"][0]["prot"] = 80
    broken["spec"]["rules"][1]["matches"] *= 13  # 130 matches in one rule
    problems = " ".join(_route_problems(broken))
    for expected in ("'Prefix' is not one of", "'prot' was unexpected", "is too long", "128"):
        assert expected in problems


# Names the map lists, names its globs take, near misses, and a task no shard selects.
PROBES = sorted(
    {p for ps in MAP.shards.values() for p in ps if not any(c in p for c in "*?[")}
    | {"legal-ft", "a-ft", "news-zs", "topics", "topic-zs", "sentiment-ft", "ft", "nobody"}
)


UNTASKED = [
    *("/predict", "/v1/embeddings", "/v1/models", "/tasks", "/v2", "/v2/models"),
    *("/v2/repository/index", "/healthz", "/readyz", "/metrics", "/admin/heads"),
]


def test_the_routes_send_each_task_to_the_shard_whose_selector_takes_it():
    selectors = {shard: _selector(shard) for shard in MAP.shards}
    for task in PROBES:
        owners = [shard for shard, selector in selectors.items() if selector(task)]
        assert len(owners) <= 1, f"{task} is served by {owners}"
        expected = f"mts-{owners[0] if owners else MAP.default}"
        for prefix in gen.TASK_PREFIXES:
            for tail in ("", "/", "/infer", "/versions/1/ready", "?x=1"):
                assert backend(ROUTES, f"{prefix}/{task}{tail}") == expected, (prefix, task, tail)
    for untasked in UNTASKED:
        assert backend(ROUTES, untasked) == f"mts-{MAP.default}", untasked


def test_every_task_addressed_route_of_the_service_has_a_route_family():
    paths = [r.path for m in (routes, tei, openai_compat, oip, admin) for r in m.router.routes]
    assert len(paths) > 30
    # The admin API is on the admin port, which no route reaches (service/listeners.py).
    [config] = [c for c in by_kind(BASE, "ConfigMap") if c["metadata"]["name"] == "mts-config"]
    assert "MTS_ADMIN_PORT" in config["data"]
    paths = [path for path in paths if not admin_only(path)]
    for path in paths:
        if "{task}" in path:
            assert path.split("/{task}")[0] in gen.TASK_PREFIXES, path
        else:  # no route without a task may start like one with (it would go to a shard)
            assert not any(path.startswith(p + "/") for p in gen.TASK_PREFIXES), path


def _map(tmp_path: Path, shards: dict[str, list[str]], default: str = "a") -> Path:
    path = tmp_path / "shards.yaml"
    data = {"shards": shards, "default": default, "parentRefs": [{"name": "gw"}]}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("shards", "why"),
    [
        ({"a": ["x"], "b": ["x"]}, "'x' \\(shard a\\) and 'x' \\(shard b\\) can select"),
        ({"a": ["topic-zs"], "b": ["topic-*"]}, "'topic-zs' \\(shard a\\) and 'topic-\\*'"),
        ({"a": ["*-zs"], "b": ["support-*"]}, "can select the same task"),
        ({"a": ["x"], "b": []}, "selects nothing"),
        ({"a": ["x"], "b": ["Topic"]}, "'Topic' is not a task name"),
        ({"a": ["x"], "B": ["y"]}, "shard name 'B'"),
        ({"a": ["x"], "b": ["[!a-z0-9_-]*"]}, "can never match a task name"),
        ({"a": ["x"], "b": [7]}, "7 is not a task name or glob"),
    ],
)
def test_a_map_that_could_route_a_task_to_two_shards_or_none_is_refused(tmp_path, shards, why):
    with pytest.raises(gen.ShardMapError, match=why):
        gen.load(_map(tmp_path, shards))


def test_a_map_with_an_unknown_default_is_refused_and_the_script_says_why(tmp_path, capsys):
    path = _map(tmp_path, {"a": ["x"]}, default="b")
    assert gen.main(["--map", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "default 'b' is not one of the shards ['a']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_big_map_is_split_over_httproutes_within_the_limits(tmp_path):
    many = [f"task-{i:03d}" for i in range(200)]  # 600 PathPrefix matches
    globs = [f"*-v{i}" for i in range(20)]
    shard_map = gen.load(_map(tmp_path, {"a": ["x"], "b": many, "c": globs}))
    routes_ = gen.routes(shard_map)
    assert len(routes_) == 5
    for route in routes_:
        route["metadata"]["namespace"] = "mts"
        assert _route_problems(route) == []
        assert len(route["spec"]["rules"]) <= gen.MAX_RULES
    for task in [*many, "a-v7", "x", "other"]:
        for prefix in gen.TASK_PREFIXES:
            want = f"mts-{shard_map.shard_of(task)}"
            assert backend(routes_, f"{prefix}/{task}/x") == want


# Globs against fnmatch over every short string: patterns name only a, b and '-', so a string of
# a, b, '-' and c (standing for every other task character) covers every case.
TOKENS = ["a", "b", "-", "*", "?", "[ab]", "[!a]", "[a-b]"]
STRINGS = ["".join(s) for n in range(7) for s in itertools.product("ab-c", repeat=n)]


def test_globs_become_regular_expressions_that_match_what_fnmatch_does():
    for n in (1, 2, 3):
        for tokens in itertools.product(TOKENS, repeat=n):
            pattern = "".join(tokens)
            regex = re.compile(gen.glob_regex(pattern))
            for s in STRINGS[:341]:  # up to 4 characters
                assert bool(regex.fullmatch(s)) == fnmatchcase(s, pattern), (pattern, s)
            assert not regex.fullmatch("a/b") and not regex.fullmatch("A")


def test_the_overlap_check_agrees_with_fnmatch_on_every_short_string():
    patterns = ["".join(t) for n in (1, 2, 3) for t in itertools.product(TOKENS, repeat=n)]
    matched = {p: frozenset(s for s in STRINGS if fnmatchcase(s, p)) for p in patterns}
    pairs = list(itertools.combinations(patterns, 2))
    for a, b in random.Random(0).sample(pairs, 6000):  # two 3-token globs meet within 6
        assert gen.overlap(a, b) == bool(matched[a] & matched[b]), (a, b)


def test_the_route_emulator_follows_gateway_api_precedence():
    def route(name: str, *rules: tuple[str, str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {
                "rules": [
                    {"matches": [{"path": {"type": t, "value": v}}], "backendRefs": [{"name": b}]}
                    for t, v, b in rules
                ]
            },
        }

    table = [
        route("a", ("PathPrefix", "/", "root"), ("PathPrefix", "/predict/topic", "prefix")),
        route("b", ("Exact", "/predict/topic/exact", "exact"), ("PathPrefix", "/predict/", "p")),
        route("c", ("RegularExpression", "/predict/t[a-z]*", "regex")),
    ]
    assert backend(table, "/predict/topic") == "regex"  # a regex outranks every prefix
    assert backend(table, "/predict/topic/x") == "prefix"  # the regex is matched whole
    assert backend(table, "/predict/topic/exact") == "exact"
    assert backend(table, "/predict/topic-zs") == "p"  # PathPrefix is element-wise
    assert backend(table, "/predict") == "p"  # '/predict/' ignores its trailing '/'
    assert backend(table, "/tasks") == "root"
    assert backend(table[1:], "/tasks") is None
