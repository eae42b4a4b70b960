"""Run parameters, validated: one pydantic model shared by the CLI, the flows (UI forms) and the library.

:class:`RunSettings` is how a run computes; :class:`PipelineParameters` adds what it runs on (inputs) and
where it writes (store). The scheduled inbox flow reuses :class:`RunSettings` rather than re-declaring it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ood_core.io.fits import usable_size

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SHIPPED_MODELS: dict[int, Path] = {1: MODELS_DIR / "mono64", 3: MODELS_DIR / "base64"}
"""The shipped base model for each number of bands: one channel for single-band inputs (``models/mono64``,
collapsed from base64), three for three-band groups (``models/base64``)."""
AUTO_MODEL = "auto"
"""The ``model`` value that picks the shipped model by the number of bands (the default)."""

MIN_USABLE_INPUTS = 3
"""The sampler's acceptance band comes from leave-one-out statistics of the inverted inputs: 3 at least."""
DEFAULT_MAX_BLOCK = 2
"""Block factor per axis above which a frame is tiled at its own pixel scale rather than reduced whole."""
DEFAULT_MAX_TILES = 24
"""Tiles kept by default over all tiled frames: a run on a few full frames stays within minutes on a CPU."""
KEY_FIELDS_AT_DEFAULT_LEFT_OUT = {"max_block": DEFAULT_MAX_BLOCK, "max_tiles": DEFAULT_MAX_TILES}
"""Settings added after runs were keyed: at these defaults the idempotence key leaves them out, so the keys of runs
on inputs that fit the model do not change."""


def shipped_model_path(bands: int = 1) -> str:
    """The shipped base model for inputs of ``bands`` bands (a diffusers pipeline folder in the repository)."""
    if bands not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model reads {bands} bands (shipped: "
                         + ", ".join(f"{n} band(s): {p.name}" for n, p in SHIPPED_MODELS.items())
                         + f"); give a model with {bands} input channels (--model)")
    return str(SHIPPED_MODELS[bands])


def default_model_path() -> str:
    """The shipped base model of single-band inputs (what a run on ordinary FITS images uses)."""
    return shipped_model_path(1)


T0_RANGE = (1, 999)
STEPS_RANGE = (2, 1000)
DEFAULT_T0 = 600
DEFAULT_STEPS = 40
DEFAULT_STRATEGY: Final = "slerp_ood_prior"
DEFAULT_PRIOR: Final = "scalar"
DEFAULT_SLERP_RANGE = (0.3, 0.7)
CALIBRATION_MIN_SHOTS = 6
"""Fewest usable shots for the leave-shots-out calibration (a third held out: 2 at least, 4 kept)."""
DEFAULT_NOISE: Final = "off"
CHOOSABLE = ("t0", "strategy", "prior", "noise")
"""Settings the calibration may choose when the user left them empty."""


def cross_field_rules() -> list[dict[str, Any]]:
    """The model validator's rules in JSON-schema form (draft 2020-12 ``if``/``then``), so that a deployment
    with ``enforce_parameter_schema`` refuses a bad combination when the flow run is created (UI form or API),
    not on the worker. JSON schema cannot compare two fields, so ``steps <= t0`` is one rule per value of t0
    (``if t0 == v then steps <= v``), about 100 kB of schema; jsonschema checks them in well under a second.
    """
    fixed_t0 = {"auto_t0": {"const": False}}  # absent auto_t0 passes too: its default is False
    per_value = [{"if": {"properties": {"t0": {"const": t0}}}, "then": {"properties": {"steps": {"maximum": t0}}}}
                 for t0 in range(T0_RANGE[0], min(T0_RANGE[1] + 1, STEPS_RANGE[1]))]
    rules: list[dict[str, Any]] = [
        {"if": {"properties": fixed_t0, "required": ["t0"]}, "then": {"allOf": per_value}},
        {"if": {"properties": fixed_t0, "not": {"required": ["t0"]}},
         "then": {"properties": {"steps": {"maximum": DEFAULT_T0}}}},
        # a t0 below the default steps needs steps given (the default would exceed it)
        {"if": {"properties": {"t0": {"maximum": DEFAULT_STEPS - 1}, **fixed_t0}, "required": ["t0"]},
         "then": {"required": ["steps"]}},
        {"if": {"properties": {"auto_t0": {"const": True}}, "required": ["auto_t0"]},
         "then": {"properties": {"t0_scan": {"minItems": 1}}}},
    ]
    return rules


