"""k8s/kserve/ as KServe would run it: a model named after the InferenceService, Standard mode on a
read-only claim, its own account, NetworkPolicy, PDB, HPA and PodMonitor, each meeting the pods
KServe makes (test_deploy_k8s.py validates the ServingRuntime and InferenceService against KServe's
schemas; the lifecycle test runs the container)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

from multitask_serve.service.settings import Settings
from tests.deploy import (
    K8S,
    KUBERNETES_VERSION,
    by_kind,
    env_values,
    kserve_container,
    render,
)
from tests.unit.test_deploy_k8s import _in_flight_problems

KSERVE = render(K8S / "kserve")
[SERVICE] = by_kind(KSERVE, "InferenceService")
[RUNTIME] = by_kind(KSERVE, "ServingRuntime")
ADAPTER = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter.yaml").read_text())
# The label KServe puts on every pod it makes for an InferenceService, valued with its name.
POD_LABEL = "serving.kserve.io/inferenceservice"
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def _settings(container: dict[str, Any]) -> Settings:
    return Settings(**{k[4:].lower(): v for k, v in env_values(container).items()})


def _one(kind: str) -> dict[str, Any]:
    [doc] = by_kind(KSERVE, kind)
    return doc


@pytest.mark.parametrize(
    "doc", [d for d in KSERVE if "kserve" not in d["apiVersion"]], ids=lambda d: d["kind"]
)
def test_every_other_manifest_is_valid_for_the_pinned_kubernetes_version(doc):
    if doc["kind"] == "PodMonitor":
        again = monitoring.PodMonitor.model_validate(doc).model_dump(
            by_alias=True, exclude_unset=True, mode="json"
        )
        assert again == doc, "fields the CRD schema does not know were dropped"
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_model_is_named_after_the_inference_service():
    """Tools that take the InferenceService's name for a model's ask /v2/models/<name>/ready:
    KServe fills {{.Name}} in, and the server answers for that name (MTS_OIP_MODEL_ALIAS)."""
    name = SERVICE["metadata"]["name"]
    assert _settings(kserve_container(KSERVE)).oip_model_alias == name
    # Unfilled (the runtime run outside KServe), the placeholder is refused at start, not served.
    with pytest.raises(pydantic.ValidationError, match="MTS_OIP_MODEL_ALIAS"):
        _settings(RUNTIME["spec"]["containers"][0])


def test_standard_mode_on_a_read_only_claim():
    annotations = SERVICE["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"  # not RawDeployment
    assert annotations["storage.kserve.io/readonly"] == "true"
    assert SERVICE["spec"]["predictor"]["model"]["storageUri"].startswith("pvc://")


def test_it_scales_on_requests_in_flight_before_a_pod_refuses_work():
    """KServe's own HPA in Standard mode reads CPU or memory only: the InferenceService hands
    scaling to hpa.yaml, which reads the adapter's in-flight metric as the base's HPA does."""
    assert SERVICE["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    predictor = SERVICE["spec"]["predictor"]
    assert "scaleMetric" not in predictor and "scaleTarget" not in predictor
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{SERVICE['metadata']['name']}-predictor",  # KServe's name for it
    }
    [pods] = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] in {rule["name"]["as"] for rule in ADAPTER["rules"]["custom"]}
    target = float(pods["target"]["averageValue"])
    assert _in_flight_problems(target, _settings(kserve_container(KSERVE))) == []


def test_the_pdb_the_network_policy_and_the_pod_monitor_meet_kserves_pods():
    selector = {POD_LABEL: SERVICE["metadata"]["name"]}
    pdb = _one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == selector and pdb["maxUnavailable"] == 1
    container = kserve_container(KSERVE)
    settings = _settings(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["ports"][0]["containerPort"] == settings.port  # KServe's Service targets it
    # KServe's Service lists every container port: the policy keeps the admin port (/metrics)
    # to the monitoring namespace, and the pods open no connections.
    policy = _one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == selector and policy["egress"] == []
    admitted = {p["port"]: rule["from"] for rule in policy["ingress"] for p in rule["ports"]}
    assert set(admitted) == {settings.port, settings.admin_port}
    assert admitted[settings.admin_port] == [MONITORING]
    assert MONITORING not in admitted[settings.port]
    monitor = _one("PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == settings.admin_port and endpoint["path"] == "/metrics"


def test_its_pods_run_under_an_account_with_no_token():
    predictor = SERVICE["spec"]["predictor"]
    account = _one("ServiceAccount")
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert predictor["automountServiceAccountToken"] is False


def test_a_stopping_predictor_gets_the_time_its_shutdown_takes():
    """SIGTERM drains for MTS_SHUTDOWN_DRAIN_SECONDS, then in-flight requests get up to
    MTS_SHUTDOWN_GRACE_SECONDS: the pod's grace (Kubernetes' 30 s unless the predictor sets one)
    must cover both, or the kubelet kills it mid-request."""
    grace = SERVICE["spec"]["predictor"].get("terminationGracePeriodSeconds", 30)
    settings = _settings(kserve_container(KSERVE))
    assert settings.shutdown_drain_seconds + settings.shutdown_grace_seconds < grace
