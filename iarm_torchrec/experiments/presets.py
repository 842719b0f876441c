"""The paper's studies as lists of training runs.

A study (a *preset*) is a list of :class:`Variant`\\ s, each a model plus the model and
training settings it changes, run once per seed. :func:`expand` turns a preset, the shared base
settings and the seeds into :class:`RunSpec`\\ s, each with its own run folder.

A run folder is keyed by everything that decides the result, not by the preset: two
studies that need the same run (IARM with the default settings is in ``table2``,
``ablation``, ``layers`` and ``attention``) share one folder, so it is trained once, and
a run is done when its ``metrics.json`` exists::

    OUT/runs/<model>-<12 hex digits of the settings' hash>/seed-<seed>/

Example::

    >>> from iarm_torchrec.train.settings import TrainSettings
    >>> runs = expand("ablation", TrainSettings(dataset="synthetic"), seeds=[0, 1], out="study")
    >>> [(r.variant.label, r.seed) for r in runs][:3]
    [('IARM', 0), ('IARM', 1), ('IARM*', 0)]
    >>> runs[2].settings.model_config["use_interest"], runs[2].settings.seed
    (False, 0)
    >>> fm = expand("table2", TrainSettings(), [0], "study")[0].settings
    >>> fm.model, fm.model_config
    ('fm', {'factor_init_scale': 0.01})
    >>> expand("table2", TrainSettings(), [0], "study")[0].run_dir == expand("ablation", TrainSettings(), [0], "study")[0].run_dir
    False
    >>> expand("layers", TrainSettings(), [0], "study")[3].run_dir == expand("ablation", TrainSettings(), [0], "study")[0].run_dir
    True
"""

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from iarm_torchrec.train.settings import TrainSettings

RUNS_DIR = "runs"

ModelConfigs = Dict[str, Dict[str, Any]]
"""``{model name: that model's own settings}``: a study's settings of each model it trains."""

MODEL_LABELS: Dict[str, str] = {
    "fm": "FM",
    "wide_deep": "Wide&Deep",
    "deepfm": "DeepFM",
    "afm": "AFM",
    "dcn": "DCN",
    "nfm": "NFM",
    "pnn": "PNN",
    "autoint": "AutoInt",
    "deep_crossing": "Deep Crossing",
    "iarm": "IARM",
}
"""The models of Table 2, in the paper's row order, with their labels there."""

TABLE2_MODELS: List[str] = list(MODEL_LABELS)

LAYER_COUNTS: List[int] = [0, 1, 2, 3, 4]
"""Fig. 4's x axis: interacting layers."""

TEST_RATIOS: List[float] = [0.2, 0.3]
"""Table 6's columns: the share of rows held out for testing."""

_NOT_IN_KEY = ("out", "seed", "resume", "device", "cache_dir", "checkpoint_every")
"""Settings that do not change a run's result (where it is written, how it is resumed) or
that are keyed separately (the seed)."""
_KEYED_WHEN_CHANGED = {"embedding_precision": "fp32"}
"""Settings added after runs were first keyed, with the default they had before: they enter
the key only when changed, so the folders of runs trained before them are still found."""


