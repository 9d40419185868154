import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _register_training_package() -> None:
    """Makes the training folder importable as `vexpress_training` in a clone (see training/__main__.py)."""
    spec = importlib.util.spec_from_file_location("_vexpress_training_main", REPO / "training" / "__main__.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    launcher.training_package()


_register_training_package()


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight model directory in the published layout, made once per test session."""
    from vexpress_core.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models") / "model_ckpts")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a busy 2-core machine the default pool is many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
