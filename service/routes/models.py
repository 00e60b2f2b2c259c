"""The model versions on disk (`models_dir/<version>/manifest.json`) and the active one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from model.checkpoint import MANIFEST_FILE, Manifest, read_manifest
from model.errors import CheckpointError, NotFoundError
from service.deps import InspectRole, LineageDep, OperatorRole, StateDep
from service.errors import NothingEnrolledError, ServiceUnavailableError
from service.lineage import redis_or_503
from service.schemas import VERSION_PATTERN, Activation, ActivePointer, ModelInfo, ModelList
from service.state import AppState, find_active_version
from store.registry import scan_versions, version_status

router = APIRouter(prefix="/models", tags=["models"])

VersionName = Annotated[str, Path(pattern=VERSION_PATTERN, description="A model version id.")]


def _training_summary(manifest: Manifest) -> dict[str, Any]:
    return {key: value for key, value in manifest.training.items() if key != "curve"}  # the curve is long


def model_info(manifest: Manifest, active: str | None, serving: str | None) -> ModelInfo:
    return ModelInfo(
        status=version_status(manifest, active),
        version=manifest.version,
        parent=manifest.parent,
        created=manifest.created,
        objects=[record.name for record in manifest.objects],
        metrics=dict(manifest.metrics),
        training=_training_summary(manifest),
        active=manifest.version == active,
        serving=manifest.version == serving,
    )


def _active_name(state: AppState) -> str | None:
    try:
        active = find_active_version(state.settings, state.registry)
    except (CheckpointError, ServiceUnavailableError):
        return None
    return active.name if active is not None else None


@router.get("", response_model=ModelList, summary="List the model versions")
def list_models(state: StateDep, _role: InspectRole) -> ModelList:
    active, serving = _active_name(state), state.runtime.version
    scan = scan_versions(state.settings.models_dir)
    models = [model_info(manifest, active, serving) for manifest in scan.manifests]
    unreadable = [{"directory": name, "error": error} for name, error in scan.unreadable.items()]
    models.sort(key=lambda info: (info.created, info.version))
    return ModelList(active=active, serving=serving, models=models, unreadable=unreadable)


@router.get(
    "/active",
    response_model=ModelInfo,
    summary="The active model version",
    responses={409: {"description": "Nothing enrolled yet."}},
)
def active_model(state: StateDep, _role: InspectRole) -> ModelInfo:
    """The version the active pointer names (whether this gateway serves it yet is in `serving`)."""
    active = find_active_version(state.settings, state.registry)
    if active is None:
        raise NothingEnrolledError()
    if not active.is_dir():
        raise NotFoundError(
            f"the active pointer names {active.name!r}, which is not in {state.settings.models_dir}"
        )
    return model_info(read_manifest(active), active.name, state.runtime.version)


@router.get(
    "/{version}",
    response_model=ModelInfo,
    summary="One model version",
    responses={404: {"description": "Unknown version."}},
)
def get_model(
    version: VersionName,
    state: StateDep,
    _role: InspectRole,
) -> ModelInfo:
    directory = state.settings.models_dir / version
    if not (directory / MANIFEST_FILE).is_file():
        raise NotFoundError(f"unknown model version {version!r}; GET /models lists them")
    return model_info(read_manifest(directory), _active_name(state), state.runtime.version)


@router.post(
    "/{version}/activate",
    response_model=Activation,
    summary="Activate a version: roll back, or accept a needs_review candidate",
    responses={
        404: {"description": "Unknown version."},
        409: {"description": "expected_sequence is stale (another activation happened)."},
        422: {"description": "The version's files are corrupt (sha256 mismatch)."},
        503: {"description": "Redis is unreachable."},
    },
)
def activate_model(
    version: VersionName,
    state: StateDep,
    _role: OperatorRole,
    lineage: LineageDep,
    expected_sequence: int | None = None,
) -> Activation:
    """Points every gateway at `version`; each loads and warms it, then swaps (see `serving` in /readyz)."""
    registry = lineage.registry
    registry.verify(version)  # never point the fleet at files that cannot load
    with redis_or_503("activate a model version"):
        active = registry.activate(
            version, expected_sequence, reason="operator: POST /models/{version}/activate"
        )
    return Activation(
        active=ActivePointer(**active.to_dict()),
        serving=state.runtime.version,
        message=f"version {version} is active (sequence {active.sequence}); gateways swap to it within "
        "about a second",
    )
