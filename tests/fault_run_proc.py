"""A whole pipeline run in this process, for the fault-injection test to kill at random moments.

Usage: ``python tests/fault_run_proc.py STORE INPUT... [--resume RUN_ID]``

Prints ``READY`` once the imports and the model are loaded (the test times its kill from then on) and
``DONE <run_id>`` when the run is complete. The settings are tiny (few DDIM steps, few samples) so that a
run takes seconds on a CPU; they are the same for every call, so every complete run must hold the same
samples.
"""

from __future__ import annotations

import argparse
import sys

from ood_core.method.model import cached_model
from ood_core.pipeline import PipelineParameters, run_in_process

SETTINGS = {"samples": 4, "steps": 4, "t0": 200, "reference_count": 4, "device": "cpu", "batch_size": 8,
            "prior": "ppca", "seed": 3}


def parameters(store: str, inputs: list[str]) -> PipelineParameters:
    return PipelineParameters(inputs=inputs, store=store, **SETTINGS)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("--resume")
    args = parser.parse_args(argv)
    params = parameters(args.store, args.inputs)
    cached_model(params.model, params.device, params.dtype)
    print("READY", flush=True)
    result = run_in_process(params, resume=args.resume)
    print("DONE", result.run_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
