"""Writer process for the store tests: writes runs the way a pipeline process would.

Usage: ``python tests/store_writer_proc.py STORE MODE SEED [START_AT]``

- ``complete``: write one complete run from SEED and print ``COMPLETE <run_id>``.
- ``killable``: write one complete run, print ``COMPLETE <run_id>``, then start a second run, print
  ``WRITING <run_id>`` and append a batch every 50 ms until killed.

START_AT (epoch seconds) lets two processes begin at the same instant. Data depend only on the seed and
the batch index, so the test can rebuild what was written.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ood_core.store import RunWriter

N_INPUTS, CHANNELS, SIZE, BATCH, N_BATCHES = 3, 3, 16, 4, 5
CRITERIA = ("mean_distance_to_reference", "mean_angle_to_ood_deg", "mean_pair_angle_at_candidate_deg")


def make_inputs(seed: int) -> dict[str, Any]:
    """The per-input arrays of a run made from ``seed``."""
    rng = np.random.default_rng([seed, 0])
    image = (N_INPUTS, CHANNELS, SIZE, SIZE)
    return {
        "inputs": rng.uniform(-1, 1, image).astype(np.float32),
        "input_mask": rng.random((N_INPUTS, SIZE, SIZE)) < 0.1,
        "input_latents": rng.standard_normal(image).astype(np.float32),
        "reconstructions": rng.uniform(-1, 1, image).astype(np.float32),
        "reconstruction_psnr": rng.uniform(30, 40, N_INPUTS).astype(np.float32),
    }


def make_batch(seed: int, index: int) -> dict[str, Any]:
    """Sample batch number ``index`` of a run made from ``seed``."""
    rng = np.random.default_rng([seed, index + 1])
    image = (BATCH, CHANNELS, SIZE, SIZE)
    return {
        "samples": rng.uniform(-1, 1, image).astype(np.float32),
        "samples_physical": rng.lognormal(2.0, 1.0, (BATCH, SIZE, SIZE)).astype(np.float32),
        "sample_latents": rng.standard_normal(image).astype(np.float32),
        "sample_seed": np.arange(index * BATCH, (index + 1) * BATCH, dtype=np.int64) + seed * 1_000_000,
        "sample_parent": rng.integers(-1, N_INPUTS, BATCH).astype(np.int32),
        "sample_criteria": rng.uniform(0, 100, (BATCH, len(CRITERIA))).astype(np.float32),
        "sample_nearest_input_distance": rng.uniform(1, 5, BATCH).astype(np.float32),
    }


def provenance(seed: int) -> dict[str, Any]:
    """A small provenance record with the section-6 keys the writer does not set itself."""
    return {
        "parameters": {"seed": seed, "samples": BATCH * N_BATCHES},
        "environment": {"version": "test"},
        "model": {"source": "none", "weights_sha256": "0" * 64},
        "inversion": {"t0": 600, "steps": 20},
        "normalization": {"mode": "per_run"},
        "prior": {"kind": "scalar"},
        "sampler": {"acceptance_rate": 0.5, "seed": seed},
        "novelty": {"factor": 0.5},
        "inputs": [{"path": f"input_{i}.fits"} for i in range(N_INPUTS)],
        "quarantined": [],
        "timings": {},
    }


N_REFERENCES = 4


def start_run(store: str, seed: int) -> RunWriter:
    """Create a run and write its inputs."""
    writer = RunWriter.create(
        store, n_inputs=N_INPUTS, channels=CHANNELS, height=SIZE, width=SIZE, criterion_names=CRITERIA,
        provenance=provenance(seed), units="MJy/sr",
    )
    writer.write_inputs(**make_inputs(seed))
    rng = np.random.default_rng(seed + 1000)
    writer.write_reference_latents(rng.standard_normal((N_REFERENCES, CHANNELS, SIZE, SIZE)).astype(np.float32))
    return writer


def write_complete_run(store: str, seed: int) -> str:
    """Write a whole run and return its id."""
    writer = start_run(store, seed)
    for index in range(N_BATCHES):
        writer.append_samples(**make_batch(seed, index))
    writer.complete()
    return writer.run_id


def main(argv: list[str]) -> int:
    store, mode, seed = argv[0], argv[1], int(argv[2])
    if len(argv) > 3:
        time.sleep(max(0.0, float(argv[3]) - time.time()))
    print("COMPLETE", write_complete_run(store, seed), flush=True)
    if mode == "killable":
        writer = start_run(store, seed + 1)
        print("WRITING", writer.run_id, flush=True)
        for index in range(10_000):
            writer.append_samples(**make_batch(seed + 1, index))
            time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
