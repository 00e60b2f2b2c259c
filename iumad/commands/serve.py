"""`iumad serve`: the inspection gateway under uvicorn, with JSON logs and a draining shutdown.

`run()` is three steps: `prepare_services(settings)` starts what the gateway depends on (the
extension point for the embedded Redis and worker), `create_app` builds the gateway on them, and
`GatewayServer` serves it until SIGTERM/SIGINT; the services are stopped after the gateway.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn

from core.settings import Settings, get_settings
from model.errors import IumadError

log = logging.getLogger("iumad.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default: IUMAD_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: IUMAD_PORT, 8000)")


@dataclass
class Services:
    """What the gateway runs on besides itself; stopped in reverse order after the gateway."""

    redis: Any | None = None  # a redis.Redis client for create_app, or None
    stops: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception:  # noqa: BLE001 - stop the rest anyway
                log.exception("error while stopping a service")


def prepare_services(settings: Settings) -> Services:
    """Start the services the gateway needs, before the gateway.

    With `IUMAD_REDIS_URL` set, nothing: `create_app` connects to that Redis, and workers run as
    `iumad worker` wherever they are wanted. Without it, the embedded default: a real Redis with its
    files under the data directory plus one worker process (`IUMAD_EMBEDDED_WORKER=false`: no worker).
    """
    if settings.redis_url:
        return Services()
    from iumad.embedded import EmbeddedServices
    from store.connection import connect_redis

    embedded = EmbeddedServices(settings.data_dir, start_worker=settings.embedded_worker)
    url = embedded.start()
    return Services(redis=connect_redis(url), stops=[embedded.stop])


class GatewayServer(uvicorn.Server):
    """On SIGTERM/SIGINT, turn not-ready first, then let uvicorn finish in-flight requests and the
    lifespan drain the batcher."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.gateway = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self.gateway.state, "iumad", None)
        if state is not None:
            state.runtime.begin_drain()
            log.info("signal %d: draining (readiness is now 503)", sig)
        super().handle_exit(sig, frame)

    def run_until_drained(self) -> None:
        """`run()`, ending normally after a graceful shutdown. uvicorn re-raises the signal it caught
        once it has shut down, to the handler that was installed before it; that handler is this
        one, which lets `run()` return (so the services stop and the exit status is 0) and, for a
        signal that arrives before uvicorn listens, starts the same graceful exit."""

        def after_uvicorn(sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                self.handle_exit(sig, frame)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, after_uvicorn)
        self.run()


def run(args: argparse.Namespace) -> int:
    from service.app import create_app  # imports torch: only when serving
    from service.auth import exposure_problem
    from service.logs import configure_json_logging

    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = get_settings().model_copy(update=overrides)
    if (problem := exposure_problem(settings)) is not None:
        raise IumadError(problem)
    configure_json_logging(getattr(args, "log_level", "INFO"))
    services = prepare_services(settings)
    try:
        app = create_app(settings, redis=services.redis)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=int(max(1, settings.keep_alive_timeout_s)),
        )
        log.info(
            "serving on http://%s:%d (data directory %s)", settings.host, settings.port, settings.data_dir
        )
        GatewayServer(config, app).run_until_drained()
    finally:
        services.close()
    return 0
