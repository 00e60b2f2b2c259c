"""The enrolled objects of the serving model version, and operator threshold overrides."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from model.checkpoint import ObjectRecord
from model.inference import InspectionModel
from service.deps import InspectRole, OperatorRole, StateDep
from service.schemas import OBJECT_NAME_PATTERN, ObjectInfo, ObjectList, ThresholdUpdate
from service.state import AppState

router = APIRouter(prefix="/objects", tags=["objects"])

ObjectName = Annotated[str, Path(pattern=OBJECT_NAME_PATTERN, description="An enrolled object's name.")]


def object_info(record: ObjectRecord, override: float | None, model_version: str) -> ObjectInfo:
    return ObjectInfo(
        name=record.name,
        label=record.label,
        modalities=list(record.modalities),
        threshold=override if override is not None else record.threshold,
        threshold_source="operator" if override is not None else "calibrated",
        calibrated_threshold=record.threshold,
        threshold_override=override,
        target_false_reject_rate=record.target_false_reject_rate,
        enrolled_in=record.enrolled_in,
        train_samples=record.train_samples,
        holdout_samples=record.holdout_samples,
        calibration=dict(record.calibration),
        model_version=model_version,
    )


def _serving_model(state: AppState) -> InspectionModel:
    """The loaded model, even while the gateway drains (reading objects is not new work)."""
    return state.runtime.model or state.runtime.serving_model()


@router.get("", response_model=ObjectList, summary="List the enrolled objects")
def list_objects(state: StateDep, _role: InspectRole) -> ObjectList:
    model = state.runtime.model
    if model is None:
        return ObjectList(model_version=None, objects=[])
    overrides = state.thresholds.all()
    return ObjectList(
        model_version=model.version,
        objects=[object_info(r, overrides.get(r.name), model.version) for r in model.objects],
    )


@router.get(
    "/{name}",
    response_model=ObjectInfo,
    summary="One enrolled object",
    responses={404: {"description": "Unknown object."}},
)
def get_object(
    name: ObjectName,
    state: StateDep,
    _role: InspectRole,
) -> ObjectInfo:
    model = _serving_model(state)
    record = model.object(name)
    return object_info(record, state.thresholds.get(name), model.version)


@router.patch(
    "/{name}",
    response_model=ObjectInfo,
    summary="Set or clear an object's threshold (operator)",
    responses={404: {"description": "Unknown object."}, 403: {"description": "Not an operator key."}},
)
def update_object(
    name: ObjectName,
    update: ThresholdUpdate,
    state: StateDep,
    _role: OperatorRole,
) -> ObjectInfo:
    """The override applies to every model version (also future ones) until changed; null clears it."""
    model = _serving_model(state)
    record = model.object(name)
    if update.threshold is None:
        state.thresholds.clear(name)
    else:
        state.thresholds.set(name, update.threshold)
    return object_info(record, state.thresholds.get(name), model.version)
