"""Three 10^4-sample runs in one process on CUDA (the first compiles, the next two reuse the compiled graphs): wall
time per stage and the sample stage's images x steps / s, as bench/gpu_check.py's run (demo skies, t0 600, 40 steps).
Writes $OUT/warm_runs.json (or ./warm_runs.json). Usage on the device: python3 bench/gpu_warm_runs.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import sample_run  # bench/ is not a package: its folder goes first on the path

KEYS = ("label", "wall_s", "timings_s", "images_denoised", "sample_stage_images_x_steps_per_s", "acceptance_rate")


def main() -> None:
    out = Path(os.environ.get("OUT", "."))
    rows = []
    for label in ("cold", "warm", "warm2"):
        with tempfile.TemporaryDirectory() as tmp:
            row = sample_run("cuda", False, 10_000, Path(tmp))
        row["label"] = label
        rows.append(row)
        print(json.dumps({k: row[k] for k in KEYS}), flush=True)
    (out / "warm_runs.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
