"""The query that listings of served heads take: the service's ``GET /tasks`` and OIP's
repository index filter and page by it (``HeadRegistry.page``; OpenAI's model list takes the
same arguments but ``kind``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Query

from multitask_serve.modelrepo.types import Kind


@dataclass
class ListingQuery:
    """FastAPI reads it as a route's query parameters (``Annotated[ListingQuery, Depends()]``);
    ``HeadRegistry.page(**asdict(query))`` lists by it."""

    loaded: Annotated[bool | None, Query(description="Only (not) loaded heads")] = None
    kind: Annotated[Kind | None, Query(description="Only heads of this kind")] = None
    after: Annotated[str | None, Query(description="Only tasks named after this one")] = None
    limit: Annotated[int | None, Query(ge=1, description="At most this many")] = None
