"""Every deployment setting, in one place, read from `IUMAD_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.data.decode import DEFAULT_MAX_DEPTH_BYTES, DEFAULT_MAX_PIXELS
from model.errors import InputError
from model.network.presets import ANCHOR_WEIGHT, PRESETS, SHIPPED_PRESET, preset_config

# Network fields that were once settings of their own; the preset + IUMAD_NETWORK_CONFIG own them now.
RETIRED_NETWORK_VARIABLES = {"IUMAD_BACKBONE": "backbone", "IUMAD_IMAGE_SIZE": "image_size"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IUMAD_", env_file=None, extra="ignore")

    data_dir: Path = Field(
        Path("./iumad-data"),
        validate_default=True,
        description="Samples, model versions, logs, embedded Redis; relative = to the working directory.",
    )
    redis_url: str | None = Field(None, description="Redis URL; unset = start an embedded Redis.")
    redis_password: SecretStr | None = Field(
        None,
        description="Password of the Redis at redis_url (requirepass, or the ACL user's in the URL); "
        "kept out of the URL so that it never shows in logs or process lists.",
    )
    queue_name: str = "iumad-training"

    backbone_weights: Path | None = Field(None, description="Weights file (safetensors or timm state dict).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    inference_backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="auto: onnxruntime on a CPU where the version has its model.onnx (about 3x faster "
        "than PyTorch there), PyTorch otherwise (CUDA, or an older version without the graph).",
    )
    torch_threads: int | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_batch_wait_ms: float = 4.0
    max_queue: int = 64
    decode_threads: int = 4
    max_connections: int = Field(
        256, gt=0, description="Open connections a gateway serves at once; more get 503 (uvicorn)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body that sends nothing for this long is answered 408."
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="How long an idle kept-alive connection stays."
    )
    drain_timeout_s: float = Field(30.0, description="On shutdown, how long to finish queued inspections.")
    retry_after_s: int = Field(1, description="Retry-After sent with 503 when the queue is full.")

    # The largest RGB file (4096x4096 RGBA, 64 MiB) and depth file (IUMAD_MAX_DEPTH_BYTES) fit under this.
    max_inspect_bytes: int = 136 * 1024 * 1024
    max_enroll_bytes: int = 4 * 1024 * 1024 * 1024
    max_concurrent_enrolments: int = Field(
        2,
        gt=0,
        description="Enrolment uploads one gateway receives at once (each may use GBs of disk); "
        "more get 503 with Retry-After.",
    )
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_depth_bytes: int = Field(
        DEFAULT_MAX_DEPTH_BYTES,
        gt=0,
        description="What one depth file may decode to (a float32 xyz cloud is 12 bytes a pixel); "
        "checked from its header before decoding.",
    )
    max_archive_members: int = 20000
    max_archive_ratio: float = 200.0

    inspect_api_keys: list[str] = Field(default_factory=list)
    operator_api_keys: list[str] = Field(default_factory=list)
    allow_no_auth: bool = Field(
        False,
        description="Serve on a non-loopback address with no API keys (anyone on the network may enrol, "
        "activate and change thresholds). Without it, `iumad serve` refuses to start that way.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins besides the gateway's own (e.g. https://line-ui.example) that may "
        "send state-changing requests; cross-site ones are refused with 403.",
    )

    job_timeout_s: int = 3 * 3600
    enroll_max_minutes: float = 5.0
    enroll_stop_when_converged: bool = Field(
        True,
        description="End an enrolment's training when its held-out pairs' reconstruction error stops "
        "falling (then anneal), not only at the budget (docs/MODEL.md, stopping rule).",
    )
    enroll_max_minutes_limit: float = Field(
        60.0, gt=0, description="The longest budget (max_minutes) an enrolment may ask for on this server."
    )
    forgetting_margin: float = 0.05
    embedded_worker: bool = True
    reconcile_interval_s: float = 2.0
    redis_key_prefix: str = Field("iumad", description="Prefix of the registry, event and job keys in Redis.")
    min_enroll_samples: int = Field(5, description="Fewest valid normal pairs an enrolment accepts.")
    min_holdout_samples: int = Field(
        8,
        ge=0,
        description="Fewest held-out pairs an enrolment sets its threshold on (and measures convergence "
        "with); an upload that holds any out needs this many plus two to train on.",
    )
    job_heartbeat_timeout_s: float = Field(
        30.0, description="A running job whose worker has not reported for this long is marked failed."
    )
    failed_samples_keep_hours: float = Field(
        24.0,
        ge=0,
        description="How long a failed job's stored samples are kept, so that POST /jobs/{id}/retry can "
        "train again without a second upload; the worker removes them after that.",
    )
    cancel_grace_s: float = Field(
        10.0, description="Seconds a running job gets to stop cooperatively before it is killed."
    )
    network_preset: str = Field(
        SHIPPED_PRESET,
        description="The network a first (base) enrolment builds: one of model/network/presets.py "
        "(cpu: no Mamba decoders, no IBFM, object adapters, the measured CPU default; full: with "
        "Mamba decoders and IBFM; paper: the paper's network without object adapters).",
    )
    network_config: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON overrides of the preset's model config for a first (base) enrolment, "
        'e.g. {"hidden_size": 256}.',
    )
    train_epochs: int | None = Field(None, description="Training epochs per enrolment; unset = default.")
    anchor_weight: float | None = Field(
        None,
        ge=0,
        description="Pull of an incremental step towards its parent's weights; unset = the default "
        f"({ANCHOR_WEIGHT}). "
        "Lower learns new objects better and forgets old ones more (docs/BENCHMARKS.md, 6-1x4).",
    )

    keep_rejected_images: bool = False
    rejected_max_mb: int = 1024
    rejected_max_age_days: int = 30
    decision_log_max_mb: int = Field(
        1024, gt=0, description="Decision log files beyond this go, oldest first."
    )
    decision_log_max_age_days: int = Field(365, gt=0, description="Decision log files older than this go.")
    feedback_max_mb: int = Field(
        1024,
        gt=0,
        description="Operators' corrections with their images (store/feedback.py) up to this; beyond "
        "it a new correction is refused (409) until corrections are used by a refinement or discarded.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Resolved once, here: every process (gateway, embedded Redis, workers) gets the same absolute
        path, whatever its working directory (Redis changes into its own `--dir`)."""
        return value.expanduser().resolve()

    @field_validator("network_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown network preset {value!r}; known presets: {', '.join(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _valid_network(self) -> Settings:
        """A bad IUMAD_NETWORK_CONFIG stops the process at start-up, not the first enrolment."""
        for retired, field_name in RETIRED_NETWORK_VARIABLES.items():
            if retired in os.environ:
                raise ValueError(
                    f"{retired} is retired: the network's fields have one home, set "
                    f"IUMAD_NETWORK_CONFIG='{{\"{field_name}\": ...}}' instead"
                )
        try:
            preset_config(self.network_preset, **self.network_config)
        except InputError as error:
            raise ValueError(f"IUMAD_NETWORK_PRESET / IUMAD_NETWORK_CONFIG: {error}") from None
        if self.inference_backend == "onnxruntime" and self.backbone_weights is not None:
            raise ValueError(
                "IUMAD_BACKBONE_WEIGHTS applies to the PyTorch backend only (the ONNX graph carries the "
                "backbone it was exported with): unset one, or set IUMAD_INFERENCE_BACKEND=torch or auto"
            )
        return self

    @property
    def redis_password_value(self) -> str | None:
        return self.redis_password.get_secret_value() if self.redis_password is not None else None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.inspect_api_keys or self.operator_api_keys)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"

    @property
    def feedback_dir(self) -> Path:
        return self.data_dir / "feedback"


def redacted_url(url: str) -> str:
    """A Redis URL fit for a log line: never its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
