"""Shared fixtures. Keep `synthetic_root` stable: other test modules rely on its exact shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from service_processes import start_redis

from iumad.embedded import RedisServerProcess
from model.data.synthetic import write_synthetic_dataset
from store.connection import connect_redis


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic RGB-D dataset in the MVTec 3D-AD layout, generated once per test session.

    3 objects ("disc", "ring", "tile"), 64x64 px, per object 6 train, 2 validation and 6 test images
    (test: 3 good, then one "contamination", one "dent", one "bump"). Treat it as read-only.
    """
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, objects=3, size=64, n_train=6, n_validation=2, n_test=6, seed=0)
    return root


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """A private `redis-server` for one test module (the tests that need a real Redis)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServerProcess) -> Iterator[Redis]:
    """A client of the module's private Redis, emptied for each test."""
    client = connect_redis(redis_server.url)
    client.flushdb()
    yield client
    client.close()