def _optional_without_null(schema: dict[str, Any]) -> None:
    """An optional number shown as a plain (empty) number box in the Prefect form, not as "type None":
    drop the ``null`` branch and the ``null`` default. Prefect's validator re-allows null for a property that is
    not required and has no default, and pydantic keeps None as the default."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update(branches[0])
    schema.pop("default", None)


def _run_settings_schema(schema: dict[str, Any]) -> None:
    schema.setdefault("allOf", []).extend(cross_field_rules())


class RunSettings(BaseModel):
    """How a run computes: model, inversion, prior, sampler, normalization and device settings."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_run_settings_schema)

    model: str = Field(default=AUTO_MODEL, min_length=1,
                       description="diffusers model folder or hub id; auto: the shipped model for the number of "
                                   "bands (models/mono64 for single-band inputs, models/base64 for three)")
    samples: int = Field(default=16, ge=1, le=100_000, description="number of accepted samples to generate")
    seed: int = Field(default=0, ge=0, le=2**62, description="seed of the whole run")
    t0: int | None = Field(default=None, ge=T0_RANGE[0], le=T0_RANGE[1], json_schema_extra=_optional_without_null,
                           description=f"inversion bandwidth: timestep of the latents (empty: chosen by the "
                                       f"calibration, else {DEFAULT_T0})")
    auto_t0: bool = Field(default=False, description="scan t0 and pick the largest meeting the PSNR threshold")
    t0_scan: list[int] = Field(default=[300, 450, 600, 750, 900], description="t0 values tried by auto_t0")
    psnr_threshold_db: float = Field(default=30.0, ge=0, le=100, description="auto_t0 reconstruction bar")
    steps: int = Field(default=DEFAULT_STEPS, ge=STEPS_RANGE[0], le=STEPS_RANGE[1],
                       description="DDIM steps K between 0 and t0 (at most t0)")
    eta: float = Field(default=0.0, ge=0.0, le=1.0, description="DDIM noise for generation (0 = deterministic)")
    prior: Literal["scalar", "ppca"] | None = Field(
        default=None, json_schema_extra=_optional_without_null,
        description=f"OOD prior family (empty: chosen by the calibration, else {DEFAULT_PRIOR})")
    strategy: Literal["prior", "slerp_ood_prior", "slerp_ood_ood"] | None = Field(
        default=None, json_schema_extra=_optional_without_null,
        description=f"how candidates are drawn (empty: chosen by the calibration, else {DEFAULT_STRATEGY})",
    )
    noise: Literal["on", "off"] | None = Field(
        default=None, json_schema_extra=_optional_without_null,
        description=f"add background noise matching the inputs' (level and power spectrum) to each sample, in "
                    f"physical units (empty: chosen by the calibration, else {DEFAULT_NOISE})")
    calibrate: bool | None = Field(
        default=None, json_schema_extra=_optional_without_null,
        description=f"leave-shots-out calibration of the settings left empty (t0, strategy, prior, noise) before "
                    f"the run (empty: on with at least {CALIBRATION_MIN_SHOTS} usable shots)",
    )
    candidate_budget: int = Field(default=20_000, ge=1, le=10_000_000, description="max candidates screened")
    reference_count: int = Field(default=16, ge=2, le=4096, description="in-domain reference latents")
    novelty_factor: float = Field(
        default=0.5, ge=0.0, le=10.0,
        description="near-copy if nearest-input distance (up to flips/rotations) < factor x inputs' NN median",
    )
    normalization: Literal["per_run", "per_image"] = Field(default="per_run", description="normalization mode")
    stretch: Literal["asinh", "linear", "sqrt", "log"] = Field(default="asinh", description="intensity stretch")
    resampling: Literal["auto", "sum", "mean"] = Field(
        default="auto",
        description="how input pixel blocks become model pixels: auto (by BUNIT: per-pixel units such as counts, "
                    "ADU or nanomaggies summed, surface brightness such as MJy/sr or Jy/beam averaged, a missing or "
                    "unknown unit averaged), or sum or mean for every input")
    tile: int | None = Field(default=None, ge=8, le=8192, json_schema_extra=_optional_without_null,
                             description="cut inputs into square tiles of this size first (empty: inputs that "
                                         "fit the model within max_block are used whole, larger ones are cut "
                                         "into tiles of the model's size at their own pixel scale)")
    max_block: int = Field(default=DEFAULT_MAX_BLOCK, ge=1, le=1024,
                           description="largest block averaging (or summing) per axis that brings an input or a "
                                       "tile to the model's size; a larger frame is tiled at its own pixel scale "
                                       "instead, and a tile size needing more is refused (raise it, e.g. 16, to "
                                       "reduce whole frames)")
    max_tiles: int = Field(default=DEFAULT_MAX_TILES, ge=MIN_USABLE_INPUTS, le=100_000,
                           description="most tiles kept over all tiled frames, shared evenly between the frames; "
                                       "more are thinned to a seeded subset stratified by source content")
    hdu: int | None = Field(default=None, ge=0, json_schema_extra=_optional_without_null,
                            description="HDU index to read (empty: the first image HDU)")
    batch_size: int | None = Field(
        default=None, ge=1, le=4096, json_schema_extra=_optional_without_null,
        description="images per network evaluation (empty: 16 on the CPU, sized from the free memory on CUDA)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the network runs")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="network dtype (auto: bfloat16 on CUDA, kept only if it reconstructs the inputs within 0.5 dB "
                    "of float32; float32 on the CPU)",
    )
    compile: bool = Field(default=False, description="torch.compile the network (on CUDA; compiling takes ~30 s)")
    shards: int = Field(
        default=1, ge=1, le=4096,
        description="split the sample stage into this many shards (seed ranges), run as tasks on a Dask cluster; "
                    "the samples are the same for any number",
    )
    dask_address: str | None = Field(
        default=None, json_schema_extra=_optional_without_null,
        description="Dask scheduler for the shards (tcp://host:8786, e.g. a dask-cuda cluster with one worker per "
                    "GPU); empty: a local cluster",
    )
    dask_workers: int | None = Field(
        default=None, ge=1, le=1024, json_schema_extra=_optional_without_null,
        description="workers of the local Dask cluster (empty: one per shard)",
    )

    @model_validator(mode="after")
    def _steps_within_t0(self) -> RunSettings:
        t0 = DEFAULT_T0 if self.t0 is None else self.t0
        if self.steps > t0 and not self.auto_t0:
            raise ValueError(f"steps ({self.steps}) must not exceed t0 ({t0}): DDIM takes at most one step "
                             f"per timestep between 0 and t0; lower steps or raise t0")
        if self.auto_t0 and not self.t0_scan:
            raise ValueError("auto_t0 needs a non-empty t0_scan")
        return self

    def given(self) -> set[str]:
        """The choosable settings the user gave (auto_t0 counts as giving t0: its scan chooses it)."""
        given = {name for name in CHOOSABLE if getattr(self, name) is not None}
        return given | ({"t0"} if self.auto_t0 else set())

    def min_input_size(self, resolution: int) -> int:
        """Smallest usable image side: the model resolution, or the tile size when inputs are tiled."""
        return usable_size(resolution, self.tile)


