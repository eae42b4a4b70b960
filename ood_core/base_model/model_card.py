"""Model card of the shipped base model: measured quality written next to the weights.

The card records what the model was trained on and for how long, its loss curve, a grid of its own
DDIM samples from N(0, I) (which should look like the training domain: natural-image patches) and
how well it reconstructs real, out-of-domain FITS cutouts after DDIM inversion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ood_core.io.fits import read_fits_batch
from ood_core.method import ddim
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.normalization import prepare_batch


@dataclass
class ReconstructionRow:
    source: str
    t0: int
    steps: int
    n_images: int
    median_psnr_db: float
    min_psnr_db: float


def sample_grid_png(
    model: FrozenDiffusionModel, path: Path, *, count: int = 16, steps: int = 50, seed: int = 0
) -> Path:
    """DDIM samples from N(0, I) over the full schedule, shown as an RGB grid (grey for a one-channel model)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count, model.channels, model.resolution, model.resolution), generator=generator)
    grid = ddim.timestep_grid(model.num_train_timesteps - 1, steps, model.num_train_timesteps)
    images = ddim.ddim_generate(model, noise, grid, batch_size=16)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows))
    for ax, image in zip(np.ravel(axes), images, strict=False):
        pixels = ((image.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
        if pixels.shape[-1] == 1:
            ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(pixels)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle(f"DDIM samples from N(0, I), {steps} steps, seed {seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_curve_png(training_log: dict[str, Any], path: Path) -> Path:
    losses = training_log["loss_per_checkpoint"]
    every = training_log["checkpoint_every"]
    steps = [every * (i + 1) for i in range(len(losses))]
    steps[-1] = training_log["steps"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, losses, marker=".")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"noise MSE (mean over {every} steps)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


DEV_SOURCES = ("glimpse", "horsehead", "gc2massK", "bolocam", "hcg88r", "m17Ks")
"""File-name prefixes of the dev set's cutouts_128 (docs/DESIGN.md "Dev data"): its six few-shot sources."""


def reconstruction_table(
    model: FrozenDiffusionModel,
    cutout_dir: Path,
    *,
    sources: Sequence[str] = DEV_SOURCES,
    per_source: int = 4,
    settings: Sequence[tuple[int, int]] = ((600, 40),),
) -> list[ReconstructionRow]:
    """Median round-trip PSNR of real FITS cutouts (never seen in training), per source and (t0, K)."""
    rows: list[ReconstructionRow] = []
    for source in sources:
        files = sorted(cutout_dir.glob(f"{source}_*.fits"))[:per_source]
        images, _ = read_fits_batch(files)
        if not images:
            continue
        batch = prepare_batch(images, resolution=model.resolution, channels=model.channels)
        x = torch.from_numpy(batch.images)
        for t0, steps in settings:
            result = ddim.invert_and_reconstruct(model, x, t0, steps)
            summary = result.summary()
            rows.append(ReconstructionRow(source, t0, steps, len(images), round(summary["median_psnr_db"], 2),
                                          round(summary["min_psnr_db"], 2)))
    return rows


_SAMPLER_NAMES = {"loop": "per-image patch loop (PatchSampler)", "batched": "batched patch sampler"}


def training_history(log: dict[str, Any]) -> list[dict[str, Any]]:
    """Which steps ran on which device, precision and patch sampler; a log without a history is from the time
    when training ran only on the CPU in float32 with the per-image loop (like the shipped base64)."""
    history = log.get("history")
    if history:
        return list(history)
    return [{"start": 0, "end": log["steps"], "device": "cpu", "device_name": "cpu", "dtype": "float32",
             "sampler": "loop"}]


def describe_history(history: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"steps {h['start']}-{h['end']} on {h['device_name'] if h['device'] == 'cuda' else 'the CPU'} "
        f"({h['dtype']}, {_SAMPLER_NAMES.get(h['sampler'], h['sampler'])})"
        for h in history
    )


def describe_data(log: dict[str, Any]) -> str:
    """The card's data line: the named image sets with their licences (older logs: base64's photographs)."""
    data = log["data"]
    excluded = ", ".join(data["excluded_astronomical"])
    if "sets" not in data:  # base64's log: the 13 photographs only
        return (f"random square patches (log-uniform scale 1x to 4x, area resize, random flips) of the photographs "
                f"bundled with scikit-image ({', '.join(data['skimage'])}) and scikit-learn "
                f"({', '.join(data['sklearn'])}); excluded on purpose: {excluded}")
    grey = " turned to luminance (one channel)" if data["channels"] == 1 else ""
    image_sets = [name for name in data["sets"] if name != "sky-sim"]
    sets = "; ".join(f"**{name}** ({data['licences'][name]})" for name in image_sets)
    patches = (f"random square patches (log-uniform scale 1x to 4x, area resize, random flips){grey} of "
               f"{len(data['images'])} images: {sets}. Images: {', '.join(data['images'])}. ") if image_sets else ""
    simulated = data.get("simulated_skies")
    if simulated is None:
        return f"{patches}Excluded on purpose: {excluded}"
    library = simulated["library"]
    share = simulated["natural_share"]
    return (f"**sky-sim** ({data['licences']['sky-sim']}): a new simulated sky for every training image "
            f"({1 - share:.0%} of each batch), composed on the training device (`ood_core.base_model.sky_scenes`) from "
            f"a GalSim library (digest {library['digest']}) of {sum(library['psf_kinds'].values())} PSFs "
            f"({_counts(library['psf_kinds'])}) and {sum(library['galaxy_kinds'].values())} galaxies "
            f"({_counts(library['galaxy_kinds'])}); then {share:.0%} of each batch: {patches or 'none. '}"
            f"No real survey image entered training; excluded on purpose: {excluded} and every FITS file of "
            f"the dev set (docs/DESIGN.md section 9)")


def _counts(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in kinds.items())


def describe_domain(log: dict[str, Any]) -> str:
    """The card's first paragraph: which domain the frozen model learned, and why FITS skies stay unseen."""
    if "simulated_skies" in log.get("data", {}):
        return ("Its domain is **simulated skies** (GalSim stamps composed into scenes of stars, galaxies, diffuse "
                "emission and noise, normalized as the pipeline maps a FITS image), with a minority of photographs. "
                "No real survey image entered training, so every real domain a user brings, and every dev source, "
                "is still unseen: the method bridges the gap from simulation to real data.")
    return ("Its domain is everyday photographs, deliberately **not** astronomy: FITS skies are out of domain for "
            "it, as the method requires.")


def describe_start(log: dict[str, Any]) -> str:
    """Where the weights started: random, or a model folder (``--init-from``)."""
    start = (log.get("data") or {}).get("initialized_from")
    return f"from the weights of `{start}` (`--init-from`)" if start else "from a random initialization"


def summarize_reconstruction(rows: Sequence[ReconstructionRow]) -> dict[str, Any]:
    """The median over sources of the per-source median PSNR, per (t0, K) setting, and the headline figure: that of
    the card's default setting (t0 600, K 40) when measured, else of the first setting."""
    settings = list(dict.fromkeys((r.t0, r.steps) for r in rows))
    by_setting = {f"t0={t0},K={k}": float(np.median([r.median_psnr_db for r in rows if (r.t0, r.steps) == (t0, k)]))
                  for t0, k in settings}
    headline = (600, 40) if (600, 40) in settings else (settings[0] if settings else None)
    return {"median_of_source_medians_psnr_db": by_setting[f"t0={headline[0]},K={headline[1]}"] if headline else None,
            "median_of_source_medians_by_setting": by_setting}


def write_model_card(
    model: FrozenDiffusionModel, model_dir: Path, cutout_dir: Path, *, where_trained: str | None = None,
    settings: Sequence[tuple[int, int]] = ((600, 40),), title: str = "natural-image DDPM",
    sources: Sequence[str] = DEV_SOURCES,
) -> dict[str, Any]:
    """Write README.md, samples.png, loss.png and card.json into the model folder.

    ``where_trained`` describes the hardware (default: the devices of the log's training history); ``sources`` the
    file-name prefixes in ``cutout_dir`` whose reconstruction the card measures (default: the dev set's six)."""
    log = json.loads((model_dir / "training_log.json").read_text())
    history = training_history(log)
    if where_trained is None:
        where_trained = ", ".join(sorted({"CPU" if h["device"] == "cpu" else h["device_name"] for h in history}))
    sample_grid_png(model, model_dir / "samples.png")
    loss_curve_png(log, model_dir / "loss.png")
    rows = reconstruction_table(model, cutout_dir, settings=settings, sources=sources)
    card = {
        "weights_sha256": model.weights_sha256,
        "parameters": model.provenance()["parameters"],
        "steps": log["steps"],
        "batch_size": log["batch_size"],
        "train_seconds": log["train_seconds"],
        "where_trained": where_trained,
        "history": history,
        "final_loss": log["loss_per_checkpoint"][-1],
        "reconstruction": [r.__dict__ for r in rows],
        **summarize_reconstruction(rows),
    }
    (model_dir / "card.json").write_text(json.dumps(card, indent=2))
    table = "\n".join(
        f"| {r.source} | {r.t0} | {r.steps} | {r.n_images} | {r.median_psnr_db:.2f} | {r.min_psnr_db:.2f} |"
        for r in rows
    )
    cfg = log["config"]
    losses = log["loss_per_checkpoint"]
    text = f"""# Base model: {title}, {model.channels}x{model.resolution}x{model.resolution}

A small diffusers `UNet2DModel` trained by this project (`ood train-base`) so that the pipeline has a
frozen diffusion model to invert into with nothing downloaded. {describe_domain(log)}

- **Weights**: `unet/diffusion_pytorch_model.safetensors` (EMA weights), sha256 `{model.weights_sha256}`
- **Architecture**: UNet2DModel, block widths {cfg["block_out_channels"]}, {cfg["layers_per_block"]} layer(s) per
  block, self-attention at level(s) {cfg["attention_levels"]}, {card["parameters"]:,} parameters
- **Schedule**: DDPM, {cfg["num_train_timesteps"]} steps, linear betas {cfg["beta_start"]}..{cfg["beta_end"]},
  epsilon prediction (`scheduler/scheduler_config.json`)
- **Data**: {describe_data(log)}
- **Training**: {describe_start(log)}, {log["steps"]} steps of batch {log["batch_size"]}, AdamW lr
  {cfg["learning_rate"]} with {cfg["warmup_steps"]} warm-up steps, EMA (max decay {cfg["ema_max_decay"]}),
  {where_trained},
  {log["train_seconds"] / 60:.0f} minutes of training time. Loss (noise MSE) from {losses[0]:.4f} to {losses[-1]:.4f}.
- **Where the steps ran**: {describe_history(history)}

![loss curve](loss.png)

## Its own samples (DDIM, 50 steps from N(0, I))

![samples](samples.png)

## Reconstruction of real, out-of-domain FITS cutouts

128x128 cutouts from `cutouts_128` of the real FITS dev set (astropy-data, listed with sources and licences
in its MANIFEST.csv: docs/DESIGN.md section 9), normalized per source (asinh), block-averaged
to {model.resolution}x{model.resolution}, inverted with deterministic DDIM to t0 and generated back (eta = 0).
PSNR in model space ([-1, 1], data range 2).

| source | t0 | K | images | median PSNR (dB) | min PSNR (dB) |
|---|---|---|---|---|---|
{table}

Reproduce: `.venv/bin/python -m ood_core.base_model.model_card models/{model_dir.name}
$OOD_DEV_DATA/cutouts_128` (the dev set: docs/DESIGN.md section 9).
"""
    (model_dir / "README.md").write_text(text)
    return card


def main() -> None:
    import argparse

    from ood_core.method.model import load_model

    parser = argparse.ArgumentParser(description="Regenerate the model card of a base model folder")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("cutout_dir", type=Path)
    parser.add_argument("--where", default="CPU (2 cores), in the background beside development work")
    parser.add_argument("--history", default="", help="how the training went, if not in one go (for the card)")
    parser.add_argument("--title", default="natural-image DDPM", help="what the model is, for the card's title")
    args = parser.parse_args()
    model = load_model(args.model_dir, device="auto")
    where = f"{args.where}; {args.history}" if args.history else args.where
    card = write_model_card(model, args.model_dir, args.cutout_dir, where_trained=where, title=args.title,
                            settings=((300, 40), (600, 20), (600, 40), (900, 40)))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
