"""The capacity model: how many replicas of N cores and M GiB for T heads under Zipf traffic, at
what hit ratio, throughput and p99, for each way of placing tasks on replicas (docs/scaling.md).

Two parts, each from measurements on one replica (bench/capacity.py reads them from
bench/results/):

- **Hit ratio**, by replaying the replica's own eviction policy (service/residency.py) over the
  requests a replica gets under each placement, with its head budget (``replay``, which
  bench/eviction.py uses too). On one replica this replay gave 0.876 against 0.878 measured
  (bench/results/eviction.json, skewed-heads-trim.json).
- **Throughput**, from CPU per text: a replica spends ``hit_ms`` of core time per text with every
  head it needs loaded, and ``load_ms`` per cold load. A replica that gets a share ``L`` of the
  traffic with miss ratio ``m`` saturates at ``cores x 1000 / (hit_ms + m x load_ms) / L``
  texts/s of fleet traffic; the fleet's throughput is its first replica to saturate. Replicas
  that share one node's cores (``Fleet.shared_cores``, as in a run on one machine) saturate
  together, at ``node cores x 1000 / (traffic-weighted core-ms per text)``.

Placements (``Group``: tasks that share replicas, each replica of a group getting an equal part of
the group's requests, so all hold the same heads):

- ``fleet``: Ray Serve's multiplexed routing (fleet/ray_serve.py). A task goes to the replica that
  first loaded it, new tasks to the replica holding the fewest; a task whose traffic is more than
  one replica's share spills over to as many replicas as it needs. Ray sends a request elsewhere
  when the replicas holding its task are busy, so at saturation every replica carries an equal
  part of the traffic: a replica placed more than its part keeps that part of each of its tasks'
  requests and the rest goes to the replicas placed less, in proportion to what they lack, which
  then hold those tasks too (``balance``; measured: the busier of two replicas took 0.50 of the
  texts where placement alone would give it 0.70, bench/results/fleet-skewed-shares.json).
- ``shards``: a static task -> shard map, balanced by each task's known traffic (the heaviest
  first onto the least loaded shard), a hot task a shard of its own with the replicas its share
  needs.
- ``modelmesh``: placement and balancing as ``fleet`` (ModelMesh adds copies of a model whose
  load is high), eviction by plain LRU (ModelMesh's cache is an LRU).
- ``spread``: no placement: every replica gets an equal part of every task's requests, so each
  caches from the whole set (a plain Service in front of replicas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from multitask_serve.service.residency import LRU, GreedyDualSize, Policy

DESIGNS = ("fleet", "shards", "modelmesh", "spread")


@dataclass(frozen=True)
class HeadClass:
    """Heads of one kind and depth: their share of the stored heads, what each counts against
    the budget, and a cold load's seconds (what the eviction policy weighs)."""

    name: str
    share: float
    bytes: int
    load_s: float


@dataclass(frozen=True)
class Costs:
    """One replica's measured costs: core-milliseconds per text with its heads loaded and per
    cold load, its resident memory with the trunk alone, and latencies."""

    hit_ms: float
    load_ms: float
    ready_mib: float
    hit_p99_ms: float
    cold_load_p95_ms: float


@dataclass(frozen=True)
class Fleet:
    replicas: int
    cores: float  # per replica
    head_budget_mib: float  # per replica: MTS_HEAD_MEMORY_MB
    # The replicas share one node's ``replicas x cores`` cores (the two-replica run on one
    # machine), so the fleet saturates when the node does; otherwise each replica has its own
    # cores (pods with CPU limits) and the busiest replica saturates first.
    shared_cores: bool = False


@dataclass
class Group:
    tasks: np.ndarray  # indices into the heads
    replicas: int
    share: float = 0.0  # of all traffic
    hit_ratio: float = 1.0
    loaded_mib: float = 0.0
    # each task's part of all traffic that this group gets, when not the task's whole weight
    weights: np.ndarray | None = None


