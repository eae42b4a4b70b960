"""Is a run's output distinguishable from real images? The C2ST of its samples against its own shots, in words.

What the end of a run records (provenance ``realism``) and reports (``ood run``'s summary, the Prefect run summary):
up to ``MAX_SAMPLES`` of the run's physical samples against every shot, with ``ood_core.evaluation.c2st``. The
shots are the real images the run has; novelty (near-copies of a shot) is the sampler's rule, not this test's.
Every run gets it, calibrated or not, and on its final samples (the calibration's verdict tests its few, cheaper
calibration samples).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ood_core.evaluation.c2st import c2st

MAX_SAMPLES = 64
"""Samples tested (the first ones): enough for a clear answer, a fraction of a second on the CPU."""


def realism_record(shots: npt.ArrayLike, samples: npt.ArrayLike) -> dict[str, Any]:
    """The C2ST of physical (N, H, W) samples against the physical shots, with a line that says it plainly."""
    real = np.asarray(shots, dtype=np.float64)
    made = np.asarray(samples, dtype=np.float64)[:MAX_SAMPLES]
    if min(len(real), len(made)) < 2:
        return {"distinguishable": None, "n_samples": len(made), "n_shots": len(real),
                "line": f"not tested: {len(made)} samples and {len(real)} shots (the C2ST needs 2 a side)"}
    test = c2st(real, made, seed=0)
    numbers = (f"C2ST accuracy {test.accuracy:.2f} [{test.ci_low:.2f}, {test.ci_high:.2f}], {test.n_candidate} "
               f"samples vs {test.n_real} shots (0.5: indistinguishable)")
    if test.distinguishable:
        line = ("DISTINGUISHABLE from real images: a classifier on texture and source features tells the run's "
                f"samples from its shots, {numbers}" + ("" if test.significant else
                                                       "; the interval includes 0.5 at this size"))
    else:
        line = f"not distinguishable from the shots at this size: {numbers}"
    return {"distinguishable": test.distinguishable, "accuracy": test.accuracy, "ci_low": test.ci_low,
            "ci_high": test.ci_high, "n_samples": test.n_candidate, "n_shots": test.n_real, "line": line,
            "test": {k: v for k, v in test.to_dict().items() if k != "features"}}
