"""The deployment comes up from nothing, as the manifests and the image say: k8s/ rendered (real
``kubectl kustomize`` where installed, tests/deploy.py's renderer otherwise) and the Dockerfile's
stages parsed, then run as local processes, each volume a temporary directory and each container's
root filesystem a read-only one (its working directory and the image's venv, bound read-only in
a mount namespace of the process's own: support/readonly.py; where this machine allows no such
namespace, chmod 0555, which does not stop root):

1. the build Job's container (the build image's ENTRYPOINT, the Job's args, env) on a fresh
   volume (holding only ``lost+found``, as an ext4-backed claim does), and again: the second run
   changes nothing. For speed, ``--no-train --encoder <the tests' tiny random BERT>`` is appended
   to the Job's args (the real default trains three heads with MiniLM, minutes); everything else
   is the manifest's, ``--repo /models --if-outdated`` included;
2. the serving pod's init container, started with the Job: it must still wait while the volume
   holds no trunk, and finish once the Job has built it;
3. two serving containers (the image's ``mts serve``, env from the image, the ConfigMap and the
   optional admin Secret, treated as absent) on the same volume, each on the declared ports
   (inference and admin) or free ones mapped in its env and probes alike; the startup, readiness
   and liveness probes polled
   as the kubelet polls them (a ticker per probe from container start at its periodSeconds, each
   try with its timeoutSeconds, readiness and liveness skipped until startup has passed,
   failureThreshold consecutive failures fail it), all passing within startup's period x threshold;
4. the replicas serve the same tasks and the same answers; ``/metrics`` answers on the admin port
   only (404 on inference), and the access lines are JSON (the ConfigMap's MTS_LOG_FORMAT);
5. SIGTERM to one replica while clients keep sending requests through a Service emulation (a
   terminating pod leaves the endpoints one second after SIGTERM, as endpoint propagation does):
   every request answered, exit 0 within terminationGracePeriodSeconds, the other replica serving;
6. the Dockerfile's serve stage: its ENTRYPOINT/CMD with its ENV, its HEALTHCHECK run as Docker
   (25 or later) runs it, its USER non-root, and ``docker stop`` (SIGTERM, 10 s) honoured.

The example overlay (copied beside k8s/ with its token file) and k8s/kserve/ are executed the same
way, side by side on copies of a built repository: one overlay replica, whose admin API takes the
token; one KServe predictor as KServe makes it (the ServingRuntime's container with {{.Name}}
filled, the claim mounted read-only at /mnt/models), answering for the InferenceService's name and
leaving the repository as it was. A volume a container mounts readOnly is bound read-only for it,
as its root is.

A probe that answers 404 or 405 fails the check at once (the route does not exist, so the kubelet
would fail it until the threshold, minutes later), as does a container that exits before it is
ready (the kubelet would restart it into CrashLoopBackOff). ``pytest -s`` prints each step with its
timing.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.readonly import read_only, unavailable
from support.servers import free_port
from tests.deploy import (
    K8S,
    Image,
    by_kind,
    dockerfile_images,
    env_values,
    kserve_container,
    quantity,
    render,
)

# Which Dockerfile stage builds which image the manifests name (the Dockerfile's header).
STAGES = {"multitask-serve": "serve", "multitask-serve-build": "build"}
# The images' venv is this interpreter's (the project installed with its extras).
IMAGE_VENV = "/opt/venv"
# How long after SIGTERM a terminating pod's address leaves the Service's endpoints.
ENDPOINT_PROPAGATION_SECONDS = 1.0
DOCKER_STOP_SECONDS = 10.0  # `docker stop`'s default timeout
PORTS = ("admin", "http")  # the serving container's, by name
TEXTS = ["the market rallied on strong earnings", "what a lovely match", "parliament voted"]


# Ports this module's sandboxes have taken (pods have a network namespace each; here they share
# one, so a second pod on the declared port gets a free one).
CLAIMED: set[int] = set()
CLAIMED_LOCK = threading.Lock()


class LifecycleError(AssertionError):
    """The deployment would not come up (or not go down) as declared."""


class Steps:
    """Prints each step with its duration and the time since the first."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.seen: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        took = time.monotonic() - began
        self.seen.append((name, took))
        print(f"[{time.monotonic() - self.start:6.1f} s] {name}: {took:.1f} s", flush=True)

    def note(self, text: str) -> None:
        print(f"           {text}", flush=True)


