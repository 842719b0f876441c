"""``iarm experiment``: the paper's studies, run, summarised, reported and plotted by one command.

::

    iarm experiment --preset table2,ablation,layers,attention --dataset movielens-1m \\
        --data-dir ../shared/data/movielens-1m --field-set paper --out runs/paper-ml1m --seeds 0,1,2 --epochs 1

Every run of the requested presets is trained (runs shared by presets once; finished runs
reused, so repeating the command resumes an interrupted study), then each preset's report
is written to ``OUT/<preset>.md``, all reports so far to ``OUT/report.md``, and the plots to
``OUT/plots/<dataset>-*.png``. The report holds the exact command, seeds, budget, versions
and machine. Settings not given as flags come from ``--config`` (an ``iarm train`` settings
JSON file) or the trainer's defaults.
"""

import argparse
import json
import logging
import os
import platform
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from iarm_torchrec.experiments.attention import pair_scores, ranked_pairs, run_attention
from iarm_torchrec.experiments.plots import plot_heatmap, plot_layers
from iarm_torchrec.experiments.presets import PRESETS, TABLE2_MODELS, RunSpec, expand
from iarm_torchrec.experiments.report import render_attention_pairs, render_report
from iarm_torchrec.experiments.results import load_metrics, summarize
from iarm_torchrec.experiments.runner import TrainFn, run_all, run_seconds
from iarm_torchrec.experiments.presets import ModelConfigs
from iarm_torchrec.experiments.tune import TUNED_TRAINING
from iarm_torchrec.models.registry import check_model_settings
from iarm_torchrec.provenance import cpu_name, describe
from iarm_torchrec.train.settings import DATASETS, DEVICES, MONITORS, NUMERIC_TRANSFORMS, TrainSettings, parse_model_config
from iarm_torchrec.train.trainer import setup_logging

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
REPORT_FILE = "report.md"
MIN_SEEDS = 3
VERSIONED = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu")
"""The libraries whose versions a report names (with Python and this package's commit)."""
_BUDGET = ("epochs", "batch_size", "max_steps_per_epoch", "lr", "sparse_optimizer", "sparse_lr", "embedding_dim",
           "early_stopping_patience")