@dataclass
class Prediction:
    design: str
    replicas: int
    hit_ratio: float  # over all requests
    texts_per_s: float  # the fleet's saturation throughput
    bottleneck_share: float  # the busiest replica's part of the traffic
    p99_ms: float
    groups: list[Group] = field(default_factory=list, repr=False)


def replay(
    policy: Policy, trace: np.ndarray, sizes: np.ndarray, costs: np.ndarray, budget: int
) -> dict[str, float]:
    """The service's eviction loop (``Residency.put``), without the sessions."""
    loaded: set[int] = set()
    held = hits = 0
    wait_s = loaded_bytes = 0.0
    for head in trace.tolist():
        task = str(head)
        if head in loaded:
            hits += 1
            policy.touch(task, int(sizes[head]), float(costs[head]))
            continue
        wait_s += costs[head]
        loaded_bytes += sizes[head]
        loaded.add(head)
        held += int(sizes[head])
        policy.touch(task, int(sizes[head]), float(costs[head]))
        while held > budget:
            victim = int(policy.victim([str(h) for h in loaded if h != head]))
            loaded.discard(victim)
            policy.forget(str(victim))
            held -= int(sizes[victim])
    return {
        "hit_ratio": hits / len(trace),
        "load_wait_s": wait_s,
        "loaded_gb": loaded_bytes / 1e9,
    }


