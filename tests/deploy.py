"""Helpers for the static checks of k8s/ and the Dockerfile: render the kustomization, metric names.

Kustomize is not always installed where the tests run, so ``render`` applies the few
transformations k8s/'s kustomizations use (nested kustomization directories, patches that add or
delete, namespace, nameSuffix with the references it renames, labels with or without selectors,
images, replacements, a configMapGenerator) and fails on any other field, so that a
kustomization growing a feature this renderer ignores cannot pass unchecked. Where ``kubectl
kustomize`` exists, a test compares the two renderings (tests/unit/test_deploy_k8s.py).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from multitask_serve.service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
SHARDS = K8S / "examples" / "shards"  # the static shards' overlay, map and generator
KUBERNETES_VERSION = "1.31"  # the oldest Kubernetes minor the manifests must be valid for
CLUSTER_SCOPED = {"Namespace"}
RENDERED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "replacements",
    "configMapGenerator",
    "nameSuffix",
    "patches",
}
# Where kustomize's labels with includeSelectors go besides metadata.labels (its commonLabels
# field specs), for the kinds k8s/ labels that way: (path, create the field when absent).
SELECTOR_FIELDS = {
    "Deployment": [
        ("spec.selector.matchLabels", True),
        ("spec.template.metadata.labels", True),
        ("spec.template.spec.topologySpreadConstraints[].labelSelector.matchLabels", False),
    ],
    "Service": [("spec.selector", True)],
    "PodDisruptionBudget": [("spec.selector.matchLabels", False)],
    "HorizontalPodAutoscaler": [],
}
# The names a resource had before a nameSuffix (kustomize still selects a patch target by them);
# kept on each dict while rendering, never in what ``render`` returns.
PREVIOUS = "__previous_names__"


def kustomization(root: Path = K8S) -> dict[str, Any]:
    data = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(data) - RENDERED_FIELDS
    assert not unknown, f"kustomization.yaml uses {unknown}, which tests/deploy.py does not render"
    return data


def _image(image: str, images: list[dict[str, str]]) -> str:
    name, _, tag = image.partition(":")
    for rule in images:
        if rule["name"] == name:
            if "digest" in rule:  # kustomize's form: the digest in place of the tag
                return f"{rule.get('newName', name)}@{rule['digest']}"
            return f"{rule.get('newName', name)}:{rule.get('newTag', tag or 'latest')}"
    return image


def _containers(node: Any) -> list[dict[str, Any]]:
    """Every container in a resource, wherever it sits: kustomize's images transformer sets the
    image of any `containers` or `initContainers` entry (a ServingRuntime's spec.containers too)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found.extend(c for c in value if isinstance(c, dict) and "image" in c)
            else:
                found.extend(_containers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_containers(value))
    return found


def _path(field_path: str) -> list[str]:
    """`spec.template.spec.containers.[name=build].image` -> its segments."""
    return re.findall(r"\[[^\]]*\]|[^.\[]+", field_path)


def _walk(node: Any, segments: list[str]) -> tuple[Any, str | int]:
    """The container of a field path's last segment, and that segment (dict key or list index)."""
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment.startswith("[") and "=" in segment:
            key, _, value = segment[1:-1].partition("=")
            index = next(j for j, item in enumerate(node) if item.get(key) == value)
            if last:
                return node, index
            node = node[index]
        else:
            if segment.startswith("["):  # a map key holding dots: [app.kubernetes.io/version]
                segment = segment[1:-1]
            if last:
                return node, segment
            node = node[segment]
    raise AssertionError("empty field path")


def _selects(doc: dict[str, Any], selector: dict[str, str]) -> bool:
    unknown = set(selector) - {"kind", "name"}
    assert not unknown, f"replacement selector fields {unknown} are not rendered"
    return all(
        (doc["kind"] if field == "kind" else doc["metadata"]["name"]) == value
        for field, value in selector.items()
    )


def _replace(docs: list[dict[str, Any]], replacements: list[dict[str, Any]]) -> None:
    """kustomize's `replacements`: the forms k8s/ uses (a source field, optionally one part of it
    split by a delimiter, into target fields or one delimited part of them)."""
    for replacement in replacements:
        source_spec = replacement["source"]
        selector = {k: v for k, v in source_spec.items() if k in ("kind", "name")}
        sources = [d for d in docs if _selects(d, selector)]
        assert len(sources) == 1, f"replacement source {selector} matches {len(sources)} resources"
        parent, key = _walk(sources[0], _path(source_spec["fieldPath"]))
        value = parent[key]
        options = source_spec.get("options", {})
        if "delimiter" in options:
            value = value.split(options["delimiter"])[options.get("index", 0)]
        for target in replacement["targets"]:
            for doc in (d for d in docs if _selects(d, target["select"])):
                for field_path in target["fieldPaths"]:
                    parent, key = _walk(doc, _path(field_path))
                    options = target.get("options", {})
                    if "delimiter" in options:
                        parts = parent[key].split(options["delimiter"])
                        index = options.get("index", 0)
                        if index < len(parts):
                            parts[index] = value
                        else:  # past the end: kustomize appends
                            parts.append(value)
                        parent[key] = options["delimiter"].join(parts)
                    else:
                        parent[key] = value


def render(root: Path = K8S) -> list[dict[str, Any]]:
    """Every resource `kubectl apply -k <root>` would create, as dicts, in order (k8s/ by
    default)."""
    docs = _render(root)
    for doc in docs:
        doc.pop(PREVIOUS, None)
    return docs


def _render(root: Path) -> list[dict[str, Any]]:
    config = kustomization(root)
    docs: list[dict[str, Any]] = []
    for name in config["resources"]:
        if (root / name).is_dir():  # a kustomization of its own, rendered first
            docs.extend(_render(root / name))
        else:
            docs.extend(d for d in yaml.safe_load_all((root / name).read_text()) if d)
    for generator in config.get("configMapGenerator", []):
        options = generator.get("options", {})
        assert options.get("disableNameSuffixHash"), "the renderer does not compute name hashes"
        data = {Path(f).name: (root / f).read_text() for f in generator["files"]}
        metadata = {"name": generator["name"], "labels": dict(options.get("labels", {}))}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    # Kustomize's order within one kustomization: patches, namespace, nameSuffix, labels,
    # images, replacements; renamed references are fixed after them.
    docs = _patch(copy.deepcopy(docs), config.get("patches", []))
    for doc in docs:
        metadata = doc.setdefault("metadata", {})
        if doc["kind"] not in CLUSTER_SCOPED and "namespace" in config:
            metadata["namespace"] = config["namespace"]
    renamed = _suffix(docs, config.get("nameSuffix", ""))
    for doc in docs:
        for rule in config.get("labels", []):
            _label(doc, rule)
        for container in _containers(doc):
            container["image"] = _image(container["image"], config.get("images", []))
    _replace(docs, config.get("replacements", []))
    for doc in docs:
        _rename_references(doc, renamed)
    return docs


def _targets(doc: dict[str, Any], target: dict[str, str]) -> bool:
    """A patch target: kind and name are anchored regular expressions, the name matched against
    any name the resource has had; a label selector of `key`, `!key`, `key=value` terms."""
    unknown = set(target) - {"kind", "name", "labelSelector"}
    assert not unknown, f"patch target fields {unknown} are not rendered"
    if "kind" in target and not re.fullmatch(target["kind"], doc["kind"]):
        return False
    names = [doc["metadata"]["name"], *doc.get(PREVIOUS, [])]
    if "name" in target and not any(re.fullmatch(target["name"], n) for n in names):
        return False
    labels = doc["metadata"].get("labels", {})
    for term in filter(None, target.get("labelSelector", "").split(",")):
        key, equals, value = term.strip().partition("=")
        assert re.fullmatch(r"!?[\w./-]+", key), f"label selector {term!r} is not rendered"
        if key.startswith("!"):
            holds = key[1:] not in labels
        else:
            holds = labels.get(key) == value if equals else key in labels
        if not holds:
            return False
    return True


def _pointer(doc: Any, pointer: str) -> tuple[Any, str | int]:
    """A JSON pointer's parent and last key (a list index, or len() for '-')."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    if isinstance(doc, list):
        return doc, len(doc) if last == "-" else int(last)
    return doc, last


def _patch(docs: list[dict[str, Any]], patches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kustomize's `patches` of the two forms k8s/ uses: JSON 6902 operations (add, replace,
    remove), and a strategic merge patch that is only `$patch: delete`, each on a target."""
    for patch in patches:
        assert set(patch) == {"target", "patch"}, f"patch {set(patch)} is not rendered"
        body = yaml.safe_load(patch["patch"])
        selected = [d for d in docs if _targets(d, patch["target"])]
        if isinstance(body, dict):
            assert body.get("$patch") == "delete", "only `$patch: delete` merge patches render"
            docs = [d for d in docs if not any(d is s for s in selected)]
            continue
        for doc in selected:
            for op in body:
                assert op["op"] in ("add", "replace", "remove"), f"{op['op']} is not rendered"
                parent, key = _pointer(doc, op["path"])
                if op["op"] == "remove":
                    del parent[key]
                elif op["op"] == "add" and isinstance(parent, list):
                    parent.insert(int(key), copy.deepcopy(op["value"]))
                else:
                    parent[key] = copy.deepcopy(op["value"])
    return docs


def _suffix(docs: list[dict[str, Any]], suffix: str) -> dict[tuple[str, str], str]:
    """nameSuffix on every resource: (kind, old name) -> new name."""
    renamed = {}
    for doc in docs if suffix else []:
        assert doc["kind"] not in CLUSTER_SCOPED, "a suffixed cluster-scoped kind is not rendered"
        old = doc["metadata"]["name"]
        doc["metadata"]["name"] = old + suffix
        doc.setdefault(PREVIOUS, []).append(old)
        renamed[(doc["kind"], old)] = old + suffix
    return renamed


def _fields(node: Any, path: list[str], create: bool) -> list[dict[str, Any]]:
    """The dicts at a dotted path (`[]` after a segment: each item of that list)."""
    if not path:
        return [node]
    key, each = path[0].removesuffix("[]"), path[0].endswith("[]")
    if key not in node:
        if not create or each:
            return []
        node[key] = {}
    children = node[key] if each else [node[key]]
    return [found for child in children for found in _fields(child, path[1:], create)]


def _label(doc: dict[str, Any], rule: dict[str, Any]) -> None:
    unknown = set(rule) - {"pairs", "includeSelectors"}
    assert not unknown, f"label options {unknown} are not rendered"
    doc["metadata"].setdefault("labels", {}).update(rule["pairs"])
    if not rule.get("includeSelectors"):
        return
    assert doc["kind"] in SELECTOR_FIELDS, f"selector labels on a {doc['kind']} are not rendered"
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    assert "affinity" not in pod, "selector labels in affinity terms are not rendered"
    for path, create in SELECTOR_FIELDS[doc["kind"]]:
        for labels in _fields(doc, path.split("."), create):
            labels.update(rule["pairs"])


def _rename_references(doc: dict[str, Any], renamed: dict[tuple[str, str], str]) -> None:
    """kustomize's name references, for the fields k8s/'s resources refer by: a renamed
    resource's new name wherever a resource of the same kustomization names it."""
    if not renamed:
        return

    def fix(holder: dict[str, Any], key: str, kind: str) -> None:
        if key in holder and (kind, holder[key]) in renamed:
            holder[key] = renamed[(kind, holder[key])]

    if doc["kind"] == "HorizontalPodAutoscaler":
        ref = doc["spec"]["scaleTargetRef"]
        fix(ref, "name", ref["kind"])
    pod = doc.get("spec", {}).get("template", {}).get("spec")
    if doc["kind"] in ("Deployment", "Job") and pod:
        fix(pod, "serviceAccountName", "ServiceAccount")
        for volume in pod.get("volumes", []):
            fix(volume.get("persistentVolumeClaim", {}), "claimName", "PersistentVolumeClaim")
            fix(volume.get("configMap", {}), "name", "ConfigMap")
            fix(volume.get("secret", {}), "secretName", "Secret")
        for container in pod.get("initContainers", []) + pod["containers"]:
            for source in container.get("envFrom", []):
                fix(source.get("configMapRef", {}), "name", "ConfigMap")
                fix(source.get("secretRef", {}), "name", "Secret")
            for variable in container.get("env", []):
                source = variable.get("valueFrom", {})
                fix(source.get("configMapKeyRef", {}), "name", "ConfigMap")
                fix(source.get("secretKeyRef", {}), "name", "Secret")
    else:
        assert doc["kind"] in ("Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"), (
            f"references of a renamed {doc['kind']} are not rendered"
        )


def shards_overlay(where: Path) -> Path:
    """The shards overlay copied beside a copy of k8s/, as docs/deploy.md says to use it."""
    shutil.copytree(K8S, where / "k8s")
    return Path(shutil.copytree(SHARDS, where / "shards"))


def render_shards() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as where:
        return render(shards_overlay(Path(where)))


def shard_generator() -> ModuleType:
    """k8s/examples/shards/generate.py, a script beside the manifests, as a module."""
    spec = importlib.util.spec_from_file_location("shards_generate", SHARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# KServe fills these in a ServingRuntime's containers from the InferenceService's metadata (its
# controller runs the container, as JSON, through Go's text/template: ReplacePlaceholders).
KSERVE_PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def kserve_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The predictor container KServe makes of k8s/kserve/: the ServingRuntime's container with
    its placeholders filled from the InferenceService's metadata (Name, Namespace; any other
    fails, as it would be left unexplained here)."""
    [runtime] = by_kind(docs, "ServingRuntime")
    [service] = by_kind(docs, "InferenceService")
    meta = {"Name": service["metadata"]["name"], "Namespace": service["metadata"]["namespace"]}
    text = json.dumps(runtime["spec"]["containers"][0])

    def fill(match: re.Match[str]) -> str:
        assert match.group(1) in meta, f"{match.group(0)}: not a field this emulation fills"
        return str(meta[match.group(1)])

    filled: dict[str, Any] = json.loads(KSERVE_PLACEHOLDER.sub(fill, text))
    assert "{{" not in json.dumps(filled), "a template KServe would not parse"
    return filled


# Pod Security Standards, "restricted" profile (Kubernetes 1.31): the volume types it allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


QUANTITY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(text: str) -> float:
    """A Kubernetes quantity ("2Gi", "500M", "1") as a number."""
    for suffix, scale in QUANTITY_SUFFIXES.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * scale
    return float(text)


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """A container's ``env`` as the kubelet resolves it: literal values, and the downward API's
    ``resourceFieldRef`` (the container's resource divided by the divisor, rounded up). Any other
    ``valueFrom`` fails: what is run or checked must be known here."""
    values = {}
    for variable in container.get("env", []):
        source = variable.get("valueFrom")
        if source is None:
            values[variable["name"]] = str(variable["value"])
            continue
        assert set(source) == {"resourceFieldRef"}, f"{variable['name']}: {source}"
        ref = source["resourceFieldRef"]
        assert ref.get("containerName", container["name"]) == container["name"]
        group, _, resource = ref["resource"].partition(".")
        amount = quantity(str(container["resources"][group][resource]))
        divisor = quantity(str(ref.get("divisor", "1")))
        values[variable["name"]] = str(math.ceil(amount / divisor))
    return values


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec the pod-security "restricted" profile refuses (its baseline and
    restricted rules that a manifest can break; AppArmor annotations and sysctls are not used)."""
    problems = []
    context = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    if context.get("sysctls"):
        problems.append("sysctls are set")
    containers = (
        pod.get("initContainers", [])
        + pod.get("containers", [])
        + pod.get("ephemeralContainers", [])
    )
    for container in containers:
        name = container["name"]
        own = container.get("securityContext", {})
        if own.get("privileged"):
            problems.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = own.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if own.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {own['procMount']}")
        if {"user", "role"} & set(own.get("seLinuxOptions", {})):
            problems.append(f"{name}: sets an SELinux user or role")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: uses a host port")
        non_root = own.get("runAsNonRoot", context.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if own.get("runAsUser", context.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = own.get("seccompProfile", context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp profile {seccomp!r}")
    return problems


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
    # A grouping label must be on a series the expression reads: `sum by (task, le)` over a
    # histogram without a task label groups nothing, silently.
    known = {label for name, _ in used for label in series.get(name, ())} | TARGET_LABELS
    for group in GROUPING.findall(expr):
        for label in (g.strip() for g in group.split(",")):
            if label and not label.startswith("<<") and label not in known:
                problems.append(f"grouping by {label!r}, which no series it reads has")
    return problems


# The image configuration a Dockerfile stage declares: what a container engine runs from it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class Healthcheck:
    """A HEALTHCHECK, with Docker's defaults for the options it leaves out (start interval:
    Docker Engine 25 or later)."""

    command: list[str]
    interval: float = 30.0
    timeout: float = 30.0
    start_period: float = 0.0
    start_interval: float = 5.0
    retries: int = 3


@dataclass
class Image:
    """One stage's ENTRYPOINT, CMD, ENV, USER, WORKDIR, VOLUME, EXPOSE and HEALTHCHECK."""

    entrypoint: list[str] = dataclasses.field(default_factory=list)
    cmd: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=lambda: {"PATH": DEFAULT_PATH})
    user: str = "root"
    workdir: str = "/"
    volumes: list[str] = dataclasses.field(default_factory=list)
    expose: list[str] = dataclasses.field(default_factory=list)
    healthcheck: Healthcheck | None = None


def _seconds(text: str) -> float:
    parts = DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


def _exec_form(text: str) -> list[str]:
    """An instruction's exec form (a JSON array), or its shell form run by /bin/sh -c."""
    text = text.strip()
    if text.startswith("["):
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
        return value
    return ["/bin/sh", "-c", text]


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def dockerfile_images(path: Path = ROOT / "Dockerfile") -> dict[str, Image]:
    """Stage name -> the image configuration it declares (a stage FROM another stage starts from
    that stage's; FROM an external image, from an empty one with Docker's default PATH)."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    images: dict[str, Image] = {}
    image: Image | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            base = words[0]
            image = copy.deepcopy(images[base]) if base in images else Image()
            if name:
                images[name] = image
            continue
        if image is None:
            assert instruction == "ARG", f"{instruction} before FROM"
            continue
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                assert sep, f"ENV {pair!r}: only the key=value form is read"
                image.env[key] = _expand(value, image.env)
        elif instruction == "ENTRYPOINT":
            image.entrypoint = _exec_form(rest)
        elif instruction == "CMD":
            image.cmd = _exec_form(rest)
        elif instruction == "USER":
            image.user = _expand(rest, image.env)
        elif instruction == "WORKDIR":
            image.workdir = str(Path(image.workdir) / _expand(rest, image.env))
        elif instruction == "VOLUME":
            image.volumes += json.loads(rest) if rest.startswith("[") else rest.split()
        elif instruction == "EXPOSE":
            image.expose += rest.split()
        elif instruction == "HEALTHCHECK":
            if rest.upper() == "NONE":
                image.healthcheck = None
                continue
            options, _, command = rest.partition("CMD ")
            check = Healthcheck(_exec_form(command))
            for option in options.split():
                key, _, value = option.removeprefix("--").partition("=")
                if key == "retries":
                    check.retries = int(value)
                else:
                    setattr(check, key.replace("-", "_"), _seconds(value))
            image.healthcheck = check
    return images