def rendered(root: Path = K8S) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return render(root)
    done = subprocess.run(
        [kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=120, check=True
    )
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


@dataclass
class Sandbox:
    """A pod's (or a container engine's) view of this machine: container paths -> directories
    here, container ports -> ports here."""

    root: Path
    mounts: dict[str, Path] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mounts.setdefault(IMAGE_VENV, Path(sys.prefix))

    def path(self, value: str) -> str:
        """A container path (or a PATH-like list of them) as a path here."""
        out = []
        for part in value.split(":"):
            for inside, here in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
                if part == inside or part.startswith(inside + "/"):
                    part = str(here) + part[len(inside) :]
                    break
            out.append(part)
        return ":".join(out)

    def text(self, value: str) -> str:
        """Container paths within a script."""
        for inside, here in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            value = re.sub(rf"(?<![\w/.]){re.escape(inside)}(?=[/\"'\s]|$)", str(here), value)
        return value

    def port(self, declared: int) -> int:
        with CLAIMED_LOCK:
            if declared not in self.ports:
                free = declared not in CLAIMED and port_is_free(declared)
                self.ports[declared] = declared if free else free_port()
                CLAIMED.add(self.ports[declared])
        return self.ports[declared]


def image_of(container: dict[str, Any]) -> Image:
    name = container["image"].rsplit("/", 1)[-1].split(":")[0]
    return dockerfile_images()[STAGES[name]]


def container_env(
    container: dict[str, Any],
    image: Image,
    docs: list[dict[str, Any]],
    secrets: dict[str, dict[str, str]],
) -> dict[str, str]:
    """The image's ENV, then envFrom in order, then env, as the kubelet composes them."""
    env = dict(image.env)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            found = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == ref["name"]]
            data = found[0]["data"] if found else None
        else:
            ref = source["secretRef"]
            data = secrets.get(ref["name"])
        if data is None:
            if not ref.get("optional"):
                raise LifecycleError(f"{ref['name']} does not exist and is not optional")
            continue
        env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
    env.update(env_values(container))
    return env


