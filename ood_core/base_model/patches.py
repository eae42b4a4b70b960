"""Training patches of the base model: random square crops at random scales with flips, in [-1, 1] (N, C, R, R).

Two samplers draw the same distribution: a crop side ``round(R * s)`` pixels with the scale ``s`` log-uniform
in [1, max_scale] (bounded by the image), an integer position uniform over the image, an area resize to R x R,
and a horizontal and a vertical flip, each with probability 1/2.

- :class:`PatchSampler` ("loop"): one image at a time in Python, on the CPU. The shipped ``models/base64`` was
  trained with it, and a CPU run keeps using it so that its checkpoints resume bit for bit.
- :class:`BatchedPatchSampler` ("batched"): the images are uploaded once, as integral images (summed-area
  tables, float64) padded into one tensor; a whole batch of crops, resizes and flips is one ``F.affine_grid``
  plus one ``F.grid_sample`` call on the device. Sampling the integral image at the (R+1) x (R+1) pixel
  corners of a crop and differencing gives the exact mean of the image over every output pixel's footprint,
  i.e. the area resize, for any scale; a flip is a negative scale in the affine map.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ood_core.errors import ConfigurationError

SAMPLERS = ("loop", "batched")


class PatchSampler:
    """Random square patches at random scales with horizontal/vertical flips, in [-1, 1] (N, C, R, R)."""

    def __init__(self, images: dict[str, npt.NDArray[np.float32]], resolution: int, max_scale: float = 4.0):
        self.images = [torch.from_numpy(img).permute(2, 0, 1).contiguous() for img in images.values()]
        self.resolution = resolution
        self.max_scale = max_scale

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        res = self.resolution
        out = torch.empty(batch_size, self.images[0].shape[0], res, res)
        picks = torch.randint(len(self.images), (batch_size,), generator=generator)
        for i in range(batch_size):
            image = self.images[int(picks[i])]
            height, width = image.shape[1:]
            max_scale = min(self.max_scale, height / res, width / res)
            # Log-uniform scale: crop side = res * scale, then area-resize to res.
            scale = math.exp(float(torch.rand((), generator=generator)) * math.log(max(max_scale, 1.0)))
            side = max(res, min(round(res * scale), height, width))
            y = int(torch.randint(height - side + 1, (), generator=generator))
            x = int(torch.randint(width - side + 1, (), generator=generator))
            patch = image[:, y : y + side, x : x + side]
            if side != res:
                patch = F.interpolate(patch[None], size=(res, res), mode="area")[0]
            if bool(torch.rand((), generator=generator) < 0.5):
                patch = patch.flip(2)
            if bool(torch.rand((), generator=generator) < 0.5):
                patch = patch.flip(1)
            out[i] = patch
        return out * 2.0 - 1.0


class BatchedPatchSampler:
    """The patches of :class:`PatchSampler`, a whole batch at once on ``device`` (no per-image Python loop).

    ``sample`` never waits for the device: every random draw comes from ``generator``, which must live on the
    sampler's device, and the result stays there (float32).
    """

    def __init__(
        self,
        images: dict[str, npt.NDArray[np.float32]],
        resolution: int,
        max_scale: float = 4.0,
        device: torch.device | str = "cpu",
    ):
        small = [f"{name} ({a.shape[0]}x{a.shape[1]})" for name, a in images.items() if min(a.shape[:2]) < resolution]
        if not images or small:
            raise ConfigurationError(f"patch sampler: every image must be at least {resolution} px on a side; "
                                     f"too small: {', '.join(small) or 'no images at all'}")
        self.resolution = resolution
        self.max_scale = max_scale
        self.device = torch.device(device)
        height = max(a.shape[0] for a in images.values())
        width = max(a.shape[1] for a in images.values())
        # Integral image k of the zero-padded image: sum over [0, y) x [0, x) at [:, k, y, x], exact in float64.
        channels = next(iter(images.values())).shape[2]
        sat = torch.zeros(channels, len(images), height + 1, width + 1, dtype=torch.float64)
        for k, image in enumerate(images.values()):
            pixels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64)).permute(2, 0, 1)
            sat[:, k, 1 : image.shape[0] + 1, 1 : image.shape[1] + 1] = pixels
        self.strides = ((height + 1) * (width + 1), width + 1)
        # One row of C channels per (image, y, x): a gather fetches a pixel corner's channels together.
        self.integral = sat.cumsum(2).cumsum(3).reshape(channels, -1).t().contiguous().to(self.device)
        self.sizes = torch.tensor([a.shape[:2] for a in images.values()], dtype=torch.float64, device=self.device)

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        res, dev, f64 = self.resolution, self.device, torch.float64
        picks = torch.randint(len(self.sizes), (batch_size,), generator=generator, device=dev)
        height, width = self.sizes[picks].unbind(1)
        shorter = torch.minimum(height, width)
        max_scale = (shorter / res).clamp(max=self.max_scale).clamp(min=1.0)
        scale = torch.exp(torch.rand(batch_size, generator=generator, device=dev, dtype=f64) * max_scale.log())
        side = torch.minimum(torch.round(res * scale), shorter).clamp(min=res)
        corner = torch.rand(batch_size, 2, generator=generator, device=dev, dtype=f64)
        y0 = torch.floor(corner[:, 0] * (height - side + 1))
        x0 = torch.floor(corner[:, 1] * (width - side + 1))
        flips = torch.rand(batch_size, 2, generator=generator, device=dev) < 0.5  # (horizontal, vertical)
        return self.crop(picks, y0, x0, side, flips)

    def _edges(self, origin: torch.Tensor, side: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """First and one-past-last pixel of every output pixel's bin along one axis (N, R), as area resize
        (adaptive average pooling) bins them: [floor(i side / R), ceil((i + 1) side / R)); reversed if flipped."""
        index = torch.arange(self.resolution + 1, device=self.device, dtype=torch.float64)
        bounds = index * side[:, None]  # exact integers
        start = torch.floor(bounds[:, :-1] / self.resolution)
        end = torch.ceil(bounds[:, 1:] / self.resolution)
        start, end = (torch.where(flip[:, None], edge.flip(1), edge) for edge in (start, end))
        return (origin[:, None] + start).long(), (origin[:, None] + end).long(), end - start

    def crop(self, picks: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, side: torch.Tensor,
             flips: torch.Tensor) -> torch.Tensor:
        """Crops ``[y0, y0 + side) x [x0, x0 + side)`` of images ``picks``, area-resized to R x R and flipped
        where ``flips`` (N, 2: horizontal, vertical) says, in [-1, 1]: four gathers from the integral images."""
        side = side.to(torch.float64)
        top, bottom, rows = self._edges(y0, side, flips[:, 1])
        left, right, cols = self._edges(x0, side, flips[:, 0])
        image = picks.long()[:, None, None] * self.strides[0]
        corners = torch.stack([image + y[:, :, None] * self.strides[1] + x[:, None, :]
                               for y in (bottom, top) for x in (right, left)])  # (4, N, R, R)
        s = torch.index_select(self.integral, 0, corners.reshape(-1)).view(*corners.shape, -1)  # (4, N, R, R, C)
        box = (s[0] - s[1]).sub_(s[2]).add_(s[3]).permute(0, 3, 1, 2)  # exact sums: float64 until here
        patches = (box / (rows[:, None, :, None] * cols[:, None, None, :])).to(torch.float32)
        return patches.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0).contiguous()
