"""k8s/: every rendered manifest validated against pinned schemas, and wired to the others.

Built-in kinds are checked by kubernetes-validate (strict: unknown fields fail) against the
Kubernetes version in tests/deploy.py; ServiceMonitor and PrometheusRule against the
prometheus-operator models of cloudcoil-models-prometheus-operator (pinned in the dev extra),
where a round trip catches fields the schema does not know; the KServe examples (k8s/kserve/)
against JSON schemas derived from KServe's API models (tests/data/kserve/), whose Kubernetes
types resolve to kubernetes-validate's strict schemas. Where `kubectl kustomize` exists, it
renders k8s/, k8s/kserve/, the example overlay and the shards overlay too (the shards' own checks:
test_deploy_shards.py).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring
from referencing import Registry, Resource

from multitask_serve.modelrepo.repository import TRUNK_DIR, TRUNK_SPEC
from multitask_serve.service import oip, routes
from multitask_serve.service.settings import Settings
from tests.deploy import (
    K8S,
    KUBERNETES_VERSION,
    by_kind,
    dockerfile_images,
    env_values,
    kserve_container,
    kustomization,
    quantity,
    render,
    restricted_violations,
    shards_overlay,
)

CRDS = {"ServiceMonitor": monitoring.ServiceMonitor, "PrometheusRule": monitoring.PrometheusRule}
DOCS = render()
DATA = render(K8S / "data")  # the namespace and the repository's claim, apart from the base
KSERVE = render(K8S / "kserve")
KSERVE_SCHEMAS = json.loads(
    (Path(__file__).resolve().parent.parent / "data" / "kserve" / "schemas.json").read_text()
)
KUBECTL = shutil.which("kubectl")
needs_kustomize = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed"
)
# kube-controller-manager's --horizontal-pod-autoscaler-tolerance, default 0.1: the HPA scales
# out once the metric passes the target by more than this.
HPA_TOLERANCE = 0.1


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("doc", DOCS + DATA, ids=_id)
def test_every_rendered_manifest_is_valid_for_the_pinned_kubernetes_version(doc):
    if doc["kind"] in CRDS:
        model = CRDS[doc["kind"]].model_validate(doc)
        again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert _without_nulls(again) == doc, "fields the CRD schema does not know were dropped"
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_refused_by_both_validators():
    deployment = by_kind(DOCS, "Deployment")[0]
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    monitor = by_kind(DOCS, "ServiceMonitor")[0]
    endpoint = {**monitor["spec"]["endpoints"][0], "scrape_interval": "15s"}
    wrong = {**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}}
    again = monitoring.ServiceMonitor.model_validate(wrong).model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    assert again != wrong


@pytest.mark.parametrize(
    "root", [K8S, K8S / "replicaset", K8S / "data"], ids=["k8s", "k8s/replicaset", "k8s/data"]
)
def test_the_kustomization_lists_every_manifest_in_its_directory(root):
    listed = set(kustomization(root)["resources"])
    on_disk = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed - {"replicaset"} == on_disk


def _serving_pod() -> dict[str, Any]:
    return by_kind(DOCS, "Deployment")[0]["spec"]["template"]


def test_selectors_and_references_meet_their_targets():
    deployment = by_kind(DOCS, "Deployment")[0]
    pod_labels = _serving_pod()["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return selector.items() <= pod_labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(by_kind(DOCS, "Service")[0]["spec"]["selector"])
    assert selects(by_kind(DOCS, "PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"])
    assert selects(_serving_policy()["spec"]["podSelector"]["matchLabels"])
    service = by_kind(DOCS, "Service")[0]
    monitor = by_kind(DOCS, "ServiceMonitor")[0]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    hpa = by_kind(DOCS, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]

    names = {(d["kind"], d["metadata"]["name"]) for d in DOCS + DATA}
    container = _serving_pod()["spec"]["containers"][0]
    for source in container["envFrom"]:
        kind, ref = next(iter(source.items()))
        if not ref.get("optional"):
            assert (
                {"configMapRef": "ConfigMap", "secretRef": "Secret"}[kind],
                ref["name"],
            ) in names
    for pod in (_serving_pod(), by_kind(DOCS, "Job")[0]["spec"]["template"]):
        for volume in pod["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
        assert ("ServiceAccount", pod["spec"]["serviceAccountName"]) in names


def _serving_policy() -> dict[str, Any]:
    [policy] = [p for p in by_kind(DOCS, "NetworkPolicy") if p["metadata"]["name"] == "mts"]
    return policy


MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_admin_and_metrics_are_on_a_port_only_prometheus_reaches():
    container = _serving_pod()["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = _settings(by_kind(DOCS, "ConfigMap")[0]["data"])
    assert (ports["http"], ports["admin"]) == (settings.port, settings.admin_port)
    # The Service, and so any Ingress or route in front of it, has inference only; the kubelet
    # probes the port the Service sends traffic to.
    [service] = by_kind(DOCS, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert {container[p]["httpGet"]["port"] for p in container if p.endswith("Probe")} == {"http"}
    # Prometheus scrapes the admin container port of the Service's pods (`port` would name a
    # Service port, and takes precedence).
    [endpoint] = by_kind(DOCS, "ServiceMonitor")[0]["spec"]["endpoints"]
    assert endpoint["targetPort"] == "admin" and "port" not in endpoint
    assert endpoint["path"] == "/metrics"
    # Inference from the namespace and the ingress controller; the admin port from monitoring.
    admitted = {
        port["port"]: rule["from"]
        for rule in _serving_policy()["spec"]["ingress"]
        for port in rule["ports"]
    }
    assert set(admitted) == {ports["http"], ports["admin"]}
    assert admitted[ports["admin"]] == [MONITORING]
    assert MONITORING not in admitted[ports["http"]]


def test_pods_log_json_lines():
    assert _settings(by_kind(DOCS, "ConfigMap")[0]["data"]).log_format == "json"


def test_probes_call_routes_the_service_has():
    paths = {route.path for route in routes.router.routes}  # type: ignore[attr-defined]
    container = _serving_pod()["spec"]["containers"][0]
    probes = {name: container[name]["httpGet"]["path"] for name in container if "Probe" in name}
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert probes["readinessProbe"] == "/readyz" and set(probes.values()) <= paths


def _settings(variables: dict[str, str]) -> Settings:
    return Settings(**{k[4:].lower(): v for k, v in variables.items()})


def test_every_configured_variable_is_a_setting():
    fields = {f"MTS_{name.upper()}" for name in Settings.model_fields}
    config = by_kind(DOCS, "ConfigMap")[0]["data"]
    kserve = env_values(kserve_container(KSERVE))  # as KServe fills it in
    overlay = (K8S / "examples" / "overlay" / "kustomization.yaml").read_text()
    generated = set(re.findall(r"\b(MTS_[A-Z_]+)=", overlay))  # admin-token.env's line
    assert generated == {"MTS_ADMIN_TOKEN"}
    assert set(config) | set(kserve) | generated <= fields
    assert _settings(config) and _settings(kserve)  # every value parses


def test_each_replica_plans_its_memory_within_its_containers_limit():
    # The downward API hands the container's limit to the budget (service/memory.py), so that a
    # change of the limit is a change of the budget; the Deployment's and KServe's alike.
    runtime = kserve_container(KSERVE)
    for container in (_serving_pod()["spec"]["containers"][0], runtime):
        limit = quantity(container["resources"]["limits"]["memory"])
        assert env_values(container)["MTS_MEMORY_LIMIT_MB"] == f"{limit / 2**20:g}"
        assert _settings(env_values(container)).memory_limit_mb == limit / 2**20


def test_the_admin_token_is_not_in_the_base_and_pods_start_without_it():
    # Re-applying the base must never blank a real token: no Secret in it at all; the
    # Deployment's reference is optional (the admin API stays off, 403, until one exists).
    assert by_kind(DOCS, "Secret") == []
    sources = _serving_pod()["spec"]["containers"][0]["envFrom"]
    refs = [s["secretRef"] for s in sources if "secretRef" in s]
    assert refs == [{"name": "mts-admin", "optional": True}]
    overlay = yaml.safe_load((K8S / "examples" / "overlay" / "kustomization.yaml").read_text())
    assert overlay["secretGenerator"] == [{"name": "mts-admin", "envs": ["admin-token.env"]}]
    ignored = (K8S / "examples" / "overlay" / ".gitignore").read_text().split()
    assert "admin-token.env" in ignored


def test_voluntary_disruptions_evict_one_pod_at_a_time():
    spec = by_kind(DOCS, "PodDisruptionBudget")[0]["spec"]
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec


DIGEST = "sha256:" + "0123456789abcdef" * 4
BUILD_IMAGES = {
    "a tag": {"newTag": "0.1.0"},
    "a long tag": {"newTag": "0.1.0-" + "x" * 122},  # 128 characters, the most a tag may have
    "a digest": {"digest": DIGEST},
}


def _job_names(root: Path, image: dict[str, str], release: str | None = None) -> list[str]:
    """The build Job's name in k8s/ copied to ``root`` with the build image set to ``image``
    (and the release to ``release``), by the test renderer and by kustomize where installed."""
    shutil.copytree(K8S, root)
    config = kustomization(root)
    for rule in config["images"]:
        if rule["name"] == "multitask-serve-build":
            rule.pop("newTag")
            rule.update(image)
    if release is not None:
        for rule in config["labels"]:
            if "app.kubernetes.io/version" in rule["pairs"]:
                rule["pairs"]["app.kubernetes.io/version"] = release
    (root / "kustomization.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    renderings = [render(root), *([_kustomize(root)] if KUBECTL else [])]
    return [str(by_kind(docs, "Job")[0]["metadata"]["name"]) for docs in renderings]


@pytest.mark.parametrize("image", BUILD_IMAGES.values(), ids=BUILD_IMAGES.keys())
def test_the_build_job_is_named_after_the_release_within_63_characters(tmp_path, image):
    # A Job's pod template is immutable: a new image under the same name would fail to apply, so
    # a release names a new Job. The name is also the pods' job-name label: a DNS label of at
    # most 63 characters, whatever the image reference (a digest or a long tag would not fit).
    for name in _job_names(tmp_path / "a", image):
        assert name == "mts-build-0.1.0"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) and len(name) <= 63
    assert set(_job_names(tmp_path / "b", image, "0.2.0-rc.1")) == {"mts-build-0.2.0-rc.1"}
    job = by_kind(DOCS, "Job")[0]
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == "0.1.0"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # finished Jobs do not pile up


def _kserve_pod() -> dict[str, Any]:
    runtime = by_kind(KSERVE, "ServingRuntime")[0]["spec"]
    predictor = by_kind(KSERVE, "InferenceService")[0]["spec"]["predictor"]
    return {
        "securityContext": predictor["securityContext"],
        "containers": runtime["containers"],
        "volumes": runtime.get("volumes", []),
    }


def test_the_namespace_enforces_the_restricted_pod_security_profile_every_pod_meets():
    labels = by_kind(DATA, "Namespace")[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == f"v{KUBERNETES_VERSION}"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    pods = [_serving_pod()["spec"], by_kind(DOCS, "Job")[0]["spec"]["template"]["spec"]]
    for pod in [*pods, _kserve_pod()]:
        assert restricted_violations(pod) == []
    # The check itself: each of these breaks the profile.
    broken = json.loads(json.dumps(_serving_pod()["spec"]))
    del broken["securityContext"]["seccompProfile"]
    broken["initContainers"][0]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    broken["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = " ".join(restricted_violations(broken))
    for expected in ("seccomp profile None", "do not drop ALL", "SYS_ADMIN", "hostPath"):
        assert expected in problems


KEEPERS = {
    "kustomize.toolkit.fluxcd.io/prune": "disabled",  # Flux: never pruned
    "argocd.argoproj.io/sync-options": "Prune=false,Delete=false",  # Argo CD: never either
}


def test_deleting_or_pruning_the_base_never_deletes_the_repository():
    """`kubectl delete -k k8s/` deletes what the base renders: neither the claim holding every
    head nor the Namespace (whose deletion takes the claim with it) may be among it. Both live in
    k8s/data/, annotated so that Flux and Argo CD never prune or delete them either."""
    assert not {"Namespace", "PersistentVolumeClaim"} & {d["kind"] for d in DOCS}
    assert sorted(d["kind"] for d in DATA) == ["Namespace", "PersistentVolumeClaim"]
    for doc in DATA:
        assert doc["metadata"]["annotations"] == KEEPERS, _id(doc)
    # The base's objects go in the namespace data/ creates, and its pods mount data/'s claim.
    [namespace] = by_kind(DATA, "Namespace")
    assert kustomization()["namespace"] == namespace["metadata"]["name"]
    assert {d["metadata"]["namespace"] for d in DOCS + by_kind(DATA, "PersistentVolumeClaim")} == {
        namespace["metadata"]["name"]
    }


def test_serving_pods_spread_over_zones_then_nodes():
    constraints = _serving_pod()["spec"]["topologySpreadConstraints"]
    keys = [c["topologyKey"] for c in constraints]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    pod_labels = _serving_pod()["metadata"]["labels"]
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_the_storage_class_is_a_parameter_an_overlay_sets():
    claim = by_kind(DATA, "PersistentVolumeClaim")[0]
    assert "storageClassName" not in claim["spec"]  # the cluster default, unless patched
    overlay = yaml.safe_load(
        (K8S / "examples" / "overlay" / "data" / "kustomization.yaml").read_text()
    )
    assert overlay["resources"] == ["../../k8s/data"]
    [patch] = [p for p in overlay["patches"] if p["target"]["kind"] == "PersistentVolumeClaim"]
    assert patch["target"]["name"] == claim["metadata"]["name"]
    [operation] = yaml.safe_load(patch["patch"])
    assert operation["op"] == "add" and operation["path"] == "/spec/storageClassName"


def _in_flight_problems(target: float, settings: Settings) -> list[str]:
    """Where a pod refuses work before an HPA with this in-flight target asks for more pods."""
    acting = math.ceil(target * (1 + HPA_TOLERANCE))  # requests in flight when the HPA scales
    problems = []
    texts = acting * settings.max_batch_texts  # each request may carry this many texts
    if texts > settings.max_queued_texts:
        problems.append(f"{acting} requests x {settings.max_batch_texts} texts = {texts} texts")
    if settings.max_in_flight_requests and acting > settings.max_in_flight_requests:
        problems.append(f"{acting} requests > {settings.max_in_flight_requests}")
    return problems


def test_the_hpa_scales_out_before_a_pod_refuses_work():
    hpa = by_kind(DOCS, "HorizontalPodAutoscaler")[0]
    [pods] = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == "mts_requests_in_flight"
    target = float(pods["target"]["averageValue"])
    settings = _settings(by_kind(DOCS, "ConfigMap")[0]["data"])
    assert _in_flight_problems(target, settings) == []
    # The target before: 32 requests of up to 64 texts each overflow the 1,024-text queue.
    assert _in_flight_problems(32, settings) == ["36 requests x 64 texts = 2304 texts"]


def test_pods_run_one_worker_as_non_root_on_a_read_only_root_filesystem():
    for pod in (_serving_pod(), by_kind(DOCS, "Job")[0]["spec"]["template"]):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    container = _serving_pod()["spec"]["containers"][0]
    assert "args" not in container and "command" not in container  # the image's `mts serve`
    config = by_kind(DOCS, "ConfigMap")[0]["data"]
    assert config["MTS_INTRA_OP_THREADS"] == container["resources"]["limits"]["cpu"]


def test_the_model_repository_is_one_shared_read_write_many_volume():
    claim = by_kind(DATA, "PersistentVolumeClaim")[0]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    job = by_kind(DOCS, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:3] == ["build", "--repo", "/models"]
    config = by_kind(DOCS, "ConfigMap")[0]["data"]
    assert config["MTS_REPOSITORY"] == "/models"
    mounts = _serving_pod()["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in mounts  # writable: admin hot-adds


def _mount(container: dict[str, Any], volume: str) -> str:
    [path] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return path


def test_the_job_the_config_the_init_container_and_the_images_agree_on_one_repository_path():
    """One path for the repository: where the Job builds, where the volume is mounted in every
    container, MTS_REPOSITORY, what the init container waits for (the trunk spec, published last)
    and the images' defaults (the build stage's CMD, the serving stages' ENV and VOLUME)."""
    config = by_kind(DOCS, "ConfigMap")[0]["data"]
    path = config["MTS_REPOSITORY"]
    job = by_kind(DOCS, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    args = job["args"]
    assert args[args.index("--repo") + 1] == path
    assert _mount(job, "models") == path
    pod = _serving_pod()["spec"]
    [init] = pod["initContainers"]
    assert _mount(init, "models") == path
    assert _mount(pod["containers"][0], "models") == path
    waits_for = re.findall(r"[\"'](/[^\"']+)[\"']", " ".join(init["command"]))
    assert waits_for == [f"{path}/{TRUNK_DIR}/{TRUNK_SPEC}"]
    images = dockerfile_images()
    build = images["build"].entrypoint + images["build"].cmd
    assert build[build.index("--repo") + 1] == path
    assert images["build"].volumes == [path]
    for name in ("serve", "gpu"):
        assert images[name].env["MTS_REPOSITORY"] == path, name
        assert images[name].volumes == [path], name


def test_images_point_at_the_registry_named_in_the_kustomization():
    images = {i["name"]: i for i in kustomization()["images"]}
    for pod in (_serving_pod(), by_kind(DOCS, "Job")[0]["spec"]["template"]):
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            assert any(container["image"].startswith(i["newName"] + ":") for i in images.values())


def _kserve_validator(kind: str) -> jsonschema.Draft202012Validator:
    """KServe's schema for a kind, its Kubernetes types resolved to kubernetes-validate's."""
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    definitions = json.loads(
        (schemas / f"v{KUBERNETES_VERSION}.0-local-strict" / "_definitions.json").read_text()
    )
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(KSERVE_SCHEMAS[kind], registry=registry)


def test_the_kserve_schemas_are_for_the_pinned_kubernetes_version():
    assert KSERVE_SCHEMAS["_kubernetes_version"] == KUBERNETES_VERSION
    assert {"ServingRuntime", "InferenceService"} <= {d["kind"] for d in KSERVE}


@pytest.mark.parametrize("doc", [d for d in KSERVE if d["kind"] in KSERVE_SCHEMAS], ids=_id)
def test_the_kserve_examples_are_valid_kserve_resources(doc):
    _kserve_validator(doc["kind"]).validate(doc)


def test_the_kserve_schemas_refuse_what_kserve_would():
    runtime = by_kind(KSERVE, "ServingRuntime")[0]
    service = by_kind(KSERVE, "InferenceService")[0]

    def errors(doc: dict[str, Any]) -> list[str]:
        found = _kserve_validator(doc["kind"]).iter_errors(doc)
        return [e.message for e in found]

    typo = json.loads(json.dumps(runtime))
    typo["spec"]["supportedModelFormat"] = typo["spec"].pop("supportedModelFormats")
    assert any("supportedModelFormat" in e for e in errors(typo))
    container = json.loads(json.dumps(runtime))  # a Container field, checked by Kubernetes' schema
    container["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    assert any("paht" in e for e in errors(container))
    unnamed = json.loads(json.dumps(service))
    del unnamed["spec"]["predictor"]["model"]["modelFormat"]["name"]
    assert any("'name' is a required property" in e for e in errors(unnamed))
    no_predictor = json.loads(json.dumps(service))
    del no_predictor["spec"]["predictor"]
    assert any("'predictor' is a required property" in e for e in errors(no_predictor))


def test_the_kserve_runtime_serves_v2_on_its_port_with_readiness_on_v2_health_ready():
    runtime = by_kind(KSERVE, "ServingRuntime")[0]["spec"]
    service = by_kind(KSERVE, "InferenceService")[0]
    model = service["spec"]["predictor"]["model"]
    [container] = runtime["containers"]
    env = env_values(kserve_container(KSERVE))
    port = container["ports"][0]  # KServe's Service and route send traffic to the first
    assert port["containerPort"] == int(env["MTS_PORT"])
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/v2/health/ready",
        "port": port["containerPort"],
    }
    paths = {route.path for route in oip.router.routes}  # type: ignore[attr-defined]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths
        assert container[probe]["httpGet"]["port"] == port["containerPort"]
    readiness_timeout = _settings(env).readiness_timeout_seconds
    assert container["readinessProbe"]["timeoutSeconds"] > readiness_timeout
    assert runtime["protocolVersions"] == ["v2"] and model["protocolVersion"] == "v2"
    formats = {(f["name"], f.get("version")) for f in runtime["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["runtime"] == by_kind(KSERVE, "ServingRuntime")[0]["metadata"]["name"]
    # KServe mounts the storageUri at /mnt/models; the claim is the base's repository.
    assert env["MTS_REPOSITORY"] == "/mnt/models"
    claim = by_kind(DATA, "PersistentVolumeClaim")[0]["metadata"]["name"]
    assert model["storageUri"].rstrip("/") == f"pvc://{claim}"
    assert service["metadata"]["namespace"] == by_kind(DATA, "Namespace")[0]["metadata"]["name"]
    assert env["MTS_INTRA_OP_THREADS"] == container["resources"]["limits"]["cpu"]


def _kustomize(root: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {_id(d): d for d in docs}


@needs_kustomize
@pytest.mark.parametrize(
    "root", [K8S, K8S / "data", K8S / "kserve"], ids=["k8s", "k8s/data", "k8s/kserve"]
)
def test_kustomize_renders_what_the_test_renderer_renders(root):
    assert _by_id(_kustomize(root)) == _by_id(render(root))


@needs_kustomize
def test_kustomize_renders_the_shards_overlay_as_the_test_renderer_does(tmp_path):
    root = shards_overlay(tmp_path)
    assert _by_id(_kustomize(root)) == _by_id(render(root))


def _overlay(tmp_path: Path, tag: str | None = None, token: bool = True) -> Path:
    """The example overlay copied beside a copy of k8s/, as docs/deploy.md says to use it."""
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "production"
    shutil.copytree(K8S / "examples" / "overlay", overlay)
    if token:
        (overlay / "admin-token.env").write_text("MTS_ADMIN_TOKEN=0123456789abcdef\n")
    if tag is not None:  # a release: its images and its version label, as the overlay says
        config = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        for image in config["images"]:
            image["newTag"] = tag
        config["labels"][0]["pairs"]["app.kubernetes.io/version"] = tag
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return overlay


@needs_kustomize
def test_the_example_overlay_adds_the_token_and_storage_class_and_follows_the_release(tmp_path):
    docs = _kustomize(_overlay(tmp_path / "a"))
    for doc in docs:
        if doc["kind"] not in CRDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    [secret] = by_kind(docs, "Secret")
    assert re.fullmatch(r"mts-admin-[a-z0-9]{10}", secret["metadata"]["name"])  # content hash
    assert secret["metadata"]["namespace"] == "mts"
    [deployment] = by_kind(docs, "Deployment")
    sources = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    refs = [s["secretRef"] for s in sources if "secretRef" in s]
    assert refs == [{"name": secret["metadata"]["name"], "optional": True}]
    [claim] = by_kind(_kustomize(tmp_path / "a" / "production" / "data"), "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"]
    assert (
        claim["metadata"]["annotations"]
        == by_kind(DATA, "PersistentVolumeClaim")[0]["metadata"]["annotations"]
    )
    assert by_kind(docs, "Job")[0]["metadata"]["name"] == "mts-build-0.1.0"
    bumped = _kustomize(_overlay(tmp_path / "b", tag="0.2.0"))
    assert by_kind(bumped, "Job")[0]["metadata"]["name"] == "mts-build-0.2.0"
    image = by_kind(bumped, "Job")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/multitask-serve-build:0.2.0"
    # Without the token file kustomize stops: an apply cannot blank the token.
    missing = subprocess.run(
        [str(KUBECTL), "kustomize", str(_overlay(tmp_path / "c", token=False))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "admin-token.env" in missing.stderr