def process_of(
    container: dict[str, Any], image: Image, env: dict[str, str], box: Sandbox
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment a container's process gets, mapped onto this machine."""
    command = container.get("command", image.entrypoint)
    args = container.get("args", image.cmd if "command" not in container else [])
    argv = [box.text(a) for a in [*command, *args]]
    declared = {int(p) for p in [*image.expose]} | {
        p["containerPort"] for p in container.get("ports", [])
    }
    mapped = {}
    for key, value in env.items():
        if key.endswith("PORT") and value.isdigit() and int(value) in declared:
            value = str(box.port(int(value)))
        mapped[key] = box.path(value) if value.startswith("/") else value
    mapped.setdefault("HOME", str(box.root))
    executable = shutil.which(argv[0], path=mapped["PATH"])
    if executable is None:
        raise LifecycleError(f"{argv[0]} is not on the container's PATH {env['PATH']}")
    return [executable, *argv[1:]], mapped


def read_only_root(
    tmp: Path, image: Image, box: Sandbox, argv: list[str], locked: Sequence[Path] = ()
) -> tuple[Path, list[str]]:
    """The container's root filesystem, read-only: its working directory and the image's venv,
    bound read-only for the process (support/readonly.py), with ``locked``, the volumes it mounts
    readOnly; chmod where that cannot be done. Returns the working directory and the argv that
    runs there."""
    root = tmp / image.workdir.strip("/").replace("/", "-") if image.workdir != "/" else tmp
    root.mkdir(parents=True, exist_ok=True)
    if unavailable() is not None:
        root.chmod(0o555)
        return root, argv
    return root, read_only([root, box.mounts[IMAGE_VENV], *locked], argv)


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    box: Sandbox
    container: dict[str, Any]
    started: float

    def url(self, port: int | str) -> str:
        return f"http://127.0.0.1:{self.box.port(self.container_port(port))}"

    def container_port(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        named = {p.get("name"): p["containerPort"] for p in self.container.get("ports", [])}
        if port not in named:
            raise LifecycleError(f"{self.name}: no container port named {port!r}")
        return named[port]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start(
    name: str,
    container: dict[str, Any],
    docs: list[dict[str, Any]],
    box: Sandbox,
    tmp: Path,
    secrets: dict[str, dict[str, str]] | None = None,
) -> Running:
    image = image_of(container)
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] not in box.mounts:
            box.mounts[mount["mountPath"]] = tmp / f"{name}-{mount['name']}"
            box.mounts[mount["mountPath"]].mkdir(parents=True)
    env = container_env(container, image, docs, secrets or {})
    argv, mapped = process_of(container, image, env, box)
    # The volumes the container mounts readOnly are read-only to it (as its root is).
    locked = [
        box.mounts[m["mountPath"]] for m in container.get("volumeMounts", []) if m.get("readOnly")
    ]
    cwd, argv = read_only_root(box.root, image, box, argv, locked)
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=mapped, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    return Running(name, proc, log, box, container, time.monotonic())


def run_to_end(running: Running, deadline: float) -> int:
    try:
        return running.proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        running.proc.kill()
        running.proc.wait()
        raise LifecycleError(f"{running.name} still running after {deadline} s") from None


def probe_once(running: Running, probe: dict[str, Any]) -> bool:
    get = probe["httpGet"]
    url = running.url(get["port"]) + get["path"]
    try:
        status = httpx.get(url, timeout=probe.get("timeoutSeconds", 1)).status_code
    except httpx.HTTPError:
        return False
    if status in (404, 405):
        raise LifecycleError(f"{running.name}: probe {get['path']} answers {status}")
    return 200 <= status < 400


def probe_until_ready(running: Running) -> dict[str, float]:
    """The kubelet's prober: seconds from container start at which each probe first passed."""
    container = running.container
    probes = {
        kind: container[f"{kind}Probe"]
        for kind in ("startup", "readiness", "liveness")
        if f"{kind}Probe" in container
    }
    startup = probes["startup"]
    window = startup["periodSeconds"] * startup["failureThreshold"]
    ticks = {kind: p.get("initialDelaySeconds", 0) for kind, p in probes.items()}
    failures = dict.fromkeys(probes, 0)
    passed: dict[str, float] = {}
    while set(passed) != set(probes):
        if running.proc.poll() is not None:
            raise LifecycleError(
                f"{running.name} exited with {running.proc.returncode} before it was ready:\n"
                + running.tail()
            )
        kind = min((k for k in probes if k not in passed), key=lambda k: ticks[k])
        now = time.monotonic() - running.started
        if ticks[kind] > window:
            raise LifecycleError(f"{running.name}: {kind} not passed within {window} s")
        if ticks[kind] > now:
            time.sleep(min(ticks[kind] - now, 0.5))
            continue
        ticks[kind] += probes[kind]["periodSeconds"]
        if kind != "startup" and "startup" not in passed:
            continue  # the kubelet skips them until startup has passed
        if probe_once(running, probes[kind]):
            passed[kind] = time.monotonic() - running.started
        else:
            failures[kind] += 1
            if failures[kind] >= probes[kind].get("failureThreshold", 3):
                raise LifecycleError(
                    f"{running.name}: {kind} failed {failures[kind]} times:\n" + running.tail()
                )
    if max(passed.values()) > window:
        raise LifecycleError(f"{running.name}: probes passed at {passed}, past {window} s")
    return passed


def stop(running: Running, grace: float) -> int:
    running.proc.send_signal(signal.SIGTERM)
    return run_to_end(running, grace)


def serving_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]


def job_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [job] = by_kind(docs, "Job")
    assert job["metadata"]["name"].startswith("mts-build-")
    return job["spec"]["template"]["spec"]["containers"][0]


def fast_build(container: dict[str, Any], encoder: Path) -> dict[str, Any]:
    fast = copy.deepcopy(container)
    fast["args"] = [*fast["args"], "--no-train", "--encoder", str(encoder)]
    return fast


