"""Static shards come up as the shard map says, two replica sets behind one route table:

1. k8s/examples/shards rendered, copied beside a copy of k8s/ as docs/deploy.md says (real
   ``kubectl kustomize`` where installed, tests/deploy.py's renderer otherwise), and k8s/ itself
   for an unsharded replica set to compare with;
2. one repository volume for every pod: the tests' tiny trunk with embed and topic-zs, plus a
   trained head of each kind (sentiment, topic, ner);
3. each shard's serving pod and the base's unsharded one, started as test_lifecycle.py starts
   pods (init container, then the container with the image's and the manifests' env, MTS_TASKS
   as each Deployment declares it, the admin Secret present) and probed until ready;
4. tests/httproute.py's emulator of the rendered HTTPRoutes in front, each backendRef's Service
   resolved to the pod its selector selects;
5. through it: every task answers 200 with the unsharded pod's answer, routed to the shard whose
   MTS_TASKS select it (that pod answers the task directly, the other says 404); routes that
   name no task reach the default shard, and none reaches the admin API (each pod's admin port,
   which no Service exposes); a head hot-added on a pod of the shard a glob assigns its task to
   is stored by that shard and served through the route and by the unsharded pod alike.

``pytest -s`` prints each step with its timing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from multitask_serve.service.selection import TaskSelector
from tests.conftest import ADMIN_TOKEN
from tests.deploy import by_kind, env_values, shards_overlay
from tests.e2e.test_lifecycle import TEXTS, Running, Steps, bring_up_replica, rendered, serving_pod
from tests.httproute import backend, gateway
from tests.integration.residency import add_trained_heads

SECRETS = {"mts-admin": {"MTS_ADMIN_TOKEN": ADMIN_TOKEN}}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
UNSHARDED = "mts-unsharded"


def bring_up(
    pods: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
    volume: Path,
    tmp: Path,
    steps: Steps,
) -> dict[str, Running]:
    """Every pod at once (name -> its pod spec and the documents it reads its env from)."""
    results: dict[str, Any] = {}

    def up(name: str) -> None:
        pod, docs = pods[name]
        try:
            results[name] = bring_up_replica(name, docs, volume, tmp, pod, SECRETS)
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=up, args=(name,)) for name in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    running = {n: r[0] for n, r in results.items() if not isinstance(r, BaseException)}
    for name, (_, probes) in ((n, r) for n, r in results.items() if n in running):
        passed = ", ".join(f"{k} {v:.1f} s" for k, v in probes.items())
        steps.note(f"{name} on {running[name].url('http')}: probes passed at {passed}")
    failed = [r for r in results.values() if isinstance(r, BaseException)]
    if failed:
        for r in running.values():
            r.proc.kill()
        raise failed[0]
    return running


def selected_pod(service: dict[str, Any], deployments: list[dict[str, Any]]) -> str:
    """The one Deployment whose pods a Service's selector selects."""
    selector = service["spec"]["selector"].items()
    [name] = [
        d["metadata"]["name"]
        for d in deployments
        if selector <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    return str(name)


def test_two_shards_behind_one_route_table_serve_every_task_as_one_replica_set_does(
    repo, archives, tmp_path
):
    steps = Steps()
    with steps("render the shards overlay and the base"):
        docs = rendered(shards_overlay(tmp_path / "manifests"))
        base = rendered()
    deployments = by_kind(docs, "Deployment")
    selectors = {
        d["metadata"]["name"]: TaskSelector.parse(
            env_values(d["spec"]["template"]["spec"]["containers"][0])["MTS_TASKS"].split(",")
        )
        for d in deployments
    }
    # The default shard: the Deployment behind the Service that takes a path no rule names.
    fallback = backend(by_kind(docs, "HTTPRoute"), "/")
    [service] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == fallback]
    default = selected_pod(service, deployments)
    steps.note(f"shards: {', '.join(f'{n} {s}' for n, s in selectors.items())}; default {default}")
    assert len(selectors) == 2

    with steps("one repository volume: embed, topic-zs and a trained head of each kind"):
        volume = add_trained_heads(repo, archives)
    pods = {d["metadata"]["name"]: (d["spec"]["template"]["spec"], docs) for d in deployments}
    pods[UNSHARDED] = (serving_pod(base), base)
    with steps("each shard's pod and an unsharded one: init, serve, probes as declared"):
        running = bring_up(pods, volume, tmp_path, steps)
    services = {
        s["metadata"]["name"]: running[selected_pod(s, deployments)].url("http")
        for s in by_kind(docs, "Service")
    }
    direct = {name: running[name].url("http") for name in selectors}
    reference = running[UNSHARDED].url("http")
    routed: list[tuple[str, str]] = []
    try:
        with (
            gateway(by_kind(docs, "HTTPRoute"), services, lambda p, s: routed.append((p, s))) as gw,
            httpx.Client(timeout=60) as http,
        ):

            def via(method: str, path: str, **kwargs: Any) -> httpx.Response:
                reply = http.request(method, gw + path, **kwargs)
                steps.note(f"{method} {path} -> {routed[-1][1]}: {reply.status_code}")
                return reply

            with steps("every task through the route: 200, the unsharded answer, its own shard"):
                tasks = [t["task"] for t in http.get(f"{reference}/tasks").json()["tasks"]]
                assert set(tasks) == {"embed", "topic-zs", "sentiment", "topic", "ner"}
                for task in tasks:
                    [owner] = [name for name, selector in selectors.items() if selector(task)]
                    body = {"inputs": TEXTS}
                    answer = via("POST", f"/predict/{task}", json=body)
                    assert answer.status_code == 200, answer.text
                    assert routed[-1] == (f"/predict/{task}", owner)
                    expected = http.post(f"{reference}/predict/{task}", json=body).json()
                    assert answer.json() == expected
                    metadata = via("GET", f"/v2/models/{task}")
                    assert metadata.status_code == 200 and routed[-1][1] == owner
                    assert metadata.json() == http.get(f"{reference}/v2/models/{task}").json()
                    for name, url in direct.items():  # only the owner serves it
                        status = http.post(f"{url}/predict/{task}", json=body).status_code
                        assert status == (200 if name == owner else 404), (task, name, status)

            with steps(f"routes that name no task reach the default shard, {default}"):
                first = len(routed)
                listing = via("GET", "/tasks")
                assert listing.json() == http.get(f"{direct[default]}/tasks").json()
                served = {t["task"] for t in listing.json()["tasks"]}
                assert served == {t for t in tasks if selectors[default](t)}
                body = {"tasks": ["topic-zs"], "inputs": TEXTS}
                multi = via("POST", "/predict", json=body)
                assert multi.status_code == 200
                assert multi.json() == http.post(f"{reference}/predict", json=body).json()
                # A multi-task request naming another shard's task: 404 from the default shard.
                other = {"tasks": ["topic-zs", "sentiment"], "inputs": TEXTS}
                assert via("POST", "/predict", json=other).status_code == 404
                embedding = {"model": "embed", "input": TEXTS[0]}
                openai = via("POST", "/v1/embeddings", json=embedding)
                assert openai.status_code == 200
                expected = http.post(f"{reference}/v1/embeddings", json=embedding).json()
                assert openai.json()["data"] == expected["data"]
                assert via("GET", "/readyz").status_code == 200
                assert {service for _, service in routed[first:]} == {default}

            with steps("a head hot-added on its glob's shard is served through the route"):
                task = "legal-ft"
                [owner] = [name for name, selector in selectors.items() if selector(task)]
                assert owner != default  # a RegularExpression match took it
                labels = {"labels": ["a contract", "a court ruling", "a statute"]}
                path = f"/admin/heads/{task}/zero-shot"
                assert via("POST", path, json=labels, headers=ADMIN).status_code == 404
                admin = {name: running[name].url("admin") for name in selectors}
                added = http.post(f"{admin[owner]}{path}", json=labels, headers=ADMIN)
                assert added.status_code == 201, added.text
                refused = http.post(f"{admin[default]}{path}", json=labels, headers=ADMIN)
                assert refused.status_code == 409
                answer = via("POST", f"/predict/{task}", json={"inputs": TEXTS})
                assert answer.status_code == 200 and routed[-1][1] == owner
                deadline = time.monotonic() + 15  # the unsharded pod polls the repository
                while True:
                    seen = http.post(f"{reference}/predict/{task}", json={"inputs": TEXTS})
                    if seen.status_code != 404 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                assert seen.json() == answer.json()
    finally:
        for r in running.values():
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