@dataclass(frozen=True)
class Variant:
    """One row of a study: a model and the settings it changes.

    Args:
        label: the row's name in the report (the paper's name where it has one).
        model: a registered model name.
        model_config: the model's own settings set for this row (IARM's ablation switches).
        overrides: :class:`TrainSettings` fields set for this row only.
        group: the column or series this row belongs to (Table 6's test ratio), if any.
    """

    label: str
    model: str
    model_config: Dict[str, Any] = field(default_factory=dict)
    overrides: Dict[str, Any] = field(default_factory=dict)
    group: Optional[str] = None

    def settings(
        self,
        base: TrainSettings,
        seed: int,
        model_configs: Optional[ModelConfigs] = None,
        training: Optional[ModelConfigs] = None,
    ) -> TrainSettings:
        """``base`` with this variant's model, settings and ``seed`` (validated anew). The model
        starts from ``model_configs[model]`` (the study's settings of that model), else from
        ``base.model_config`` when ``base`` is of the same model, else from its defaults;
        ``training[model]`` (tuned learning rates...) replaces base training settings."""
        given = (model_configs or {}).get(self.model)
        start = given if given is not None else base.model_config if base.model == self.model else {}
        changes = {**(training or {}).get(self.model, {}), **self.overrides}
        return base.with_model(self.model, {**start, **self.model_config}, seed=seed, **changes)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: a variant at one seed, in its own folder."""

    preset: str
    variant: Variant
    seed: int
    settings: TrainSettings
    run_dir: Path


def _table2(models: Sequence[str]) -> List[Variant]:
    return [Variant(MODEL_LABELS.get(m, m), m) for m in models]


def _ablation(models: Sequence[str]) -> List[Variant]:
    return [
        Variant("IARM", "iarm"),
        Variant("IARM*", "iarm", {"use_interest": False}),
        Variant("IRM", "iarm", {"use_attention": False}),
        Variant("IARM-", "iarm", {"use_residual": False}),
    ]


def _layers(models: Sequence[str]) -> List[Variant]:
    return [Variant(f"{n} layers", "iarm", {"num_layers": n}, group=str(n)) for n in LAYER_COUNTS]


def _split(models: Sequence[str]) -> List[Variant]:
    return [
        Variant(MODEL_LABELS.get(m, m), m, overrides={"test_ratio": ratio}, group=str(ratio))
        for ratio in TEST_RATIOS
        for m in models
    ]


def _attention(models: Sequence[str]) -> List[Variant]:
    return [Variant("IARM", "iarm")]


TOWER = [400, 400, 400]
"""The product and IARM+ towers of the variants preset: PNN's and the deep baselines' default."""


def _variants(models: Sequence[str]) -> List[Variant]:
    return [
        Variant("IARM", "iarm"),
        Variant("IARM + products", "iarm", {"product": "inner", "product_layer_sizes": TOWER}),
        Variant("IARM+ (deep tower)", "iarm", {"deep_layer_sizes": TOWER}),
        Variant("IARM + products + deep", "iarm", {"product": "inner", "product_layer_sizes": TOWER, "deep_layer_sizes": TOWER}),
        Variant("IARM, layer norm", "iarm", {"attention_layer_norm": True}),
        Variant("IARM + cross", "iarm", {"num_cross_layers": 1}),
        Variant("IARM+ + cross (deep tower and cross)", "iarm", {"deep_layer_sizes": TOWER, "num_cross_layers": 1}),
        *[Variant(MODEL_LABELS.get(m, m), m) for m in models if m != "iarm"],
    ]


PRESETS = {
    "table2": _table2,
    "ablation": _ablation,
    "layers": _layers,
    "split": _split,
    "attention": _attention,
    "variants": _variants,
}
"""Preset name -> the variants of that study (given the models to compare, where it compares models)."""


def settings_key(settings: TrainSettings) -> Dict[str, Any]:
    """What a run's result depends on, besides its seed: every setting but where it is written."""
    key = {
        k: v
        for k, v in settings.to_dict().items()
        if k not in _NOT_IN_KEY and not (k in _KEYED_WHEN_CHANGED and v == _KEYED_WHEN_CHANGED[k])
    }
    if key.get("data_dir"):
        key["data_dir"] = str(Path(key["data_dir"]).resolve())
    return key


def run_dir(out: "Path | str", settings: TrainSettings) -> Path:
    """``out/runs/<model>-<hash>/seed-<seed>``: one folder per distinct run."""
    digest = hashlib.sha1(json.dumps(settings_key(settings), sort_keys=True).encode()).hexdigest()[:12]
    return Path(out) / RUNS_DIR / f"{settings.model}-{digest}" / f"seed-{settings.seed}"


def expand(
    preset: str,
    base: TrainSettings,
    seeds: Sequence[int],
    out: "Path | str",
    models: Optional[Sequence[str]] = None,
    model_configs: Optional[ModelConfigs] = None,
    training: Optional[ModelConfigs] = None,
) -> List[RunSpec]:
    """The runs of ``preset``: each variant at each seed, over ``base`` settings.

    Args:
        preset: a key of :data:`PRESETS`.
        base: the settings every run shares (dataset, budget, model sizes).
        seeds: at least one seed; each variant runs once per seed.
        out: the study folder; runs go under ``out/runs``.
        models: the models compared by ``table2``, ``split`` and ``variants`` (default: all of Table 2).
        model_configs: ``{model: its settings}`` for the models of the study (see
            :meth:`Variant.settings`).
        training: ``{model: training settings}`` that replace ``base``'s for that model's runs
            (a tuned model's learning rates, weight decay, ...).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if not seeds:
        raise ValueError("give at least one seed, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    runs = []
    for variant in PRESETS[preset](list(models or TABLE2_MODELS)):
        for seed in seeds:
            settings = variant.settings(base, seed, model_configs, training)
            folder = run_dir(out, settings)
            runs.append(RunSpec(preset, variant, seed, replace(settings, out=str(folder)), folder))
    return runs