def bring_up_replica(
    name: str,
    docs: list[dict[str, Any]],
    volume: Path,
    tmp: Path,
    pod: dict[str, Any] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
) -> tuple[Running, dict[str, float]]:
    """One serving pod on the models volume: its init container's wait, then its container,
    probed until ready. ``pod``: a pod spec of ``docs`` (the first Deployment's by default)."""
    pod = pod or serving_pod(docs)
    box = Sandbox(tmp / name, {"/models": volume})
    box.root.mkdir()
    for init in pod.get("initContainers", []):
        waited = start(f"{name}-{init['name']}", init, docs, box, tmp, secrets)
        if run_to_end(waited, 30) != 0:
            raise LifecycleError(f"{waited.name} failed:\n{waited.tail()}")
    running = start(name, pod["containers"][0], docs, box, tmp, secrets)
    try:
        return running, probe_until_ready(running)
    except BaseException:
        running.proc.kill()
        running.proc.wait()
        raise


def predict(url: str, task: str, text: str) -> Any:
    reply = httpx.post(f"{url}/predict", json={"tasks": [task], "inputs": [text]}, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return rendered()


def test_the_manifests_and_the_image_bring_the_service_up_and_down(
    docs, tiny_encoder_dir, tmp_path
):
    steps = Steps()
    why = unavailable()
    steps.note("read-only roots: " + ("bind mounts" if why is None else f"chmod only ({why})"))
    volume = tmp_path / "models-volume"
    # A fresh claim: its mount point exists, and holds what its file system put there.
    (volume / "lost+found").mkdir(parents=True, mode=0o700)
    build = fast_build(job_container(docs), tiny_encoder_dir)
    pod = serving_pod(docs)
    grace = pod["terminationGracePeriodSeconds"]

    with steps("build Job on the empty volume, the init container waiting beside it"):
        box = Sandbox(tmp_path / "waiter", {"/models": volume})
        box.root.mkdir()
        [init] = pod["initContainers"]
        waiter = start("wait-for-repository", init, docs, box, tmp_path)
        job_box = Sandbox(tmp_path / "job", {"/models": volume})
        job_box.root.mkdir()
        time.sleep(1.0)
        assert waiter.proc.poll() is None, "the init container finished before any build"
        job = start("build-job", build, docs, job_box, tmp_path)
        while job.proc.poll() is None:
            if waiter.proc.poll() is not None:  # only once the trunk, published last, is there
                assert (volume / "trunk" / "trunk.json").exists()
            time.sleep(0.05)
        assert job.proc.returncode == 0, job.tail()
        steps.note(job.tail().strip().splitlines()[-1])
    built = sorted(p.relative_to(volume).as_posix() for p in volume.rglob("*"))
    assert "trunk/trunk.json" in built and not any(".building-" in p for p in built)
    assert "lost+found" in built  # the volume's own, left alone

    with steps("init container finishes once the trunk is there"):
        assert run_to_end(waiter, 10) == 0, waiter.tail()

    with steps("build Job again: the complete repository is left as it is"):
        before = {p: p.stat().st_mtime_ns for p in volume.rglob("*")}
        again = start("build-job-again", build, docs, job_box, tmp_path)
        assert run_to_end(again, 60) == 0, again.tail()
        assert {p: p.stat().st_mtime_ns for p in volume.rglob("*")} == before
        steps.note(again.tail().strip().splitlines()[-1])

    with steps("two replicas: init, serve, startup/readiness/liveness probes as declared"):
        results: dict[str, Any] = {}

        def up(name: str) -> None:
            try:
                results[name] = bring_up_replica(name, docs, volume, tmp_path)
            except BaseException as exc:
                results[name] = exc

        threads = [threading.Thread(target=up, args=(n,)) for n in ("mts-a", "mts-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r for r in results.values() if isinstance(r, BaseException)]
        for r in results.values():
            if not isinstance(r, BaseException):
                steps.note(
                    f"{r[0].name} on {r[0].url('http')}: probes passed at "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in r[1].items())
                )
        if failed:
            for r in results.values():
                if not isinstance(r, BaseException):
                    r[0].proc.kill()
            raise failed[0]
    a, b = results["mts-a"][0], results["mts-b"][0]
    try:
        with steps("both replicas serve the same heads and the same answers"):
            urls = [a.url("http"), b.url("http")]
            tasks = [httpx.get(f"{u}/tasks", timeout=10).json() for u in urls]
            assert tasks[0] == tasks[1]
            names = [t["task"] for t in tasks[0]["tasks"]]
            assert {"embed", "topic-zs", "sentiment-zs"} <= set(names), names
            for task in ("topic-zs", "sentiment-zs"):
                for text in TEXTS:
                    assert predict(urls[0], task, text) == predict(urls[1], task, text)
            # Each replica plans its runs within the container's memory limit (downward API).
            limit = serving_pod(docs)["containers"][0]["resources"]["limits"]["memory"]
            for replica in (a, b):
                said = f"memory limit {quantity(limit) / 2**20:g} MiB"
                assert said in replica.log.read_text(errors="replace"), replica.tail()
                # The ServiceMonitor's port, not the Service's (tests/unit/test_deploy_k8s.py).
                metrics = [httpx.get(f"{replica.url(p)}/metrics", timeout=10) for p in PORTS]
                assert [m.status_code for m in metrics] == [200, 404]
                lines = replica.log.read_text(errors="replace").splitlines()
                entries = [json.loads(line) for line in lines if line.startswith("{")]
                assert any(
                    e["logger"] == "multitask_serve.access" and e["route"] == "/predict"
                    for e in entries
                ), replica.tail()

        with steps(f"SIGTERM to {a.name} under load (grace {grace} s)"):
            sent, answered, errors, exit_code = terminate_under_load(a, b, grace)
            steps.note(
                f"{sent} requests, {answered} answered 200, exit {exit_code}; errors: {errors[:3]}"
            )
            assert exit_code == 0
            assert not errors and answered == sent > 0
            assert httpx.get(f"{b.url('http')}/readyz", timeout=15).status_code == 200
            assert predict(b.url("http"), "topic-zs", TEXTS[0])
    finally:
        for r in (a, b):
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()

    with steps("Dockerfile serve stage: ENTRYPOINT/CMD with ENV, HEALTHCHECK, docker stop"):
        run_serve_image(volume, tmp_path, steps)


def terminate_under_load(
    victim: Running, other: Running, grace: float
) -> tuple[int, int, list[str], int]:
    """Clients send through a Service of both replicas; SIGTERM to ``victim``, which leaves the
    endpoints ENDPOINT_PROPAGATION_SECONDS later. Returns requests sent, answered with 200, the
    errors, and the victim's exit status."""
    endpoints = [victim.url("http"), other.url("http")]
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0}
    errors: list[str] = []
    done = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = i
            while not done.is_set():
                with lock:
                    live = list(endpoints)
                    counts["sent"] += 1
                url = live[n % len(live)]
                n += 1
                body = {"tasks": ["topic-zs"], "inputs": TEXTS}
                try:
                    reply = http.post(f"{url}/predict", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{url}: {exc!r}")
                    continue
                with lock:
                    if reply.status_code == 200:
                        counts["ok"] += 1
                    else:
                        errors.append(f"{url}: {reply.status_code}")

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in clients:
        t.start()
    time.sleep(0.5)
    began = time.monotonic()
    victim.proc.send_signal(signal.SIGTERM)
    time.sleep(ENDPOINT_PROPAGATION_SECONDS)
    with lock:
        endpoints.remove(victim.url("http"))
    try:
        exit_code = run_to_end(victim, grace - (time.monotonic() - began))
    finally:
        time.sleep(0.5)  # the other replica keeps serving after the victim has gone
        done.set()
        for t in clients:
            t.join()
    return counts["sent"], counts["ok"], errors, exit_code


def run_serve_image(volume: Path, tmp: Path, steps: Steps) -> None:
    image = dockerfile_images()["serve"]
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), image.user
    box = Sandbox(tmp / "docker", {v: volume for v in image.volumes})
    box.root.mkdir()
    container = {"image": "multitask-serve", "name": "serve"}
    running = start("docker-serve", container, [], box, tmp)
    check = image.healthcheck
    assert check is not None
    env = container_env(container, image, [], {})
    _, mapped = process_of(container, image, env, box)
    argv = [shutil.which(check.command[0], path=mapped["PATH"]), *check.command[1:]]
    try:
        # Docker runs the check every start_interval during start_period, then every interval;
        # failures in the start period do not count; the first success makes it healthy.
        healthy_at = None
        tick = check.start_interval
        while healthy_at is None:
            if running.proc.poll() is not None:
                raise LifecycleError(f"the serve image's process exited:\n{running.tail()}")
            now = time.monotonic() - running.started
            if tick > check.start_period:
                raise LifecycleError(f"not healthy within the start period:\n{running.tail()}")
            if now < tick:
                time.sleep(tick - now)
                continue
            tick += check.start_interval
            try:
                result = subprocess.run(
                    argv, env=mapped, cwd=box.root, capture_output=True, timeout=check.timeout
                )
            except subprocess.TimeoutExpired:
                continue
            if result.returncode == 0:
                healthy_at = time.monotonic() - running.started
        steps.note(f"HEALTHCHECK healthy at {healthy_at:.1f} s (start period {check.start_period})")
        url = f"http://127.0.0.1:{mapped['MTS_PORT']}"
        assert predict(url, "sentiment-zs", TEXTS[1])
        assert stop(running, DOCKER_STOP_SECONDS) == 0, running.tail()
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


# A manifest change that breaks start-up fails the check.


@pytest.fixture
def built_volume(built_repo: Path, tmp_path: Path) -> Path:
    volume = tmp_path / "models-volume"
    shutil.copytree(built_repo, volume)
    return volume


def _mutated(docs: list[dict[str, Any]], change: str) -> list[dict[str, Any]]:
    docs = copy.deepcopy(docs)
    if change == "wrong repository path in the ConfigMap":
        by_kind(docs, "ConfigMap")[0]["data"]["MTS_REPOSITORY"] = "/models/repository"
    elif change == "wrong startup probe path":
        serving_pod(docs)["containers"][0]["startupProbe"]["httpGet"]["path"] = "/health"
    elif change == "wrong readiness probe port":
        serving_pod(docs)["containers"][0]["readinessProbe"]["httpGet"]["port"] = "metrics"
    return docs


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("wrong repository path in the ConfigMap", "exited with 2 before it was ready"),
        ("wrong startup probe path", "probe /health answers 404"),
        ("wrong readiness probe port", "no container port named 'metrics'"),
    ],
)
def test_a_manifest_change_that_breaks_start_up_fails_the_check(
    docs, built_volume, tmp_path, change, why
):
    with pytest.raises(LifecycleError, match=re.escape(why)):
        running, _ = bring_up_replica("mts", _mutated(docs, change), built_volume, tmp_path)
        stop(running, serving_pod(docs)["terminationGracePeriodSeconds"])


