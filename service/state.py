"""The gateway's state, in one object (`AppState`), created by the app's lifespan.

Routes get it with the dependency `get_state`; code outside a request (the serve command's signal
handling, a Redis event follower) reaches it as `app.state.iumad`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from redis.exceptions import RedisError

from core.names import is_version_name
from core.settings import Settings
from model.errors import CheckpointError
from service.decision_log import DecisionLog
from service.errors import NotReadyError, ServiceUnavailableError
from service.executors import BackgroundProcesses
from service.lineage import Lineage
from service.recent import RecentInspections
from service.runtime import ModelRuntime
from service.thresholds import ThresholdStore
from store.feedback import FeedbackStore
from store.registry import ModelRegistry

ACTIVE_FILE = "ACTIVE"


@dataclass
class AppState:
    settings: Settings
    runtime: ModelRuntime
    thresholds: ThresholdStore
    decisions: DecisionLog
    feedback: FeedbackStore  # operators' corrections, until a refinement uses them
    decode_pool: ThreadPoolExecutor
    ingest_pool: BackgroundProcesses  # enrolment ingest, at the lowest CPU priority
    lineage: Lineage | None = None  # registry and job records in Redis; None = no enrolment
    background: list[Any] = field(default_factory=list)  # follower and pollers, stopped at shutdown
    recent: RecentInspections = field(default_factory=RecentInspections)  # the dashboard's live view
    enrolment_uploads: int = 0  # enrolment uploads this gateway is receiving and checking now

    @property
    def registry(self) -> ModelRegistry | None:
        """The active pointer and versions when this gateway has Redis (else `models_dir/ACTIVE`)."""
        return self.lineage.registry if self.lineage is not None else None

    @property
    def ready(self) -> bool:
        """Serving (a warmed model), or nothing enrolled yet; not while loading, failed or draining."""
        return self.runtime.state.value in ("ready", "empty")


async def get_state(request: Request) -> AppState:
    """The app's state (async: a cheap dependency FastAPI then calls on the event loop, not a thread)."""
    state = getattr(request.app.state, "iumad", None)
    if state is None:
        raise NotReadyError("the gateway is starting", retry_after_s=1)
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def find_active_version(settings: Settings, registry: ModelRegistry | None = None) -> Path | None:
    """The model version to serve at start-up, or None when nothing is enrolled yet.

    Raises `CheckpointError` when the pointer is unusable (the app records it as a failed load), and
    `ServiceUnavailableError` when the registry's Redis cannot be reached.

    With a registry (every gateway started by `iumad serve`) the pointer is the Redis registry's
    active version; without one, the file `models_dir/ACTIVE` holding a version directory's name.
    """
    if registry is not None:
        try:
            active = registry.active()
        except RedisError as error:
            raise ServiceUnavailableError(f"Redis is unreachable ({type(error).__name__})", 5) from error
        if active is None:
            return None
        if not is_version_name(active.version):
            raise CheckpointError(f"the registry names {active.version[:200]!r}, which is not a version name")
        return settings.models_dir / active.version
    pointer = settings.models_dir / ACTIVE_FILE
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    if not name:
        return None
    if not is_version_name(name):
        raise CheckpointError(f"{pointer} holds {name[:200]!r}, which is not a version directory name")
    return settings.models_dir / name
