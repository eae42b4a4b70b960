"""Full frames in: the geometry of every input chosen for the user, done and recorded (DESIGN section 4).

The rule, per input (``resolution``: the model's side; ``block``: side // resolution after the centre crop):

- ``block <= max_block`` (default 2) and no ``tile``: the input is used **whole**, centre-cropped and block-reduced
  as before (cutouts of 64 to 191 px for a 64 px model);
- ``block > max_block`` and no ``tile``: the frame is cut into **tiles** of ``resolution`` px at its own pixel
  scale (block 1), on a grid centred in the frame;
- ``tile`` given: every input is cut into tiles of that size, each then reduced by ``tile // resolution``, which
  must not exceed ``max_block`` (refused otherwise, with the fix: :func:`check_tile_size`).

Tiles mostly invalid (NaN, inf, BLANK), constant, or mostly the frame's padding value are dropped and counted
(:func:`ood_core.io.fits.tile_grid`). When more tiles remain than ``max_tiles`` (all tiled frames together,
shared evenly, a frame's unused share going to the others), each frame keeps a **seeded subset stratified by
source content**: its tiles ranked by the fraction of pixels above the frame's background + 5 sigma
(``sigma_clipped_stats`` of the whole frame), cut into as many equal strata as tiles it keeps, one tile drawn
from each stratum with the run's seed (stream "tiles"). Empty sky and crowded fields are both kept.

Every frame gets a record (provenance ``frames``): its geometry, crop, block factor, tile size, tiles cut, kept,
dropped by reason and not selected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from astropy.stats import sigma_clipped_stats

from ood_core.errors import ConfigurationError
from ood_core.io.fits import FitsImage, padding_value, tile_grid
from ood_core.method.normalization import square_crop_box
from ood_core.method.seeds import child_seed

log = logging.getLogger(__name__)

SOURCE_SIGMA = 5.0
"""A pixel counts as source when it lies this many sigma-clipped standard deviations above the frame background."""
STATS_PIXELS = 1 << 20
"""The frame statistics use an evenly strided subset of at most this many valid pixels."""


@dataclass
class FramePlan:
    """What was done to one input frame (JSON-safe via :meth:`record`)."""

    path: str
    shape: tuple[int, int]
    geometry: str
    """"whole" (cropped and block-reduced) or "tiles"."""
    block: int
    """Block factor per axis of each image given to the model (the whole frame's, or a tile's)."""
    tile: int | None = None
    crop: dict[str, int] | None = None
    """The centre crop of a whole input (y0, x0, side)."""
    cut: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    not_selected: int = 0
    kept: int = 1
    reason: str = ""

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "shape": list(self.shape), "geometry": self.geometry, "block": self.block,
                "tile": self.tile, "crop": self.crop, "tiles_cut": self.cut, "tiles_dropped": dict(self.dropped),
                "tiles_not_selected": self.not_selected, "kept": self.kept, "reason": self.reason}

    def line(self) -> str:
        """The plan in words, one line."""
        name = self.path.rsplit("/", 1)[-1]
        if self.geometry == "whole":
            return f"{name} ({self.shape[0]}x{self.shape[1]}): whole, {self.reason}"
        dropped = ", ".join(f"{n} {why}" for why, n in self.dropped.items() if n) or "none"
        return (f"{name} ({self.shape[0]}x{self.shape[1]}): {self.cut} tiles of {self.tile} px (block {self.block}), "
                f"{self.kept} kept, dropped: {dropped}, {self.not_selected} not selected; {self.reason}")


def block_of(shape: tuple[int, int], resolution: int) -> int:
    """Block factor per axis that brings an image of ``shape`` to ``resolution`` (after the centre crop)."""
    return square_crop_box(shape, resolution)[2] // resolution


def check_tile_size(tile: int | None, resolution: int, max_block: int) -> None:
    """Refuse a tile size whose tiles would be block-reduced by more than ``max_block``, saying how to fix it."""
    if tile is None or tile // resolution <= max_block:
        return
    factor = tile // resolution
    raise ConfigurationError(
        f"--tile {tile} would block-average each tile {factor}x{factor} into the model's {resolution} px, more than "
        f"--max-block {max_block} allows (stars become grey pixels): leave --tile out to cut tiles of {resolution} px "
        f"at the frame's own pixel scale, use --tile {resolution * max_block} or less, or allow the averaging "
        f"with --max-block {factor}")


def whole_plan(image: FitsImage, resolution: int, max_block: int) -> FramePlan | None:
    """The plan of an input used whole, or None when it must be tiled (block factor above ``max_block``)."""
    block = block_of(image.shape, resolution)
    if block > max_block:
        return None
    y0, x0, side = square_crop_box(image.shape, resolution)
    cropped = (side, side) != image.shape
    reason = (f"{'centre-cropped to ' + str(side) + ' px, ' if cropped else ''}"
              f"{'block ' + str(block) + ' per axis' if block > 1 else 'native pixel scale'}")
    return FramePlan(image.path, image.shape, "whole", block, crop={"y0": y0, "x0": x0, "side": side},
                     reason=reason)


def source_fraction(tiles: Sequence[FitsImage], frame: FitsImage) -> npt.NDArray[np.float64]:
    """Per tile: the fraction of its valid pixels above the frame's background + :data:`SOURCE_SIGMA` sigma."""
    valid = frame.data[~frame.mask]
    valid = valid[:: max(1, valid.size // STATS_PIXELS)]
    _, median, std = sigma_clipped_stats(valid, sigma=3.0, maxiters=10)
    threshold = float(median) + SOURCE_SIGMA * float(std)
    return np.array([float(np.mean(t.data[~t.mask] > threshold)) for t in tiles], dtype=np.float64)


def stratified_subset(scores: npt.NDArray[np.float64], keep: int, rng: np.random.Generator) -> list[int]:
    """``keep`` indices: the items ranked by score cut into ``keep`` equal strata, one drawn from each (sorted)."""
    if keep >= scores.size:
        return list(range(scores.size))
    order = np.argsort(scores, kind="stable")
    return sorted(int(rng.choice(stratum)) for stratum in np.array_split(order, keep))


def shares(available: Sequence[int], total: int) -> list[int]:
    """How many of ``total`` each frame keeps: an even split, a frame's unused share going to the others."""
    quota = [0] * len(available)
    left, open_frames = total, [i for i, n in enumerate(available) if n > 0]
    while left > 0 and open_frames:
        each, extra = divmod(left, len(open_frames))
        for rank, i in enumerate(open_frames):
            quota[i] += min(each + (rank < extra), available[i] - quota[i])
        left = total - sum(quota)
        open_frames = [i for i in open_frames if quota[i] < available[i]]
    return quota


def _tile_frame(image: FitsImage, size: int, resolution: int) -> tuple[list[FitsImage], FramePlan]:
    tiles, dropped = tile_grid(image, size, edge_value=padding_value(image), centred=True)
    block = size // resolution
    scale = "native pixel scale" if block == 1 else f"block {block} per axis"
    plan = FramePlan(image.path, image.shape, "tiles", block, tile=size, cut=len(tiles) + sum(dropped.values()),
                     dropped=dropped, kept=len(tiles), reason=f"tiles of {size} px at {scale}")
    return tiles, plan


def plan_frames(
    images: Sequence[FitsImage], resolution: int, *, tile: int | None, max_block: int, max_tiles: int, seed: int
) -> tuple[list[FitsImage], list[FramePlan]]:
    """The images the run uses (whole inputs and kept tiles, in input order) and one plan per input frame."""
    check_tile_size(tile, resolution, max_block)
    parts: list[list[FitsImage]] = []
    plans: list[FramePlan] = []
    for image in images:
        whole = None if tile else whole_plan(image, resolution, max_block)
        if whole is not None:
            parts.append([image])
            plans.append(whole)
            continue
        tiles, plan = _tile_frame(image, tile or resolution, resolution)
        if tile is None:
            plan.reason += (f", as the whole frame would need block {block_of(image.shape, resolution)} per axis "
                            f"(above --max-block {max_block})")
        parts.append(tiles)
        plans.append(plan)
    _select(images, parts, plans, max_tiles, seed)
    for plan in plans:
        log.info("input %s", plan.line())
    return [image for part in parts for image in part], plans


def _select(images: Sequence[FitsImage], parts: list[list[FitsImage]], plans: list[FramePlan], max_tiles: int,
            seed: int) -> None:
    """Thin the tiled frames' tiles to ``max_tiles`` in all (in place): a stratified seeded subset per frame."""
    tiled = [i for i, plan in enumerate(plans) if plan.geometry == "tiles"]
    available = [len(parts[i]) for i in tiled]
    if sum(available) <= max_tiles:
        return
    stream = child_seed(seed, "tiles")
    for i, keep in zip(tiled, shares(available, max_tiles), strict=True):
        if keep >= len(parts[i]):
            continue
        rng = np.random.default_rng([stream, i])
        chosen = stratified_subset(source_fraction(parts[i], images[i]), keep, rng)
        plans[i].not_selected = len(parts[i]) - len(chosen)
        plans[i].kept = len(chosen)
        plans[i].reason += (f"; {len(chosen)} of {len(parts[i])} kept (--max-tiles {max_tiles} over all frames): "
                            f"a seeded subset stratified by source content")
        parts[i] = [parts[i][k] for k in chosen]
