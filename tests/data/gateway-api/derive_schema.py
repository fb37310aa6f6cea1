"""Derive a JSON schema for the Gateway API's HTTPRoute (gateway.networking.k8s.io/v1) from its CRD.

The Gateway API ships its kinds as CustomResourceDefinitions whose openAPIV3Schema the API server
validates against; no PyPI package carries them. This script takes the v1 schema of the standard
channel's HTTPRoute CRD, drops the descriptions, and writes it to httproute-v1.json beside it,
strict like a server with field validation: an object with declared properties takes no others.
The CRD's CEL rules (``x-kubernetes-validations``) stay in the file as they are: jsonschema
ignores them, and tests/unit/test_deploy_shards.py checks the ones the generated routes could
break (at most 128 matches per route, the path values' syntax).

Regenerate for another release, from a checkout of kubernetes-sigs/gateway-api at its tag:

    python tests/data/gateway-api/derive_schema.py \
        <checkout>/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strict(node: Any) -> Any:
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "description"}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def main(crd_path: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    # metadata is checked by Kubernetes' ObjectMeta, not the CRD: any object.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"const": "gateway.networking.k8s.io/v1"}
    schema["properties"]["kind"] = {"const": "HTTPRoute"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    bundle = crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"]
    out = {"_gateway_api_version": bundle, "HTTPRoute": schema}
    (HERE / "httproute-v1.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
