"""Helpers for the static checks of k8s/ and the Dockerfile: render the kustomization, metric names.

There is no kustomize binary here, so ``render`` applies the few transformations k8s/'s
kustomization.yaml uses (namespace, labels, images, a configMapGenerator) and fails on any other
field, so that a kustomization growing a feature this renderer ignores cannot pass unchecked.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from multitask_serve.service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.31"  # the oldest Kubernetes minor the manifests must be valid for
CLUSTER_SCOPED = {"Namespace"}
RENDERED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "configMapGenerator",
}


def kustomization() -> dict[str, Any]:
    data = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    unknown = set(data) - RENDERED_FIELDS
    assert not unknown, f"kustomization.yaml uses {unknown}, which tests/deploy.py does not render"
    return data


def _image(image: str, images: list[dict[str, str]]) -> str:
    name, _, tag = image.partition(":")
    for rule in images:
        if rule["name"] == name:
            return f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"
    return image


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "Job"):
        return spec["template"]["spec"]  # type: ignore[no-any-return]
    return None


def render() -> list[dict[str, Any]]:
    """Every resource `kubectl apply -k k8s/` would create, as dicts, in order."""
    config = kustomization()
    docs: list[dict[str, Any]] = []
    for name in config["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    for generator in config.get("configMapGenerator", []):
        options = generator.get("options", {})
        assert options.get("disableNameSuffixHash"), "the renderer does not compute name hashes"
        data = {Path(f).name: (K8S / f).read_text() for f in generator["files"]}
        metadata = {"name": generator["name"], "labels": dict(options.get("labels", {}))}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    rendered = []
    for original in docs:
        doc = copy.deepcopy(original)
        metadata = doc.setdefault("metadata", {})
        if doc["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = config["namespace"]
        for rule in config.get("labels", []):
            assert not rule.get("includeSelectors"), "selector labels are not rendered"
            metadata.setdefault("labels", {}).update(rule["pairs"])
        pod = _pod_spec(doc)
        if pod is not None:
            for container in pod.get("initContainers", []) + pod["containers"]:
                container["image"] = _image(container["image"], config.get("images", []))
        rendered.append(doc)
    return rendered


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def exposed_series() -> dict[str, tuple[str, ...]]:
    """Series name -> label names, for every series service/metrics.py exposes."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    metrics = Metrics(CollectorRegistry())
    series = {}
    # prometheus_client has no public accessor for a metric's label names: read its attributes.
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in suffixes[metric._type]:
                extra = ("le",) if suffix == "_bucket" else ()
                series[metric._name + suffix] = (*metric._labelnames, *extra)
    return series


# Labels Prometheus adds when it scrapes a pod through a ServiceMonitor.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
SELECTOR = re.compile(r"\b(mts_[a-z_]+)\b(\{[^}]*\})?")
LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_expression(expr: str) -> list[str]:
    """Problems with the series and labels an expression names, against service/metrics.py."""
    series = exposed_series()
    problems = []
    used = SELECTOR.findall(expr)
    if not used:
        problems.append(f"no mts_* series in {expr!r}")
    labels_in_expr: set[str] = set()
    for name, matchers in used:
        if name not in series:
            problems.append(f"{name} is not a series service/metrics.py exposes")
            continue
        labels = set(LABEL.findall(matchers))
        labels_in_expr |= labels
        unknown = labels - set(series[name]) - TARGET_LABELS
        if unknown:
            problems.append(f"{name} has no label {sorted(unknown)}")
    known = {label for names in series.values() for label in names} | TARGET_LABELS
    for group in GROUPING.findall(expr):
        for label in (g.strip() for g in group.split(",")):
            if label and not label.startswith("<<") and label not in known:
                problems.append(f"grouping by {label!r}, which no series has")
    return problems