def test_a_build_job_without_its_if_flag_fails_the_second_run(docs, built_volume, tmp_path):
    container = job_container(docs)
    assert "--if-outdated" in container["args"]
    container = {**container, "args": [a for a in container["args"] if a != "--if-outdated"]}
    box = Sandbox(tmp_path / "job", {"/models": built_volume})
    box.root.mkdir()
    job = start("build-job", container, docs, box, tmp_path)
    assert run_to_end(job, 60) != 0
    assert "already holds a repository" in job.tail()


# The example overlay and the KServe example, executed as the base is.

KSERVE_MODELS = "/mnt/models"  # where KServe mounts an InferenceService's storageUri


def example_overlay(tmp: Path, token: str) -> list[dict[str, Any]]:
    """The example overlay copied beside a copy of k8s/ with its token file, as docs/deploy.md
    says to use it, rendered. tests/deploy.py's renderer has no secretGenerator (kustomize names
    the Secret after a hash of its content): without kubectl, the overlay is rendered without it
    and the token comes in the Secret of the base's own name (``overlay_secrets``)."""
    shutil.copytree(K8S, tmp / "k8s")
    overlay = Path(shutil.copytree(K8S / "examples" / "overlay", tmp / "production"))
    (overlay / "admin-token.env").write_text(f"MTS_ADMIN_TOKEN={token}\n")
    if shutil.which("kubectl") is None:
        config = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        del config["secretGenerator"]
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return rendered(overlay)