class _RunTarget(BaseModel):
    """What a run reads and where it writes (listed first in forms)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(
        min_length=1, description="FITS files, directories or glob patterns of the few-shot set",
        json_schema_extra={"items": {"type": "string", "pattern": r"\S"}},  # no blank path (as the validator)
    )
    store: str = Field(min_length=1, description="zarr store URL (local path or any fsspec URL)")
    band_groups: list[list[str]] = Field(
        default=[], description="band groups: each the FITS files of one field, one per band (channel order); "
                                "inputs then lists the same files (filled in when left out)",
    )

    @model_validator(mode="before")
    @classmethod
    def _inputs_of_band_groups(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("band_groups") and not data.get("inputs"):
            data = {**data, "inputs": [path for group in data["band_groups"] for path in group]}
        return data

    @model_validator(mode="after")
    def _band_groups_alike(self) -> _RunTarget:
        sizes = {len(group) for group in self.band_groups}
        if self.band_groups and (len(sizes) != 1 or min(sizes) < 2):
            raise ValueError(f"every band group needs the same number of files, at least 2 (one per band); got "
                             f"groups of {sorted(len(g) for g in self.band_groups)} files")
        if self.band_groups and sorted(self.inputs) != sorted(p for g in self.band_groups for p in g):
            raise ValueError("with band groups, inputs must list the groups' files (or be left out)")
        return self

    @field_validator("inputs")
    @classmethod
    def _no_blank_inputs(cls, value: list[str]) -> list[str]:
        if any(not v.strip() for v in value):
            raise ValueError("input paths must not be blank")
        return value


class PipelineParameters(RunSettings, _RunTarget):
    """Everything that determines a pipeline run; stored verbatim in provenance (``model`` resolved: ``auto``
    becomes the shipped model folder for :attr:`band_count`)."""

    model_config = ConfigDict(extra="forbid")

    @property
    def band_count(self) -> int:
        """Bands per input image: 1 for plain FITS images, the group size for band groups."""
        return len(self.band_groups[0]) if self.band_groups else 1

    @model_validator(mode="after")
    def _band_groups_per_run(self) -> PipelineParameters:
        if self.band_groups and self.noise == "on":
            raise ValueError("noise matching (noise on) is for single-band inputs; band groups are not supported yet")
        if self.band_groups and self.normalization != "per_run":
            raise ValueError("band groups are normalized per band over the run (normalization per_run); "
                             "per_image is for single-band inputs")
        return self

    @model_validator(mode="after")
    def _shipped_model_for_bands(self) -> PipelineParameters:
        if self.model.strip() == AUTO_MODEL:
            self.model = shipped_model_path(self.band_count)
        return self

def settled(params: PipelineParameters, provenance: dict[str, Any] | None = None) -> PipelineParameters:
    """The parameters with every choosable setting filled: as given, else as the run recorded it (provenance
    ``settings``: the calibration's choice), else the default."""
    record = (provenance or {}).get("settings")
    chosen = record if isinstance(record, dict) else {}
    defaults = {"t0": DEFAULT_T0, "strategy": DEFAULT_STRATEGY, "prior": DEFAULT_PRIOR, "noise": DEFAULT_NOISE}
    update = {name: chosen.get(name, defaults[name]) for name in CHOOSABLE if getattr(params, name) is None}
    return params.model_copy(update=update) if update else params


def slerp_range_of(provenance: dict[str, Any]) -> tuple[float, float]:
    """The slerp mixing range the run recorded (provenance ``settings``), else the default."""
    record = provenance.get("settings")
    values = record.get("slerp_range") if isinstance(record, dict) else None
    if isinstance(values, (list, tuple)) and len(values) == 2:
        return float(values[0]), float(values[1])
    return DEFAULT_SLERP_RANGE
