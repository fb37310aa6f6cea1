"""Replicas of the service as Ray Serve deployments: a router that reads each request's task and
asks Ray for a replica holding that task's head (model multiplexing), and replicas that each run
the whole service, its micro-batching across tasks included (docs/scaling.md).

Ray's own ``@serve.batch`` splits a batch by multiplexed model id, which would end cross-task
batching; it is not used. A request reaches a replica one at a time, as a plain value, and the
replica's own batcher groups whatever tasks its requests name. Every replica reads the one shared
repository: any replica can answer any task (loading the head if it must, within
MTS_HEAD_MEMORY_MB), so placement is where a task's requests go, not what a replica can answer,
and a head hot-added through any replica reaches the others by their repository poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from multitask_serve.fleet.asgi import Answer, Exchange, call
from multitask_serve.fleet.routing import task_of
from multitask_serve.service.errors import ServiceError

# The response header that names the replica that answered (which replica holds which task).
REPLICA_HEADER = b"x-mts-replica"
# Ray's record of the tasks a replica has loaded, per replica: with no limit (-1) a task's
# requests keep going to the replica that first loaded it (unless it is busy), so the replicas'
# caches split the tasks between them instead of each holding copies of the same heads.
NO_LIMIT = -1


def replica_class(heads_per_replica: int = NO_LIMIT) -> type:
    """The replica deployment's class; ``heads_per_replica`` bounds Ray's record of the tasks
    each replica holds (least recently used forgotten first; -1: no bound). Which heads stay
    loaded is the replica's own budget, MTS_HEAD_MEMORY_MB."""

    class FleetReplica:
        async def __init__(self) -> None:  # type: ignore[misc]  # Ray awaits it
            from multitask_serve.service.app import create_app
            from multitask_serve.service.settings import Settings

            # MTS_* from the deployment's runtime environment, as `mts serve` reads them.
            self._app = create_app(Settings())
            self._registry = self._app.state.services.registry
            self._lifespan = self._app.router.lifespan_context(self._app)
            await self._lifespan.__aenter__()
            context = serve.get_replica_context()
            self._name = context.replica_id.unique_id.encode()

        @serve.multiplexed(max_num_models_per_replica=heads_per_replica)
        async def holding(self, task: str) -> str:
            """Load ``task``'s head here (Ray then routes its requests here). A task this replica
            cannot serve is left to the request, whose answer says why."""
            with contextlib.suppress(ServiceError):
                await asyncio.to_thread(self._registry.loaded, [task])
            return task

        async def __call__(self, request: Request) -> Response:
            """As Ray's HTTP ingress itself (``--no-router``): the client names the task in
            Ray's ``serve_multiplexed_model_id`` header, or the request goes to any replica."""
            return response_of(await self.handle(await exchange_of(request)))

        async def handle(self, request: Exchange) -> Answer:
            task = serve.get_multiplexed_model_id()
            if task:
                await self.holding(task)
            answer = await call(self._app, request)
            answer.headers.append((REPLICA_HEADER, self._name))
            return answer

        async def __del__(self) -> None:
            await self._lifespan.__aexit__(None, None, None)

    return FleetReplica


class FleetRouter:
    """Ray's HTTP ingress: reads the task, forwards the request to a replica that holds it."""

    def __init__(self, replicas: DeploymentHandle) -> None:
        self._replicas = replicas

    async def __call__(self, request: Request) -> Response:
        exchange = await exchange_of(request)
        task = task_of(exchange.path, exchange.body)
        handle = self._replicas.options(multiplexed_model_id=task) if task else self._replicas
        return response_of(await handle.handle.remote(exchange))


async def exchange_of(request: Request) -> Exchange:
    return Exchange(
        method=request.method,
        path=request.url.path,
        query=request.url.query.encode(),
        headers=list(request.headers.raw),
        body=await request.body(),
        client=(request.client.host, request.client.port) if request.client else None,
    )


def response_of(answer: Answer) -> Response:
    response = Response(content=bytes(answer.body), status_code=answer.status)
    response.raw_headers = answer.headers
    return response


def application(
    env: Mapping[str, str],
    replicas: int,
    replica_cpus: float,
    heads_per_replica: int = NO_LIMIT,
    router: bool = True,
) -> Any:
    """The fleet as one Ray Serve application: ``replicas`` replicas of the service, each with
    ``env`` (MTS_* settings) and ``replica_cpus`` CPUs reserved, behind the router (or, without
    ``router``, taking Ray's HTTP requests themselves)."""
    replica = serve.deployment(
        replica_class(heads_per_replica),
        name="replica",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus, "runtime_env": {"env_vars": dict(env)}},
        # A replica's own batcher takes all it is sent: Ray's per-replica bound only stops one
        # replica from queueing what another could run (MTS_MAX_IN_FLIGHT_REQUESTS still holds).
        max_ongoing_requests=128,
    )
    if not router:
        return replica.bind()
    return serve.deployment(
        FleetRouter,
        name="router",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1024,
    ).bind(replica.bind())


def settings_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's MTS_* variables with ``overrides``: what each replica reads its settings
    from. Less MTS_ADMIN_PORT: the fleet serves every route on Ray's one port, and a replica told
    of an admin port would answer 404 there for /admin/... and /metrics."""
    inherited = {k: v for k, v in os.environ.items() if k.startswith("MTS_")}
    inherited.pop("MTS_ADMIN_PORT", None)
    return inherited | dict(overrides)
