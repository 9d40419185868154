import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def reference_dir() -> Path:
    return Path(os.environ.get("VEXPRESS_REFERENCE_DIR", SHARED / "reference" / "vexpress-tiny"))


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    path = reference_dir()
    assert path.is_dir(), f"reference fixture directory {path} is missing (set VEXPRESS_REFERENCE_DIR)"
    return path


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    path = SHARED / "samples"
    assert path.is_dir(), f"shared samples directory {path} is missing"
    return path
