"""API keys in `X-API-Key`, two roles: `inspect` (cameras) and `operator` (who may also inspect).

With no keys configured at all, auth is off (the app logs a loud warning at start-up); `iumad serve`
then refuses a non-loopback address unless `IUMAD_ALLOW_NO_AUTH=true` (`exposure_problem`). Keys are
compared in constant time, against every configured key, so timing tells nothing about which one
nearly matched. The dependencies are `async def` although they never await: FastAPI would run a plain
`def` dependency in its thread pool, two thread hops per request for a few microseconds of work.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Security
from fastapi.security import APIKeyHeader

from core.settings import Settings
from service.errors import ForbiddenError, UnauthorizedError
from service.state import StateDep

Role = Literal["inspect", "operator", "anonymous"]

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An `inspect` or `operator` key (unused when auth is off).",
)


def is_loopback(host: str) -> bool:
    """Only this machine can reach a gateway bound here."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_problem(settings: Settings) -> str | None:
    """Why the gateway must not start as configured: reachable from the network with auth off."""
    if settings.auth_enabled or settings.allow_no_auth or is_loopback(settings.host):
        return None
    return (
        f"refusing to serve on {settings.host} with auth off: anyone on the network could enrol objects, "
        "activate model versions and change thresholds. Set IUMAD_OPERATOR_API_KEYS (and "
        "IUMAD_INSPECT_API_KEYS for cameras), serve on 127.0.0.1, or set IUMAD_ALLOW_NO_AUTH=true"
    )


def _matches_any(candidate: str, keys: list[str]) -> bool:
    given = candidate.encode("utf-8")
    found = False
    for key in keys:  # no early exit: the time does not depend on which key matched
        found |= hmac.compare_digest(given, key.encode("utf-8"))
    return found


def role_of(settings: Settings, api_key: str | None) -> Role:
    """The caller's role; raises 401 when auth is on and the key is missing or unknown."""
    if not settings.auth_enabled:
        return "anonymous"
    if not api_key:
        raise UnauthorizedError("missing API key: send it in the X-API-Key header")
    if _matches_any(api_key, settings.operator_api_keys):
        return "operator"
    if _matches_any(api_key, settings.inspect_api_keys):
        return "inspect"
    raise UnauthorizedError("unknown API key")


def key_id(api_key: str | None) -> str:
    """Who sent a request, fit to store and show: a fingerprint of the key, never the key.
    "anonymous" when auth is off."""
    if not api_key:
        return "anonymous"
    return "key-" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Caller:
    role: Role
    key_id: str


async def require_operator_caller(
    state: StateDep,
    api_key: Annotated[str | None, Security(api_key_header)] = None,
) -> Caller:
    """An operator, with the id of the key it used (for what it records, e.g. a correction)."""
    role = await require_operator(state, api_key)
    return Caller(role, key_id(api_key if role != "anonymous" else None))


async def require_inspect(
    state: StateDep,
    api_key: Annotated[str | None, Security(api_key_header)] = None,
) -> Role:
    """Cameras and operators; anyone when auth is off."""
    return role_of(state.settings, api_key)


async def require_operator(
    state: StateDep,
    api_key: Annotated[str | None, Security(api_key_header)] = None,
) -> Role:
    """Operators only (set thresholds, enrol, activate, roll back); anyone when auth is off."""
    role = role_of(state.settings, api_key)
    if role == "inspect":
        raise ForbiddenError("this needs an operator API key; the given key may only inspect")
    return role
