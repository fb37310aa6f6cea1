"""Crash consistency: kill -9 a real ``mts serve`` at random moments while heads change.

A client fires admin calls back to back (hot-add from an archive, hot-add zero-shot, replace,
rollback, shadow a candidate, promote it, discard it) and the server is killed with SIGKILL after
a random (seeded) delay, so that most kills
land inside a call. Each restart's observations are kept (``Restart``), and these checks run on
them (``Restart.problems``; tests/e2e/test_crash_consistency.py asserts them one by one, and
bench/crash_loop.py runs it long):

- the repository is consistent: every ``current`` and ``shadow`` pointer names a complete
  version that ``ModelRepository`` reads and ONNX parses, every task with a pointer is served and
  every shadow pointer is the server's shadow;
- every acknowledged (2xx) call's result is there: its version is stored, and each task serves its
  last acknowledged version (and shadows its last acknowledged candidate), or, for the one call
  the kill interrupted, that call's result;
- every task answers predictions, and a version's outputs are bit-identical to what the same
  version answered after earlier restarts.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import onnx

from multitask_serve.modelrepo.archive import pack_head
from multitask_serve.modelrepo.repository import HEADS_DIR, ModelRepository
from support.servers import start_server

TOKEN = "crash-loop-token"
PROBES = ["the striker scored twice in the final", "rates fell at the bank", "ok"]
LABELS = ["sport", "business", "politics", "tech", "music", "weather", "travel", "food"]


@dataclass
class Op:
    kind: str  # add-archive, add-zero-shot, replace, rollback, shadow, promote, discard
    task: str
    before: int | None  # the version served when the call was sent
    target: int | None = None  # rollback's version
    shadow_before: int | None = None  # the task's shadow when the call was sent


@dataclass
class Ledger:
    """What the server acknowledged, and the one call a kill left without an answer."""

    current: dict[str, int] = field(default_factory=dict)
    shadow: dict[str, int] = field(default_factory=dict)
    stored: dict[str, set[int]] = field(default_factory=dict)
    outputs: dict[tuple[str, int], Any] = field(default_factory=dict)
    pending: Op | None = None
    errors: list[str] = field(default_factory=list)
    acknowledged: collections.Counter[str] = field(default_factory=collections.Counter)

    def acknowledge(self, task: str, version: int, kind: str) -> None:
        self.acknowledged[kind] += 1
        self.stored.setdefault(task, set()).add(version)
        if kind == "shadow":
            self.shadow[task] = version
            return
        if kind == "discard" or self.shadow.get(task) == version:  # promoted or rolled onto
            self.shadow.pop(task, None)
        if kind != "discard":
            self.current[task] = version


class Client:
    def __init__(self, url: str, archive_template: tuple[Any, bytes], rng: random.Random) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.template = archive_template
        self.rng = rng

    def next_op(self, ledger: Ledger, counter: int) -> Op:
        tasks = sorted(ledger.current)
        rollbackable = [t for t in tasks if min(ledger.stored[t]) < ledger.current[t]]
        shadowed = sorted(ledger.shadow)
        choices = ["add-archive", "add-zero-shot"] + ["replace"] * 2 * bool(tasks)
        choices += ["rollback"] * 2 * bool(rollbackable)
        choices += ["shadow"] * 2 * bool(tasks) + ["promote", "discard"] * bool(shadowed)
        kind = self.rng.choice(choices)
        if kind.startswith("add"):
            return Op(kind, f"crash-{counter}", None)
        pool = {"rollback": rollbackable, "promote": shadowed, "discard": shadowed}
        task = self.rng.choice(pool.get(kind, tasks))
        return Op(kind, task, ledger.current[task], shadow_before=ledger.shadow.get(task))

    def run(self, op: Op) -> int:
        shadow = f"/admin/heads/{op.task}/shadow"
        if op.kind == "rollback":
            # An explicit version: an interrupted replace may have stored a version that was never
            # acknowledged, which a default rollback would pick.
            r = self.http.post(f"/admin/heads/{op.task}/rollback", json={"version": op.target})
        elif op.kind == "shadow":  # a candidate of the template's kind: the served one may not be
            spec, model = self.template
            data = pack_head(dataclasses.replace(spec, task=op.task), model)
            r = self.http.post(f"{shadow}?replace=true", content=data)
            if r.status_code == 409 and "cannot be compared" in r.text:
                return -1  # refused as it should be: nothing changed
        elif op.kind == "promote":
            r = self.http.post(f"{shadow}/promote")
        elif op.kind == "discard":
            r = self.http.delete(shadow)
            r.raise_for_status()
            return int(r.json()["discarded"])
        elif op.kind == "add-archive" or (op.kind == "replace" and self.rng.random() < 0.5):
            spec, model = self.template
            data = pack_head(dataclasses.replace(spec, task=op.task), model)
            replace = "true" if op.kind == "replace" else "false"
            r = self.http.post(f"/admin/heads/{op.task}?replace={replace}", content=data)
        else:
            labels = self.rng.sample(LABELS, self.rng.randint(2, 5))
            body = {"labels": labels, "replace": op.kind == "replace"}
            r = self.http.post(f"/admin/heads/{op.task}/zero-shot", json=body)
        r.raise_for_status()
        return int(r.json()["version"])


def fire(client: Client, ledger: Ledger, counter: list[int], stop: threading.Event) -> None:
    """Admin calls back to back until the server dies."""
    while not stop.is_set():
        counter[0] += 1
        op = client.next_op(ledger, counter[0])
        if op.kind == "rollback":
            op.target = max(v for v in ledger.stored[op.task] if v < ledger.current[op.task])
        ledger.pending = op
        try:
            version = client.run(op)
        except httpx.TransportError:
            return  # killed: op stays pending
        except httpx.HTTPStatusError as exc:
            ledger.errors.append(f"{op}: {exc.response.status_code} {exc.response.text}")
            ledger.pending = None
            return
        ledger.pending = None
        if version >= 0:
            ledger.acknowledge(op.task, version, op.kind)


@dataclass
class Restart:
    """What one start of the server showed, against what was acknowledged before it."""

    # How the previous process ended (Popen.returncode: -9 is death by SIGKILL); None at the first.
    previous_exit: int | None
    # Task -> version: the repository's ``current`` pointers, and what GET /tasks serves.
    pointers: dict[str, int]
    served: dict[str, int]
    # Each task's last acknowledged version, less the task of the call the kill interrupted.
    acknowledged: dict[str, int]
    # Task -> candidate version: the repository's ``shadow`` pointers, the server's shadows (from
    # /admin/heads/<task>/versions), and the acknowledged ones (less the interrupted call's task).
    shadow_pointers: dict[str, int] = field(default_factory=dict)
    shadows: dict[str, int] = field(default_factory=dict)
    acknowledged_shadows: dict[str, int] = field(default_factory=dict)
    # Where the kill landed: "<kind>: old" or "<kind>: new" (the interrupted call's task serves
    # the version before it or the call's result), "<kind>: neither", "between calls", or "" at
    # the first start.
    interrupted: str = ""
    broken: list[str] = field(default_factory=list)  # pointers to unreadable versions
    admin_errors: list[str] = field(default_factory=list)  # calls answered with an error status
    versions_lost: dict[str, list[int]] = field(default_factory=dict)  # acked, no longer listed
    failed_predictions: list[str] = field(default_factory=list)
    # (task, version) that answered the probes differently than after an earlier restart.
    outputs_changed: list[tuple[str, int]] = field(default_factory=list)
    leftovers: int = 0  # staging entries of interrupted writes (never read; swept when old)

    def problems(self) -> list[str]:
        """Every check this restart failed (none: consistent, nothing acknowledged lost)."""
        found = [*self.broken, *self.admin_errors, *self.failed_predictions]
        found += [f"{task} v{v}: outputs changed" for task, v in self.outputs_changed]
        if self.served != self.pointers:
            found.append(f"served {self.served} != repository pointers {self.pointers}")
        if self.shadows != self.shadow_pointers:
            found.append(f"shadows {self.shadows} != repository pointers {self.shadow_pointers}")
        found += [
            f"{task}: shadows {self.shadows.get(task)}, acknowledged {version}"
            for task, version in self.acknowledged_shadows.items()
            if self.shadows.get(task) != version
        ]
        found += [
            f"{task}: serves {self.served.get(task)}, acknowledged {version}"
            for task, version in self.acknowledged.items()
            if self.served.get(task) != version
        ]
        found += [
            f"{task}: acknowledged versions {v} are gone" for task, v in self.versions_lost.items()
        ]
        if self.interrupted.endswith("neither"):
            found.append(f"interrupted call left neither version: {self.interrupted}")
        return found


def check_repository(root: Path) -> tuple[dict[str, int], list[str], int, dict[str, int]]:
    """The repository's ``current`` pointers, those naming an incomplete or unreadable version,
    the count of leftover staging entries, and the ``shadow`` pointers."""
    repo = ModelRepository(root)
    pointers, broken, shadows = {}, [], {}
    for task in repo.tasks():
        for role, version in (("current", None), ("shadow", repo.shadow_version(task))):
            if role == "shadow" and version is None:
                continue
            try:
                stored = repo.read_head(task, version)
                onnx.load_model(stored.model_path, load_external_data=False)
            except Exception as exc:
                broken.append(f"{task} {role}: {exc!r}")
                continue
            if stored.spec.task != task:
                broken.append(f"{task} {role}: head.json names {stored.spec.task}")
            (pointers if role == "current" else shadows)[task] = stored.version
    leftovers = sum(
        1 for d in (root / HEADS_DIR).rglob(".*") if d.name.startswith((".staging-", ".current"))
    )
    return pointers, broken, leftovers, shadows


def verify(
    url: str, root: Path, ledger: Ledger, previous_exit: int | None, after_kill: bool
) -> Restart:
    """Everything a restart shows against the ledger; adopts the interrupted call's outcome."""
    pointers, broken, leftovers, shadow_pointers = check_repository(root)
    http = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
    served = {t["task"]: t["version"] for t in http.get("/tasks").json()["tasks"]}
    listed = {task: http.get(f"/admin/heads/{task}/versions").json() for task in served}
    shadows = {task: v["shadow"] for task, v in listed.items() if v.get("shadow") is not None}
    op, ledger.pending = ledger.pending, None
    restart = Restart(
        previous_exit,
        pointers,
        served,
        {t: v for t, v in ledger.current.items() if op is None or t != op.task},
        shadow_pointers=shadow_pointers,
        shadows=shadows,
        acknowledged_shadows={t: v for t, v in ledger.shadow.items() if op is None or t != op.task},
        broken=broken,
        admin_errors=ledger.errors[:],
        leftovers=leftovers,
    )
    ledger.errors.clear()
    if op is not None and op.kind in ("shadow", "promote", "discard"):
        restart.interrupted = _shadow_outcome(op, ledger, served.get(op.task), shadows.get(op.task))
    elif op is not None:
        now = served.get(op.task)
        if now == op.before:
            restart.interrupted = f"{op.kind}: old"
        else:
            # A rollback's result is its target; any other call's is a version never seen before.
            new = (
                now == op.target
                if op.kind == "rollback"
                else now is not None and now not in ledger.stored.get(op.task, set())
            )
            restart.interrupted = f"{op.kind}: {'new' if new else 'neither'}"
            if new and now is not None:
                ledger.current[op.task] = now
                ledger.stored.setdefault(op.task, set()).add(now)
                if ledger.shadow.get(op.task) == now:  # rolled back onto its shadow: served now
                    ledger.shadow.pop(op.task)
    elif after_kill:
        restart.interrupted = "between calls"
    for task, versions in ledger.stored.items():
        listed[task] = listed.get(task) or http.get(f"/admin/heads/{task}/versions").json()
        missing = versions - {v["version"] for v in listed[task].get("versions", [])}
        if missing:
            restart.versions_lost[task] = sorted(missing)
    for task, version in served.items():
        r = http.post(f"/predict/{task}", json={"inputs": PROBES})
        if r.status_code != 200 or r.json()["version"] != version:
            restart.failed_predictions.append(f"{task} v{version}: {r.status_code} {r.text[:200]}")
            continue
        seen = ledger.outputs.setdefault((task, version), r.json()["outputs"])
        if r.json()["outputs"] != seen:
            restart.outputs_changed.append((task, version))
    return restart


