"""k8s/: every rendered manifest validated against pinned schemas, and wired to the others.

Built-in kinds are checked by kubernetes-validate (strict: unknown fields fail) against the
Kubernetes version in tests/deploy.py; ServiceMonitor and PrometheusRule against the
prometheus-operator models of cloudcoil-models-prometheus-operator (pinned in the dev extra),
where a round trip catches fields the schema does not know.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from cloudcoil.models.prometheus_operator import v1 as monitoring

from multitask_serve.service import routes
from multitask_serve.service.settings import Settings
from tests.deploy import K8S, KUBERNETES_VERSION, by_kind, kustomization, render

CRDS = {"ServiceMonitor": monitoring.ServiceMonitor, "PrometheusRule": monitoring.PrometheusRule}
DOCS = render()


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("doc", DOCS, ids=_id)
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


def test_the_kustomization_lists_every_manifest_in_k8s():
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


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
    serving_policy = next(
        p
        for p in by_kind(DOCS, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"])
    )
    assert serving_policy["spec"]["ingress"][0]["ports"][0]["port"] == 8000
    service = by_kind(DOCS, "Service")[0]
    monitor = by_kind(DOCS, "ServiceMonitor")[0]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    hpa = by_kind(DOCS, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]

    names = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    container = _serving_pod()["spec"]["containers"][0]
    for source in container["envFrom"]:
        kind, ref = next(iter(source.items()))
        assert ({"configMapRef": "ConfigMap", "secretRef": "Secret"}[kind], ref["name"]) in names
    for pod in (_serving_pod(), by_kind(DOCS, "Job")[0]["spec"]["template"]):
        for volume in pod["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
        assert ("ServiceAccount", pod["spec"]["serviceAccountName"]) in names


def test_probes_call_routes_the_service_has():
    paths = {route.path for route in routes.router.routes}  # type: ignore[attr-defined]
    container = _serving_pod()["spec"]["containers"][0]
    probes = {name: container[name]["httpGet"]["path"] for name in container if "Probe" in name}
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert probes["readinessProbe"] == "/readyz" and set(probes.values()) <= paths


def test_every_configured_variable_is_a_setting():
    fields = {f"MTS_{name.upper()}" for name in Settings.model_fields}
    config = by_kind(DOCS, "ConfigMap")[0]["data"]
    secret = by_kind(DOCS, "Secret")[0]["stringData"]
    assert set(config) | set(secret) <= fields
    assert Settings(**{k[4:].lower(): v for k, v in config.items()})  # every value parses


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
    claim = by_kind(DOCS, "PersistentVolumeClaim")[0]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    job = by_kind(DOCS, "Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:3] == ["build", "--repo", "/models"]
    config = by_kind(DOCS, "ConfigMap")[0]["data"]
    assert config["MTS_REPOSITORY"] == "/models"
    mounts = _serving_pod()["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "models", "mountPath": "/models"} in mounts  # writable: admin hot-adds


def test_images_point_at_the_registry_named_in_the_kustomization():
    images = {i["name"]: i for i in kustomization()["images"]}
    for pod in (_serving_pod(), by_kind(DOCS, "Job")[0]["spec"]["template"]):
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            assert any(container["image"].startswith(i["newName"] + ":") for i in images.values())
