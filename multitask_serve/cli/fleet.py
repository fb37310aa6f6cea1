"""``mts fleet``: replicas of the service on a local Ray instance, each task's requests routed to a
replica that holds its head (multitask_serve/fleet/, docs/scaling.md). Needs the fleet extra."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from multitask_serve.cli.common import is_built


def cmd_fleet(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve

        from multitask_serve.fleet.ray_serve import application, settings_env
    except ImportError as exc:
        print(
            f"mts fleet: needs the fleet extra (pip install 'multitask-serve[serve,fleet]'): {exc}",
            file=sys.stderr,
        )
        return 2
    repo: Path = args.repo.resolve()
    if not is_built(repo):
        print(f"mts fleet: {repo} holds no built repository (mts build makes one)", file=sys.stderr)
        return 2
    if args.replicas < 1 or args.replica_cpus < 0:
        print(
            "mts fleet: --replicas must be at least 1, --replica-cpus at least 0", file=sys.stderr
        )
        return 2
    # Ray runs its workers, the replicas here, at nice 15 (below Ray's own daemons and anything
    # else on the node): measured on 2 cores, a load generator beside them took the CPU they
    # needed. The replicas are the service, so they run at the node's priority unless set.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=args.replica_logs)
    # After ray.init, whose core installs a SIGTERM handler of its own that exits at once.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        env = settings_env({"MTS_REPOSITORY": str(repo)})
        fleet = application(
            env, args.replicas, args.replica_cpus, args.heads_per_replica, not args.no_router
        )
        serve.run(fleet, name="mts", route_prefix="/")
        print(
            f"mts fleet: {args.replicas} replicas of {repo} on http://{args.host}:{args.port}",
            flush=True,
        )
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def add_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="serve a repository from several replicas on a local Ray instance, each task's "
        "requests sent to a replica holding its head (needs the fleet extra; settings: MTS_*)",
    )
    fleet.add_argument("--repo", type=Path, default=Path("model-repo"), help="model repository")
    fleet.add_argument("--host", default="127.0.0.1")
    fleet.add_argument("--port", type=int, default=8000)
    fleet.add_argument("--replicas", type=int, default=2, help="replicas of the service (2)")
    fleet.add_argument(
        "--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (1)"
    )
    fleet.add_argument("--num-cpus", type=int, help="CPUs of the Ray instance (default: all)")
    fleet.add_argument(
        "--heads-per-replica",
        type=int,
        default=-1,
        help="tasks Ray remembers each replica holding, least recently used forgotten first "
        "(-1, the default: all, so a task's requests keep going to the replica that first "
        "loaded it); which heads stay loaded is MTS_HEAD_MEMORY_MB's",
    )
    fleet.add_argument(
        "--no-router",
        action="store_true",
        help="no router deployment: Ray's HTTP proxy sends each request to a replica itself, by "
        "the task the client names in the serve_multiplexed_model_id header (any replica "
        "without it); one hop less per request (BENCHMARKS.md)",
    )
    fleet.add_argument(
        "--replica-logs", action="store_true", help="print the replicas' log lines here too"
    )
    fleet.set_defaults(func=cmd_fleet)
