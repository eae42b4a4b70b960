"""Shared fixtures, and the one switch for the real FITS dev set.

The dev set is not part of the repository; tests find it through one setting, ``OOD_DEV_DATA`` (tests/devdata.py).
A test that needs it uses the ``fits_dir`` fixture or carries ``@pytest.mark.devdata``; either way it is marked
``devdata`` and, without the set, skipped with the one reason ``DEV_DATA_MISSING``. Everything else runs on FITS
files the project writes itself (tests/made_fits.py: demo skies; edge cases written with astropy into tmp_path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from devdata import DEV_DATA_MISSING, DEV_DATA_PRESENT, FITS_DIR


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses ``fits_dir`` is a ``devdata`` test; without the set all of them skip with one reason."""
    skip = pytest.mark.skip(reason=DEV_DATA_MISSING)
    for item in items:
        if "fits_dir" in getattr(item, "fixturenames", ()) and item.get_closest_marker("devdata") is None:
            item.add_marker(pytest.mark.devdata)
        if item.get_closest_marker("devdata") is not None and not DEV_DATA_PRESENT:
            item.add_marker(skip)


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
    """The real FITS dev set (images/, cutouts_128/, extras/, MANIFEST.csv) at ``$OOD_DEV_DATA``; skip when absent."""
    if not DEV_DATA_PRESENT:
        pytest.skip(DEV_DATA_MISSING)
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


@pytest.fixture(scope="module")
def skies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four demo skies (tests/made_fits.py), made once per test module."""
    from made_fits import write_skies

    folder = tmp_path_factory.mktemp("skies")
    write_skies(folder, 4)
    return folder
