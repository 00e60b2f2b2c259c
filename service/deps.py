"""The routes' dependencies, each named once (FastAPI's `Annotated` aliases).

A route lists what it uses and gets it resolved: the app's state, the caller's role, and the model
lineage (registry + job records) of a gateway connected to Redis. Declare the role before the
lineage, so that an unauthenticated caller hears 401 before a gateway without Redis says 503.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from service.auth import Caller, Role, require_inspect, require_operator, require_operator_caller
from service.errors import ServiceUnavailableError
from service.lineage import Lineage
from service.state import StateDep

__all__ = ["InspectRole", "LineageDep", "OperatorCaller", "OperatorRole", "StateDep"]

NO_REDIS_RETRY_AFTER_S = 60


async def get_lineage(state: StateDep) -> Lineage:
    """The lineage, or 503 on a gateway started without Redis (it only inspects)."""
    if state.lineage is None:
        raise ServiceUnavailableError(
            "enrolment is unavailable: this gateway runs without Redis", NO_REDIS_RETRY_AFTER_S
        )
    return state.lineage


InspectRole = Annotated[Role, Depends(require_inspect)]  # cameras and operators
OperatorRole = Annotated[Role, Depends(require_operator)]  # operators only
OperatorCaller = Annotated[Caller, Depends(require_operator_caller)]  # operators, and which key
LineageDep = Annotated[Lineage, Depends(get_lineage)]
