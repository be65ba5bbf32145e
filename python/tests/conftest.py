"""Shared fixtures and helpers for the addcow Python tests."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, NoReturn, Tuple

import pytest
from hypothesis import HealthCheck, settings

import addcow

CLUSTER = 65536
SECTOR = 512
HEADER_SIZE = 2560

settings.register_profile(
    "addcow",
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "addcow"))


def skip_unless_ci(reason: str) -> NoReturn:
    """Skips the calling test loudly; in CI (``CI`` set, as CI exports ``CI=true``) fails it
    instead: there every test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test cannot run: {reason}")
    pytest.skip(f"SKIPPED LOUDLY: {reason}")


def rand_bytes(n: int, seed: int) -> bytes:
    """``n`` deterministic pseudo-random bytes."""
    return random.Random(seed).getrandbits(8 * n).to_bytes(n, "little") if n else b""


def bitmap_bits(meta_path: Path, clusters: int) -> list:
    """The allocation bits as stored on disk in the ``.add-cow`` file (LSB first)."""
    raw = meta_path.read_bytes()[HEADER_SIZE:]
    return [bool(raw[c // 8] >> (c % 8) & 1) if c // 8 < len(raw) else False for c in range(clusters)]


def overlay_over(tmp_path: Path, data: bytes, **create_args: Any) -> Path:
    """``tmp_path/base.raw`` holding ``data`` and ``disk.add-cow`` over it (image file
    ``disk.raw``), made with ``addcow.create(..., **create_args)``."""
    (tmp_path / "base.raw").write_bytes(data)
    path = tmp_path / "disk.add-cow"
    addcow.create(path, "disk.raw", backing_file="base.raw", **create_args)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Tuple[Path, bytes]:
    """A raw backing file of 5 clusters and 1000 bytes of random data."""
    data = rand_bytes(5 * CLUSTER + 1000, 1)
    path = tmp_path / "base.raw"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def overlay(tmp_path: Path, base: Tuple[Path, bytes]) -> Path:
    """An empty add-cow overlay over ``base``, as large as ``base`` (image file disk.raw)."""
    path = tmp_path / "disk.add-cow"
    addcow.create(path, "disk.raw", backing_file="base.raw")
    return path


@pytest.fixture
def big_overlay(tmp_path: Path, base: Tuple[Path, bytes]) -> Path:
    """An add-cow overlay of 8 clusters over the shorter ``base``."""
    path = tmp_path / "big.add-cow"
    addcow.create(path, "big.raw", backing_file="base.raw", size=8 * CLUSTER)
    return path