def _names(text: str, allowed: Sequence[str], what: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return names


def _seeds(text: str) -> List[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are comma-separated integers such as 0,1,2, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``iarm experiment`` flags."""
    presets = list(PRESETS)
    parser.add_argument("--preset", required=True, type=lambda t: _names(t, presets, "preset"),
                        help=f"one or more of {','.join(presets)} (comma-separated)")
    parser.add_argument("--dataset", choices=DATASETS, help="(default: --config's, else synthetic)")
    parser.add_argument("--data-dir", help="the raw data's file or folder (synthetic: where it is generated)")
    parser.add_argument("--cache-dir", help="preprocessed-data cache (default <data-dir>/.iarm-cache)")
    parser.add_argument("--schema", help="tabular: the schema file describing the table")
    parser.add_argument("--out", required=True, help="the study folder: runs/, reports, plots/")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
    parser.add_argument("--models", type=lambda t: _names(t, TABLE2_MODELS, "model"),
                        help="the models of table2/split (default: all ten of Table 2)")
    parser.add_argument("--config", help="an iarm train settings JSON file for everything not given here")
    g = parser.add_argument_group("budget and data (the same for every run)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="GLOBAL batch size")
    g.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (quick runs)")
    g.add_argument("--lr", type=float, help="dense learning rate")
    g.add_argument("--sparse-lr", type=float, help="embedding learning rate")
    g.add_argument("--field-set", help="movielens-1m: paper or ids")
    g.add_argument("--test-ratio", type=float, help="test share (the split preset sets its own)")
    g.add_argument("--valid-ratio", type=float, help="validation share (selects the best epoch)")
    g.add_argument("--synthetic-rows", type=int)
    g.add_argument("--numeric", choices=NUMERIC_TRANSFORMS, help="numerical fields (bucketize: as categorical fields)")
    g.add_argument("--monitor", choices=MONITORS, help="validation metric that picks each run's best epoch")
    g.add_argument("--device", choices=DEVICES)
    parser.add_argument(
        "--model-config",
        type=_model_configs,
        help="each model's own settings as JSON (or a JSON file), keyed by model, e.g. "
        "'{\"iarm\": {\"num_layers\": 2}, \"dcn\": {\"num_cross_layers\": 2}}'; models not named keep "
        "their defaults (or --config's, for its model); variants such as IARM* change theirs on top",
    )
    parser.add_argument(
        "--tuned",
        type=_tuned,
        help="comma-separated best.json files of iarm tune: each model's tuned settings and learning rates "
        "replace the defaults for that model's runs",
    )


def _model_configs(text: str) -> ModelConfigs:
    """``--model-config``: ``{model: settings}``, each checked by the model's config."""
    try:
        mapping = parse_model_config(text)
        return {model: check_model_settings(model, settings) for model, settings in mapping.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise argparse.ArgumentTypeError(f"--model-config: {error}") from None


def _tuned(text: str) -> List[TrainSettings]:
    """``--tuned``: comma-separated ``best.json`` files of ``iarm tune``."""
    try:
        return [TrainSettings.from_file(path.strip()) for path in text.split(",") if path.strip()]
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"--tuned: {error}") from None


def tuned_settings(tuned: Sequence[TrainSettings]) -> Tuple[ModelConfigs, ModelConfigs]:
    """``(model settings, training settings)`` per model of ``iarm tune``'s ``best.json`` files."""
    models, training = {}, {}
    for settings in tuned:
        models[settings.model] = dict(settings.model_config)
        training[settings.model] = {k: getattr(settings, k) for k in TUNED_TRAINING}
    return models, training


def base_settings(args: argparse.Namespace) -> TrainSettings:
    """The settings every run of the study shares: ``--config``, then the flags given."""
    base = TrainSettings.from_file(args.config) if args.config else TrainSettings()
    skip = ("out", "model_config", "tuned")
    given = {k: v for k, v in vars(args).items() if v is not None and k in base.to_dict() and k not in skip}
    return replace(base, **given)


def run(args: argparse.Namespace, train: Optional[TrainFn] = None) -> int:
    """Run the studies of ``args`` (see the module docstring); ``train`` replaces the trainer."""
    setup_logging()
    out = Path(args.out)
    base = base_settings(args)
    if len(args.seeds) < MIN_SEEDS:
        logger.warning("%d seed(s): the paper's comparisons need at least %d for a standard deviation",
                       len(args.seeds), MIN_SEEDS)
    models, training = tuned_settings(args.tuned or [])
    models.update(args.model_config or {})
    studies = {p: expand(p, base, args.seeds, out, args.models, models, training) for p in args.preset}
    start = time.perf_counter()
    outcomes = run_all([r for runs in studies.values() for r in runs], train)
    failed = [o for o in outcomes if o.status == "failed"]
    logger.info("runs finished in %.0f s; %d failed", time.perf_counter() - start, len(failed))
    for outcome in failed:
        logger.error("failed: %s: %s", outcome.run_dir, outcome.error)
    for preset, runs in studies.items():
        text = preset_report(preset, runs, args, base, out)
        (out / f"{preset}.md").write_text(text)
    report = "\n".join((out / f"{p}.md").read_text() for p in PRESETS if (out / f"{p}.md").is_file())
    (out / REPORT_FILE).write_text(f"# IARM experiments — {base.dataset}\n\n{report}")
    print(out / REPORT_FILE)
    return 1 if failed else 0


def preset_report(preset: str, runs: Sequence[RunSpec], args: argparse.Namespace, base: TrainSettings, out: Path) -> str:
    """One preset's Markdown section, with its plots drawn into ``out/plots``."""
    dataset = base.dataset
    plots: List[Tuple[str, str]] = []
    extra = ""
    summaries = summarize(runs)
    if preset == "layers" and summaries:
        path = plot_layers(summaries, out / PLOTS_DIR / f"{dataset}-layers-auc.png", dataset)
        plots.append((f"IARM test AUC against interacting layers on {dataset}", path.relative_to(out).as_posix()))
    finished = [r for r in runs if load_metrics(r.run_dir) is not None]
    if preset == "attention" and finished:
        extra, plots = _attention_section(finished, out, dataset)
    return render_report(preset, dataset, summaries, provenance(args, base, runs), plots, extra)


def _attention_section(runs: Sequence[RunSpec], out: Path, dataset: str) -> Tuple[str, List[Tuple[str, str]]]:
    """Fig. 5: the attention of every seed's model averaged over the test split, then over seeds."""
    computed = [run_attention(r.run_dir) for r in runs]  # runs: the finished ones
    fields = computed[0][1]
    maps = torch.stack([m for m, _ in computed]).mean(0)  # L x H x M x M over seeds
    plots = []
    for layer in range(len(maps)):
        path = plot_heatmap(maps[layer].mean(0), fields, f"IARM attention, layer {layer + 1} ({dataset})",
                            out / PLOTS_DIR / f"{dataset}-attention-layer{layer + 1}.png")
        plots.append((f"attention of layer {layer + 1}, heads averaged", path.relative_to(out).as_posix()))
    path = plot_heatmap(maps.mean((0, 1)), fields, f"IARM attention, all layers ({dataset})",
                        out / PLOTS_DIR / f"{dataset}-attention-mean.png")
    plots.append(("attention averaged over layers and heads", path.relative_to(out).as_posix()))
    note = (f"Row: the attending field; column: the field attended to; each row sums to 1. Averaged over the "
            f"{len(runs)} seeds' models and every test sample. Field pairs, both directions averaged:")
    return note + "\n\n" + render_attention_pairs(fields, ranked_pairs(pair_scores(maps))), plots


def command_line(args: argparse.Namespace) -> str:
    """The ``iarm experiment`` command that repeats ``args`` (the flags that were given).

    Example::

        >>> command_line(argparse.Namespace(preset=["table2", "layers"], out="o", seeds=[0, 1], models=None, epochs=1))
        'iarm experiment --preset table2,layers --out o --seeds 0,1 --epochs 1'
    """
    words = ["iarm", "experiment"]
    for name, value in vars(args).items():
        if value is None or name in ("command", "debug") or callable(value):  # the `iarm` parser's own entries
            continue
        if isinstance(value, dict):
            text = json.dumps(value, separators=(",", ":"))
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        words += [f"--{name.replace('_', '-')}", text]
    return shlex.join(words)


def provenance(args: argparse.Namespace, base: TrainSettings, runs: Sequence[RunSpec]) -> Dict[str, str]:
    """How the numbers were made: command, data, seeds, budget, versions, machine, time."""
    budget = ", ".join(f"{k}={getattr(base, k)}" for k in _BUDGET)
    seconds = [s for s in (run_seconds(r.run_dir) for r in runs) if s is not None]
    data = f"{base.dataset} ({base.data_dir or 'generated'}"
    data += "".join(f", {k}={v}" for k, v in base.preprocess_options().items()) + ")"
    return {
        "command": f"`{command_line(args)}`",
        "data": data,
        "seeds": ",".join(map(str, args.seeds)) + ("" if len(args.seeds) >= MIN_SEEDS else f" (fewer than {MIN_SEEDS})"),
        "budget": budget + f", dense optimizer {base.dense_optimizer}",
        "model settings": "; ".join(
            f"{r.variant.label}: {json.dumps(r.settings.model_config)}" for r in _first_seed(runs)
        ),
        "selection": "each run keeps its epoch of best validation AUC; the test split is only reported",
        "versions": describe(VERSIONED),
        "machine": machine(),
        "training time": f"{sum(seconds) / 60:.1f} min over the {len(seconds)} runs of this table"
                         + (f" ({sum(seconds) / len(seconds):.0f} s each on average; runs shared with other "
                            "tables are counted in each)" if seconds else ""),
    }


def _first_seed(runs: Sequence[RunSpec]) -> List[RunSpec]:
    """One run per variant (its first seed)."""
    seen: Dict[str, RunSpec] = {}
    for run in runs:
        seen.setdefault(f"{run.variant.label}/{run.variant.group}", run)
    return list(seen.values())


def machine() -> str:
    """CPU model, cores, torch threads and OS."""
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), {platform.system()} {platform.release()}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="iarm experiment", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