def _shadow_outcome(op: Op, ledger: Ledger, served: int | None, shadow: int | None) -> str:
    """Where a kill during a shadow, promote or discard call left its task: the old state
    (served and shadow as before the call), the new one (adopted into the ledger), or neither."""
    if (served, shadow) == (op.before, op.shadow_before):
        return f"{op.kind}: old"
    seen = ledger.stored.get(op.task, set())
    if op.kind == "shadow":
        new = served == op.before and shadow is not None and shadow not in seen
    elif op.kind == "promote":
        new = served == op.shadow_before and shadow is None
    else:
        new = served == op.before and shadow is None
    if new:
        if op.kind == "shadow" and shadow is not None:
            ledger.shadow[op.task] = shadow
            ledger.stored.setdefault(op.task, set()).add(shadow)
        else:
            ledger.shadow.pop(op.task, None)
            if served is not None:
                ledger.current[op.task] = served
    return f"{op.kind}: {'new' if new else 'neither'}"


def crash_loop(
    source: Path, kills: int, seed: int, max_delay: float, workdir: Path
) -> dict[str, Any]:
    """Up to ``kills`` SIGKILLs, each followed by a restart and its checks; stops at the first
    restart with a problem. Returns the figures and every restart's ``Restart``."""
    rng = random.Random(seed)
    root = workdir / "repo"
    shutil.copytree(source, root)
    repo = ModelRepository(root)
    biggest = max(repo.tasks(), key=lambda t: repo.read_head(t).model_path.stat().st_size)
    stored = repo.read_head(biggest)
    template = (stored.spec, stored.model_path.read_bytes())
    env = {"MTS_ADMIN_TOKEN": TOKEN, "MTS_LOG_LEVEL": "warning", "MTS_INTRA_OP_THREADS": "1"}
    ledger, counter = Ledger(), [0]
    pointers, _, _, shadows = check_repository(root)
    for task, version in pointers.items():  # the heads served (and shadows) from the start
        ledger.current[task] = version
        ledger.stored[task] = set(repo.versions(task))
    ledger.shadow.update(shadows)
    restarts: list[Restart] = []
    previous_exit: int | None = None
    started = time.monotonic()
    for i in range(kills + 1):
        proc, url = start_server(root, workdir / "server.log", env)
        try:
            restarts.append(verify(url, root, ledger, previous_exit, after_kill=i > 0))
            if i == kills or restarts[-1].problems():
                break
            stop = threading.Event()
            client = Client(url, template, rng)
            thread = threading.Thread(target=fire, args=(client, ledger, counter, stop))
            thread.start()
            time.sleep(rng.uniform(0.0, max_delay))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            previous_exit = proc.wait()
        stop.set()
        thread.join()
    landed = collections.Counter(r.interrupted for r in restarts[1:])
    return {
        "kills": sum(r.previous_exit == -signal.SIGKILL for r in restarts),
        "seed": seed,
        "admin calls sent": counter[0],
        "acknowledged": dict(ledger.acknowledged),
        "kill landed": dict(sorted(landed.items())),
        "tasks at the end": len(ledger.current),
        "versions at the end": sum(len(v) for v in ledger.stored.values()),
        "leftover staging entries": restarts[-1].leftovers,
        "seconds": round(time.monotonic() - started, 1),
        "restarts": restarts,
    }
