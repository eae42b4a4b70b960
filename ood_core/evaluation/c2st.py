"""Classifier two-sample test (C2ST, Lopez-Paz and Oquab 2017): can a simple classifier tell a set of images
from real images of the domain? 0.5 means indistinguishable, 1 means every image is told apart.

The unit of the test is the **image**. Each image is cut into tiles (``texture.TILE`` pixels a side) and each
tile described by texture and source features (``ood_core.evaluation.texture``); a logistic regression
(standardized features, L2, classes weighted to balance) is trained on tiles, cross-validated with folds that
keep all tiles of one image on one side (stratified group k-fold, at most ``FOLDS`` folds, fewer when a set has
fewer images, repeated ``REPEATS`` times with other fold assignments), and each image is called by the mean
out-of-fold log-odds of its tiles. The accuracy is balanced
(the mean of the two sets' hit rates), so unequal set sizes do not move the chance level from 0.5. Its 95 %
interval is exact and conservative: a Clopper-Pearson interval at 97.5 % for each set's hit rate (a binomial
over that set's images), the two bounds averaged. The tile-level balanced accuracy is reported beside it.

A set is called **distinguishable** (the run's verdict) when the accuracy is at least
``DISTINGUISHABLE_ACCURACY``; with a few images a side the interval is wide, so the verdict also says whether
it excludes 0.5 (``significant``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import beta
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ood_core.errors import ConfigurationError
from ood_core.evaluation.texture import TILE, Standardization, feature_names, tile_features

FOLDS = 5
REPEATS = 5
"""Cross-validations with different fold assignments whose out-of-fold log-odds are averaged (repeated k-fold:
the call of an image depends less on which other images shared its fold)."""
CONFIDENCE = 0.95
REGULARIZATION = 0.3
"""Inverse L2 strength ``C`` of the logistic regression (features standardized)."""
DISTINGUISHABLE_ACCURACY = 0.8
"""The accuracy from which a set is said to be distinguishable from the real one."""


@dataclass(frozen=True)
class C2STResult:
    """One test: balanced image-level accuracy with its interval, the tile-level accuracy, the sizes."""

    accuracy: float
    ci_low: float
    ci_high: float
    tile_accuracy: float
    n_real: int
    n_candidate: int
    n_tiles: int
    folds: int
    real_hits: int
    candidate_hits: int
    tile: int = TILE
    standardization: dict[str, Any] = field(default_factory=dict)

    @property
    def distinguishable(self) -> bool:
        return self.accuracy >= DISTINGUISHABLE_ACCURACY

    @property
    def significant(self) -> bool:
        """The interval excludes chance (0.5)."""
        return self.ci_low > 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "confidence": CONFIDENCE, "tile_accuracy": self.tile_accuracy, "n_real": self.n_real,
                "n_candidate": self.n_candidate, "n_tiles": self.n_tiles, "folds": self.folds,
                "real_hits": self.real_hits, "candidate_hits": self.candidate_hits,
                "distinguishable": self.distinguishable, "significant": self.significant,
                "unit": "image (mean log-odds of its tiles)",
                "tile": self.tile, "features": feature_names(self.tile), "standardization": self.standardization}

    def line(self) -> str:
        return (f"C2ST accuracy {self.accuracy:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}] "
                f"({self.n_candidate} vs {self.n_real} real images)")


def clopper_pearson(hits: int, n: int, confidence: float) -> tuple[float, float]:
    """Exact binomial interval of a proportion ``hits / n`` at ``confidence``."""
    alpha = 1.0 - confidence
    low = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, n - hits + 1))
    high = 1.0 if hits == n else float(beta.ppf(1 - alpha / 2, hits + 1, n - hits))
    return low, high


def balanced_interval(real: tuple[int, int], candidate: tuple[int, int]) -> tuple[float, float]:
    """Conservative interval of the mean of two hit rates ((hits, n) each): each rate's Clopper-Pearson interval
    at 1 - (1 - CONFIDENCE) / 2 (Bonferroni), bounds averaged."""
    level = 1.0 - (1.0 - CONFIDENCE) / 2
    a, b = clopper_pearson(*real, level), clopper_pearson(*candidate, level)
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2


def _out_of_fold_log_odds(features: npt.NDArray[np.float64], labels: npt.NDArray[np.int64],
                          groups: npt.NDArray[np.int64], folds: int, seed: int) -> npt.NDArray[np.float64]:
    """Log-odds "candidate" of every tile from classifiers that never saw its image (mean over the repeats)."""
    scores = np.zeros(len(labels))
    for repeat in range(REPEATS):
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for train, test in splitter.split(features, labels, groups):
            classifier = make_pipeline(StandardScaler(), LogisticRegression(C=REGULARIZATION, class_weight="balanced",
                                                                            solver="liblinear"))
            classifier.fit(features[train], labels[train])
            scores[test] += classifier.decision_function(features[test]) / REPEATS
    return scores


def c2st(real: npt.ArrayLike, candidate: npt.ArrayLike, *, seed: int = 0, tile: int = TILE,
         standardization: Standardization | None = None,
         candidate_parents: npt.ArrayLike | None = None) -> C2STResult:
    """The C2ST of ``candidate`` images against ``real`` ones, both (N, H, W) in the same physical units.

    ``candidate_parents``: candidates that are versions of one image (flips of one shot) share a parent id and
    are kept on one side of every fold (else the classifier would recognise the image, not the kind of image);
    each is still called on its own."""
    real_stack, cand_stack = np.asarray(real, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    n_real, n_cand = int(real_stack.shape[0]), int(cand_stack.shape[0])
    if min(n_real, n_cand) < 2:
        raise ConfigurationError(f"a C2ST needs at least 2 images per set, got {n_cand} vs {n_real} real")
    tile = min(tile, *real_stack.shape[1:], *cand_stack.shape[1:])
    standard = standardization or Standardization.of(real_stack)
    real_features, real_parents = tile_features(real_stack, standard, tile)
    cand_features, cand_parents = tile_features(cand_stack, standard, tile)
    features = np.concatenate([real_features, cand_features])
    labels = np.concatenate([np.zeros(len(real_parents), np.int64), np.ones(len(cand_parents), np.int64)])
    groups = np.concatenate([real_parents, cand_parents + n_real])
    family = groups.copy()
    if candidate_parents is not None:
        parents = np.unique(np.asarray(candidate_parents), return_inverse=True)[1].astype(np.int64)
        family[len(real_parents):] = parents[cand_parents] + n_real
    folds = min(FOLDS, n_real, len(np.unique(family[len(real_parents):])))
    if folds < 2:
        raise ConfigurationError("a C2ST needs candidates from at least 2 parent images")
    log_odds = _out_of_fold_log_odds(features, labels, family, folds, seed)
    per_image = np.bincount(groups, weights=log_odds) / np.bincount(groups)
    called = per_image > 0
    real_hits, cand_hits = int((~called[:n_real]).sum()), int(called[n_real:].sum())
    accuracy = (real_hits / n_real + cand_hits / n_cand) / 2
    tile_hits = (log_odds > 0) == (labels == 1)
    tile_accuracy = float((tile_hits[labels == 0].mean() + tile_hits[labels == 1].mean()) / 2)
    low, high = balanced_interval((real_hits, n_real), (cand_hits, n_cand))
    return C2STResult(accuracy=float(accuracy), ci_low=low, ci_high=high, tile_accuracy=tile_accuracy,
                      n_real=n_real, n_candidate=n_cand, n_tiles=len(labels), folds=folds, real_hits=real_hits,
                      candidate_hits=cand_hits, tile=tile, standardization=standard.to_dict())
