"""Baselines through the shipped frozen model: in-domain sampling, unscreened prior, augmentation, fine-tune (on
the project's own skies, written as FITS and read back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from made_fits import write_skies

from ood_core.errors import ConfigurationError
from ood_core.evaluation import baselines as bl
from ood_core.evaluation.metrics import isotropic_power_spectrum, wasserstein_1
from ood_core.io.fits import read_fits_batch
from ood_core.method import ddim
from ood_core.method.model import FrozenDiffusionModel
from ood_core.method.normalization import prepare_batch
from ood_core.method.prior import fit_prior
from ood_core.method.sampler import candidate_seed


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """One torch thread: the 2-core test machine is shared, and oversubscription is several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, shipped_model: FrozenDiffusionModel) -> torch.Tensor:
    paths = write_skies(tmp_path_factory.mktemp("skies"), 4)
    images, bad = read_fits_batch(paths)
    assert not bad
    batch = prepare_batch(images, resolution=shipped_model.resolution, channels=shipped_model.channels)
    return torch.from_numpy(batch.images)


def test_check_baselines() -> None:
    assert bl.check_baselines(["finetune", "in_domain", "finetune"]) == ["finetune", "in_domain"]
    with pytest.raises(ConfigurationError, match="choose from"):
        bl.check_baselines(["gan"])


def test_dihedral_group() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    outs = [bl.dihedral(x, k) for k in range(8)]
    assert torch.equal(outs[0], x)
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8, "the 8 symmetries are distinct"
    assert torch.equal(bl.dihedral(bl.dihedral(x, 1), 3), x)
    with pytest.raises(ConfigurationError):
        bl.dihedral(x, 8)


def test_augmentation_draws_distinct_non_identity_transforms(inputs: torch.Tensor) -> None:
    images, parents, transforms = bl.augmentation_samples(inputs, 12, seed=5)
    assert images.shape == (12, *inputs.shape[1:])
    assert transforms.min() >= 1 and transforms.max() <= 7
    assert len({(int(p), int(t)) for p, t in zip(parents, transforms, strict=True)}) == 12
    for image, p, t in zip(images, parents, transforms, strict=True):
        assert torch.equal(image, bl.dihedral(inputs[int(p)][None], int(t))[0])
    again, _, _ = bl.augmentation_samples(inputs, 12, seed=5)
    assert torch.equal(images, again)
    # Beyond the 7 x N distinct pairs it repeats rather than fails.
    assert bl.augmentation_samples(inputs, 7 * 4 + 3)[0].shape[0] == 31


def test_augmentation_keeps_pixel_distribution_and_isotropic_spectrum(inputs: torch.Tensor) -> None:
    band = inputs.mean(dim=1).numpy()
    for k in range(8):
        moved = bl.dihedral(inputs, k).mean(dim=1).numpy()
        assert wasserstein_1(moved, band) == 0.0
        np.testing.assert_allclose(isotropic_power_spectrum(moved).power, isotropic_power_spectrum(band).power,
                                   rtol=1e-9)


def test_in_domain_samples_are_deterministic_images(shipped_model: FrozenDiffusionModel) -> None:
    a = bl.in_domain_samples(shipped_model, 2, 5, seed=11)
    b = bl.in_domain_samples(shipped_model, 2, 5, seed=11)
    assert a.shape == (2, shipped_model.channels, shipped_model.resolution, shipped_model.resolution)
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, bl.in_domain_samples(shipped_model, 2, 5, seed=12))


def test_unscreened_prior_samples_follow_the_prior(shipped_model: FrozenDiffusionModel, inputs: torch.Tensor) -> None:
    grid = ddim.timestep_grid(400, 5, shipped_model.num_train_timesteps)
    latents = ddim.ddim_invert(shipped_model, inputs, grid)
    a = bl.unscreened_prior_samples(shipped_model, latents, grid, 2, seed=2)
    assert a.shape == (2, *inputs.shape[1:])
    assert torch.equal(a, bl.unscreened_prior_samples(shipped_model, latents, grid, 2, seed=2))
    ppca = bl.unscreened_prior_samples(shipped_model, latents, grid, 2, seed=2, prior_kind="ppca")
    assert not torch.equal(a, ppca)
    # The draws are exactly the prior's draws for the candidate seeds, denoised on the run's grid.
    prior = fit_prior(latents.reshape(4, -1), "scalar")
    seeds = [candidate_seed(2, i) for i in range(2)]
    expected = ddim.ddim_generate(shipped_model, prior.sample_with_seeds(seeds).reshape(a.shape).float(), grid)
    assert torch.equal(a, expected)


