"""Shared fixtures. Real FITS data live read-only beside the checkout in ../shared/data/fits."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

FITS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fits"


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test (small CPU runs are faster and steadier so), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fits_dir() -> Path:
    """The shared real-FITS folder (images/, cutouts_128/, extras/, MANIFEST.csv); skip when absent."""
    if not FITS_DIR.is_dir():
        pytest.skip(f"real FITS test data not found at {FITS_DIR}")
    return FITS_DIR


SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "base64"


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    """The base model committed in models/base64 (trained by `ood train-base`)."""
    assert (SHIPPED_MODEL / "unet" / "diffusion_pytorch_model.safetensors").is_file(), "shipped model missing"
    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def shipped_model(shipped_model_dir: Path):  # type: ignore[no-untyped-def]
    """The shipped model loaded once per session on the CPU."""
    from ood_core.method.model import load_model

    return load_model(shipped_model_dir, device="cpu")


MONO_MODEL = SHIPPED_MODEL.parent / "mono64"


@pytest.fixture(scope="session")
def mono_model():  # type: ignore[no-untyped-def]
    """The shipped one-channel model (models/mono64): what a run on single-band inputs uses by default."""
    from ood_core.method.model import load_model

    assert (MONO_MODEL / "unet" / "diffusion_pytorch_model.safetensors").is_file(), "models/mono64 missing"
    return load_model(MONO_MODEL, device="cpu")


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server for the module's flow runs (what `ood run` starts when no server is set)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _restore_log_levels() -> Iterator[None]:
    """`ood --quiet` called in-process (ood_cli.terminal) sets process-wide log levels and Prefect's level variable
    for the rest of the command's process; give every test back the levels it started with."""
    names = ("ood_core", "diffusers")
    levels = {name: logging.getLogger(name).level for name in names}
    env = {key: os.environ.get(key) for key in ("PREFECT_LOGGING_LEVEL",)}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
