"""A real pipeline per test (`ringdaq.launch.Pipeline`), from this repository's binaries unless
$RINGDAQ_BIN_DIR says otherwise (build them first: `cargo build`)."""

import os
from pathlib import Path

import pytest

from ringdaq.launch import Pipeline

REPO = Path(__file__).resolve().parents[2]

if not os.environ.get("RINGDAQ_BIN_DIR"):
    built = [REPO / "target" / p for p in ("debug", "release") if (REPO / "target" / p / "ringdaq").exists()]
    if built:
        os.environ["RINGDAQ_BIN_DIR"] = str(max(built, key=lambda p: (p / "ringdaq").stat().st_mtime))


@pytest.fixture
def pipeline():
    p = Pipeline()
    try:
        yield p
    finally:
        p.close()