def test_finetune_changes_a_copy_only_and_is_deterministic(
    shipped_model: FrozenDiffusionModel, inputs: torch.Tensor
) -> None:
    before = {k: v.clone() for k, v in shipped_model.unet.state_dict().items()}
    config = bl.FinetuneConfig(steps=3, batch_size=2, learning_rate=5e-4, seed=1)
    tuned, report = bl.finetune_model(shipped_model, inputs, config)
    after = shipped_model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the frozen model must stay untouched"
    assert not all(p.requires_grad for p in shipped_model.unet.parameters())
    changed = [k for k, v in tuned.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "fine-tuning changed no weight"
    assert len(report.losses) == 3 and all(np.isfinite(report.losses))
    assert tuned.weights_sha256.startswith("finetuned-from:")
    summary = report.to_dict()
    assert summary["steps"] == 3 and summary["seconds"] > 0
    # Same seed, same result: the fine-tune is deterministic.
    tuned2, report2 = bl.finetune_model(shipped_model, inputs, config)
    assert report2.losses == report.losses
    samples = bl.in_domain_samples(tuned, 1, 3, seed=0)
    assert torch.equal(samples, bl.in_domain_samples(tuned2, 1, 3, seed=0))
    assert not torch.equal(samples, bl.in_domain_samples(shipped_model, 1, 3, seed=0))


def test_finetune_bounds() -> None:
    with pytest.raises(ConfigurationError, match="finetune steps"):
        bl.FinetuneConfig(steps=bl.MAX_FINETUNE_STEPS + 1)
    with pytest.raises(ConfigurationError):
        bl.FinetuneConfig(steps=0)
    with pytest.raises(ConfigurationError):
        bl.FinetuneConfig(batch_size=0)


def test_registry_has_every_baseline_and_draws_what_the_functions_draw(
    shipped_model: FrozenDiffusionModel, inputs: torch.Tensor
) -> None:
    assert tuple(bl.REGISTRY) == bl.BASELINE_NAMES
    grid = ddim.timestep_grid(400, 4, shipped_model.num_train_timesteps)
    latents = ddim.ddim_invert(shipped_model, inputs, grid)
    ctx = bl.BaselineContext(shipped_model, inputs, latents, grid, steps=3, seed=4, finetune_steps=1,
                             finetune_batch_size=2)
    augmented = bl.draw_baseline("augmentation", ctx, 3)
    images, parents, transforms = bl.augmentation_samples(inputs, 3, seed=4)
    assert torch.equal(augmented.images, images) and augmented.parents is not None
    assert augmented.parents.tolist() == parents.tolist()
    assert augmented.info["transform_index"] == transforms.tolist()
    in_domain = bl.draw_baseline("in_domain", ctx, 2)
    assert torch.equal(in_domain.images, bl.in_domain_samples(shipped_model, 2, 3, seed=4))
    assert in_domain.parents is None and in_domain.info == {"noise": "N(0, I) at the last timestep", "steps": 3,
                                                            "seed": 4}
    prior = bl.draw_baseline("prior_unscreened", ctx, 2)
    assert torch.equal(prior.images, bl.unscreened_prior_samples(shipped_model, latents, grid, 2, seed=4))
    assert prior.info["t0"] == 400 and prior.info["steps"] == 4
    tuned = bl.draw_baseline("finetune", ctx, 1)
    assert tuned.images.shape == (1, *inputs.shape[1:]) and tuned.info["steps"] == 1
    assert tuned.info["sample_steps"] == 3
    with pytest.raises(ConfigurationError, match="choose from"):
        bl.draw_baseline("gan", ctx, 1)