def overlay_secrets(docs: list[dict[str, Any]], token: str) -> dict[str, dict[str, str]]:
    """The Secrets the kubelet finds for the overlay's pods."""
    found = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in by_kind(docs, "Secret")
    }
    return found or {"mts-admin": {"MTS_ADMIN_TOKEN": token}}


def kserve_predictor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The predictor container KServe makes of k8s/kserve/: the runtime's, its placeholders
    filled, with the InferenceService's pvc:// claim mounted where KServe mounts it, read-only
    unless the InferenceService says storage.kserve.io/readonly: "false"."""
    container = kserve_container(docs)
    [service] = by_kind(docs, "InferenceService")
    assert service["spec"]["predictor"]["model"]["storageUri"].startswith("pvc://")
    annotations = service["metadata"].get("annotations", {})
    locked = annotations.get("storage.kserve.io/readonly") != "false"
    mount = {"name": "kserve-pvc-source", "mountPath": KSERVE_MODELS, "readOnly": locked}
    container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
    return container


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its modification time and size."""
    return {
        p.relative_to(root).as_posix(): (p.lstat().st_mtime_ns, p.lstat().st_size)
        for p in root.rglob("*")
    }


def run_together(*calls: Callable[[], None]) -> list[BaseException]:
    """Runs each call on a thread of its own; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def oip_infer(url: str, task: str, text: str) -> httpx.Response:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    return httpx.post(f"{url}/v2/models/{task}/infer", json=body, timeout=30)


def test_the_example_overlay_and_the_kserve_example_come_up_as_rendered(built_volume, tmp_path):
    """One replica of the example overlay (its admin token from its env file) and one predictor
    of k8s/kserve/ as KServe makes it, side by side, each on its own copy of a built repository:
    started, probed and stopped as the base's pods are. KServe's copy is mounted read-only and
    holds an hour-old leftover of an interrupted write, which start-up must leave as it is. Stopped
    with SIGKILL: SIGTERM is the base's step 5, the same process's (test_deploy_kserve.py checks
    KServe's pods get the grace it needs)."""
    steps = Steps()
    token = "0123456789abcdef0123456789abcdef"
    overlay = example_overlay(tmp_path / "manifests", token)
    kserve = rendered(K8S / "kserve")
    claim = Path(shutil.copytree(built_volume, tmp_path / "kserve-claim"))
    stale = next((claim / "heads").iterdir()) / ".current.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 3600,) * 2)
    before = tree(claim)
    results: dict[str, tuple[Running, dict[str, float]]] = {}

    def overlay_up() -> None:
        secrets = overlay_secrets(overlay, token)
        results["overlay"] = bring_up_replica(
            "overlay", overlay, built_volume, tmp_path, None, secrets
        )

    def kserve_up() -> None:
        box = Sandbox(tmp_path / "kserve", {KSERVE_MODELS: claim})
        box.root.mkdir()
        running = start("kserve", kserve_predictor(kserve), kserve, box, tmp_path)
        results["kserve"] = running, {}
        results["kserve"] = running, probe_until_ready(running)

    try:
        with steps("overlay replica and KServe predictor: start, probes as declared"):
            errors = run_together(overlay_up, kserve_up)
            if errors:
                raise errors[0]
            for running, passed in results.values():
                steps.note(
                    f"{running.name}: probes passed at "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in passed.items())
                )
        pod, isvc = results["overlay"][0], results["kserve"][0]
        with steps("overlay: the admin API takes the token from its env file"):
            versions = f"{pod.url('admin')}/admin/heads/topic-zs/versions"
            assert httpx.get(versions, timeout=10).status_code in (401, 403)
            authorized = {"Authorization": f"Bearer {token}"}
            assert httpx.get(versions, headers=authorized, timeout=10).status_code == 200
            assert predict(pod.url("http"), "topic-zs", TEXTS[0])
        with steps("KServe: a model named after the InferenceService, /metrics on the admin port"):
            [service] = by_kind(kserve, "InferenceService")
            name, url = service["metadata"]["name"], isvc.url("http1")
            ready = httpx.get(f"{url}/v2/models/{name}/ready", timeout=15)
            assert ready.json() == {"name": name, "ready": True}
            answer = oip_infer(url, "topic-zs", TEXTS[0])
            assert answer.status_code == 200, answer.text
            assert httpx.get(f"{isvc.url('admin')}/metrics", timeout=10).status_code == 200
            assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404
    finally:
        for running, _ in results.values():
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait()
    why = unavailable()
    if why is None:
        assert stale.exists() and tree(claim) == before, "the read-only claim was written"
    else:
        steps.note(f"the claim's read-only mount not checked: {why}")