def heads_of(classes: list[HeadClass], heads: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each head's bytes and load seconds, classes dealt in their shares at random positions."""
    rng = np.random.default_rng(seed)
    counts = [round(c.share * heads) for c in classes]
    counts[-1] = heads - sum(counts[:-1])
    kinds = rng.permutation(np.repeat(np.arange(len(classes)), counts))
    sizes = np.array([classes[k].bytes for k in kinds], dtype=np.int64)
    loads = np.array([classes[k].load_s for k in kinds])
    return sizes, loads


def zipf_weights(heads: int, exponent: float, seed: int) -> np.ndarray:
    """Each head's share of requests: Zipf ranks dealt to heads in a random order."""
    ranks = np.random.default_rng(seed + 1).permutation(heads)
    weights = 1.0 / (ranks + 1.0) ** exponent
    return weights / weights.sum()


def place(design: str, weights: np.ndarray, replicas: int, seed: int) -> list[Group]:
    """The groups of tasks and replicas that ``design`` makes of ``weights``."""
    if design == "spread" or replicas == 1:
        return [Group(np.arange(len(weights)), replicas, 1.0)]
    per_replica = 1.0 / replicas
    order = np.argsort(-weights)
    # Tasks heavier than one replica's share get replicas of their own (both designs).
    groups: list[Group] = []
    left = replicas
    hot = [int(t) for t in order if weights[t] > per_replica]
    for task in hot:
        n = min(left - 1, max(1, math.ceil(weights[task] / per_replica)))
        if n < 1:
            break
        groups.append(Group(np.array([task]), n, float(weights[task])))
        left -= n
    placed = {int(g.tasks[0]) for g in groups}
    rest = np.array([t for t in order if int(t) not in placed], dtype=np.int64)
    members: list[list[int]] = [[] for _ in range(left)]
    load = np.zeros(left)
    if design == "shards":  # the heaviest first onto the least loaded shard
        for task in rest:
            i = int(np.argmin(load))
            members[i].append(int(task))
            load[i] += weights[task]
    else:  # fleet, modelmesh: in order of first request, onto the replica holding the fewest
        arrival = np.random.default_rng(seed + 2).exponential(size=len(rest)) / weights[rest]
        for i, task in enumerate(rest[np.argsort(arrival)]):
            members[i % left].append(int(task))
            load[i % left] += weights[task]
    groups += [Group(np.array(m, dtype=np.int64), 1, float(load[i])) for i, m in enumerate(members)]
    return groups


def balance(groups: list[Group], weights: np.ndarray, replicas: int) -> list[Group]:
    """One group per replica, each with an equal part of the traffic: a replica placed more than
    ``1 / replicas`` keeps that part of each of its tasks' requests; the rest goes to the
    replicas placed less, in proportion to what each lacks."""
    rows: list[np.ndarray] = []
    for group in groups:
        row = np.zeros(len(weights))
        row[group.tasks] = weights[group.tasks] / group.replicas
        rows += [row] * group.replicas
    dense = np.array(rows)
    loads = dense.sum(axis=1)
    target = 1.0 / replicas
    over = loads > target
    spilled = ((1 - target / loads[over])[:, None] * dense[over]).sum(axis=0)
    dense[over] *= (target / loads[over])[:, None]
    lack = np.where(over, 0.0, target - loads)
    if lack.sum() > 0:
        dense += np.outer(lack / lack.sum(), spilled)
    return [
        Group(np.flatnonzero(row), 1, float(row.sum()), weights=row[np.flatnonzero(row)])
        for row in dense
    ]


def group_hit_ratio(
    group: Group,
    weights: np.ndarray,
    sizes: np.ndarray,
    loads: np.ndarray,
    budget: int,
    policy: type[Policy],
    requests: int,
    seed: int,
) -> tuple[float, float]:
    """Hit ratio and loaded MiB of one replica of ``group``, over the second half of a replay of
    ``requests`` drawn from its tasks' weights (the first half fills the cache)."""
    tasks = group.tasks
    if len(tasks) == 0:
        return 1.0, 0.0
    if sizes[tasks].sum() <= budget:
        return 1.0, float(sizes[tasks].sum()) / 2**20
    part = weights[tasks] if group.weights is None else group.weights
    p = part / part.sum()
    rng = np.random.default_rng(seed)
    local = rng.choice(len(tasks), requests, p=p)
    half = requests // 2
    warm = replay(policy(), local[:half], sizes[tasks], loads[tasks], budget)
    both = replay(policy(), local, sizes[tasks], loads[tasks], budget)
    # hits over the second half: all hits less the first half's (the same seeded prefix)
    hits = both["hit_ratio"] * requests - warm["hit_ratio"] * half
    return hits / (requests - half), min(budget, float(sizes[tasks].sum())) / 2**20


def predict(
    design: str,
    fleet: Fleet,
    costs: Costs,
    weights: np.ndarray,
    sizes: np.ndarray,
    loads: np.ndarray,
    requests: int = 60_000,
    seed: int = 0,
) -> Prediction:
    policy: type[Policy] = LRU if design == "modelmesh" else GreedyDualSize
    budget = int(fleet.head_budget_mib * 2**20)
    groups = place(design, weights, fleet.replicas, seed)
    if design in ("fleet", "modelmesh") and fleet.replicas > 1:
        groups = balance(groups, weights, fleet.replicas)
    capacity = math.inf
    busiest = 0.0
    misses = 0.0
    node_ms = 0.0  # core-ms per text of fleet traffic, over every replica
    for i, group in enumerate(groups):
        group.hit_ratio, group.loaded_mib = group_hit_ratio(
            group, weights, sizes, loads, budget, policy, requests, seed + 10 + i
        )
        misses += group.share * (1 - group.hit_ratio)
        per_replica = group.share / group.replicas
        cpu_ms = costs.hit_ms + (1 - group.hit_ratio) * costs.load_ms
        node_ms += group.share * cpu_ms
        if per_replica > 0:
            capacity = min(capacity, fleet.cores * 1000 / cpu_ms / per_replica)
            busiest = max(busiest, per_replica)
    if fleet.shared_cores:
        capacity = fleet.replicas * fleet.cores * 1000 / node_ms
    hit_ratio = 1 - misses
    # p99: past 1% of requests missing, the slowest percent includes cold loads.
    p99 = costs.hit_p99_ms + (costs.cold_load_p95_ms if misses > 0.01 else 0.0)
    return Prediction(design, fleet.replicas, hit_ratio, capacity, busiest, p99, groups)
