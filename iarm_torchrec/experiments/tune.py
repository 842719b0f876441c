"""``iarm tune``: hyperparameter search on the validation split, with Optuna.

::

    iarm tune --model iarm --dataset movielens-1m --data-dir ../shared/data/movielens-1m \\
        --trials 20 --epochs 5 --out runs/tune-iarm-ml1m

Every trial is one training run (one process) with settings drawn by Optuna's TPE sampler from
the model's search space (:data:`SEARCH_SPACES`, below); it reports its validation metric
after every epoch, and Optuna's median pruner stops trials that are hopeless against the
trials before them at the same epoch. The test split is never read (``train(..., test=False)``).
The study lives in SQLite inside the study folder (``OUT/study.db``), so an interrupted search
resumes where it stopped when the command is repeated: ``--trials`` is the total budget, and
finished trials count against it. The best trial's settings are written as ``OUT/best.json``, an
``iarm train --config`` file, and ``iarm experiment --tuned OUT/best.json`` runs a preset on them.

The first trial of a new study runs the starting point: the learning rates, decays and plateau
factor of the base settings (``--config`` and the flags) with the model's default settings
(``iarm_variants``: IARM+ + cross, a 400-400-400 deep tower and one matrix cross layer, the best
variant measured before tuning: docs/results.md),
so that the tuned settings are never worse on validation than the untuned ones.

Search spaces (each also tunes ``lr`` in [1e-4, 1e-2] and ``sparse_lr`` in [0.01, 0.3], both
log-uniform, ``weight_decay`` in {0, 1e-6 .. 1e-3}, ``embedding_weight_decay`` in {0, 1e-6 ..
1e-4} where the tables' optimizer applies it (not FBGEMM's fused CPU kernels) and the reduce-on-plateau ``lr_plateau_factor`` in {1 (off), 0.5, 0.2}): towers' ``dropout`` in [0, 0.5]; IARM
(the paper's model): ``num_layers`` 1-4, ``num_heads`` {1, 2, 4}, ``head_dim`` {8, 16, 32},
``attention_dropout`` [0, 0.3]; ``iarm_variants``: the same plus the departures ``product``
{none, inner}, the product tower {none, 400-400-400}, the IARM+ tower {none, 400-400-400},
``attention_layer_norm``, 0-2 matrix cross layers; AutoInt: IARM's attention settings; DCN: 1-4
cross layers, vector or matrix; PNN: inner or outer product; AFM: ``attention_dim`` {8, 16, 32};
Deep Crossing: 1-3 residual units of {64, 128, 256, 400}; the deep models' towers: {1, 2, 3} layers
of {100, 200, 400}; FM: the optimizer settings only.
"""

import argparse
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from iarm_torchrec.files import atomic_write_json
from iarm_torchrec.train.settings import DATASETS, DEVICES, SETTINGS_FILE, TrainSettings

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
BEST_FILE = "best.json"
TRIALS_DIR = "trials"

TUNED_TRAINING = ("lr", "sparse_lr", "weight_decay", "embedding_weight_decay", "max_grad_norm", "batch_size",
                  "lr_warmup_steps", "lr_plateau_factor", "lr_plateau_patience")  # fmt: skip
"""The training settings a tuned config carries for its model (``iarm experiment --tuned``)."""

Draw = Tuple[Dict[str, Any], Dict[str, Any]]
"""A trial's ``(training settings, model settings)``."""


def _optimizer(trial: Any) -> Dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "sparse_lr": trial.suggest_float("sparse_lr", 0.01, 0.3, log=True),
        "weight_decay": trial.suggest_categorical("weight_decay", [0.0, 1e-6, 1e-5, 1e-4, 1e-3]),
        "lr_plateau_factor": trial.suggest_categorical("lr_plateau_factor", [1.0, 0.5, 0.2]),
    }


def _embedding_decay_acts(base: TrainSettings) -> bool:
    """Whether the tables' optimizer applies ``embedding_weight_decay`` where the trials run:
    FBGEMM's fused CPU kernels do not (the trainer refuses it there), so the search leaves it out."""
    import torch

    from iarm_torchrec.train.sharding import sparse_optimizer_is_fused

    cuda = base.device == "cuda" or (base.device == "auto" and torch.cuda.is_available())
    return cuda or not sparse_optimizer_is_fused(base.sparse_optimizer, torch.device("cpu"))


def _start(base: TrainSettings) -> Dict[str, Any]:
    """The optimizer part of a study's first trial: ``base``'s own settings."""
    names = ["lr", "sparse_lr", "weight_decay", "lr_plateau_factor"]
    names += ["embedding_weight_decay"] if _embedding_decay_acts(base) else []
    return {name: getattr(base, name) for name in names}


def _tower(trial: Any, key: str = "deep_layer_sizes") -> Dict[str, Any]:
    depth = trial.suggest_int(f"{key}_depth", 1, 3)
    width = trial.suggest_categorical(f"{key}_width", [100, 200, 400])
    return {key: [width] * depth, "dropout": trial.suggest_float("dropout", 0.0, 0.5)}


def _attention(trial: Any) -> Dict[str, Any]:
    return {
        "num_layers": trial.suggest_int("num_layers", 1, 4),
        "num_heads": trial.suggest_categorical("num_heads", [1, 2, 4]),
        "head_dim": trial.suggest_categorical("head_dim", [8, 16, 32]),
        "attention_dropout": trial.suggest_float("attention_dropout", 0.0, 0.3),
    }


def _iarm(trial: Any) -> Draw:
    return _optimizer(trial), {**_attention(trial), "dropout": trial.suggest_float("dropout", 0.0, 0.5)}


def _iarm_variants(trial: Any) -> Draw:
    training, model = _iarm(trial)
    product = trial.suggest_categorical("product", ["none", "inner"])
    tower = trial.suggest_categorical("product_tower", [False, True]) if product != "none" else False
    model.update(
        product=product,
        product_layer_sizes=[400, 400, 400] if tower else [],
        deep_layer_sizes=[400, 400, 400] if trial.suggest_categorical("deep_tower", [False, True]) else [],
        attention_layer_norm=trial.suggest_categorical("attention_layer_norm", [False, True]),
        num_cross_layers=trial.suggest_int("num_cross_layers", 0, 2),
    )
    return training, model


def _space(model_part: Callable[[Any], Dict[str, Any]]) -> Callable[[Any], Draw]:
    return lambda trial: (_optimizer(trial), model_part(trial))


@dataclass(frozen=True)
class SearchSpace:
    """A model and how a trial draws its settings."""

    model: str
    draw: Callable[[Any], Draw]
    start: Dict[str, Any] = field(default_factory=dict)
    """The model part of the study's first trial, in the space's own parameters: the model's
    defaults (for ``iarm_variants``: IARM+ + cross, the best variant measured before tuning)."""


_ATTENTION_START = {"num_layers": 3, "num_heads": 2, "head_dim": 32, "attention_dropout": 0.0}
_TOWER_START = {"deep_layer_sizes_depth": 3, "deep_layer_sizes_width": 400, "dropout": 0.0}

SEARCH_SPACES: Dict[str, SearchSpace] = {
    "iarm": SearchSpace("iarm", _iarm, {**_ATTENTION_START, "dropout": 0.0}),
    "iarm_variants": SearchSpace("iarm", _iarm_variants, {
        **_ATTENTION_START, "dropout": 0.0, "product": "none", "deep_tower": True, "attention_layer_norm": False,
        "num_cross_layers": 1}),  # fmt: skip
    "autoint": SearchSpace("autoint", _space(_attention), _ATTENTION_START),
    "fm": SearchSpace("fm", _space(lambda trial: {})),
    "wide_deep": SearchSpace("wide_deep", _space(_tower), _TOWER_START),
    "deepfm": SearchSpace("deepfm", _space(_tower), _TOWER_START),
    "nfm": SearchSpace("nfm", _space(_tower), _TOWER_START),
    "afm": SearchSpace("afm", _space(lambda t: {"attention_dim": t.suggest_categorical("attention_dim", [8, 16, 32])}),
                       {"attention_dim": 16}),  # fmt: skip
    "dcn": SearchSpace("dcn", _space(lambda t: {
        **_tower(t), "num_cross_layers": t.suggest_int("num_cross_layers", 1, 4),
        "cross_type": t.suggest_categorical("cross_type", ["vector", "matrix"])}),  # fmt: skip
        {**_TOWER_START, "num_cross_layers": 3, "cross_type": "vector"}),
    "pnn": SearchSpace("pnn", _space(lambda t: {**_tower(t), "product": t.suggest_categorical("product", ["inner", "outer"])}),
                       {**_TOWER_START, "product": "inner"}),  # fmt: skip
    "deep_crossing": SearchSpace("deep_crossing", _space(lambda t: {"residual_hidden_sizes": [
        t.suggest_categorical("residual_width", [64, 128, 256, 400])] * t.suggest_int("residual_units", 1, 3)}),  # fmt: skip
        {"residual_width": 400, "residual_units": 3}),
}
"""Search spaces by name (a model's name, or ``iarm_variants``); see the module docstring."""


def trial_settings(base: TrainSettings, space: SearchSpace, trial: Any, study_dir: Path) -> TrainSettings:
    """``base`` with the trial's draw, written into ``study_dir/trials/trial-NNNN``."""
    training, model_config = space.draw(trial)
    if _embedding_decay_acts(base):
        training["embedding_weight_decay"] = trial.suggest_categorical("embedding_weight_decay", [0.0, 1e-6, 1e-5, 1e-4])
    out = study_dir / TRIALS_DIR / f"trial-{trial.number:04d}"
    return base.with_model(space.model, model_config, out=str(out), resume=None, **training)


def tune(
    base: TrainSettings,
    space_name: str,
    study_dir: Path,
    trials: int,
    seed: int = 0,
    train: Optional[Callable[..., Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """Run the search until ``trials`` trials are finished (complete or pruned) in the study
    at ``study_dir``; write ``best.json``; return the best trial's summary."""
    import optuna

    from iarm_torchrec.train.trainer import train as default_train

    if space_name not in SEARCH_SPACES:
        raise ValueError(f"unknown search space {space_name!r}; choose one of {sorted(SEARCH_SPACES)}")
    space = SEARCH_SPACES[space_name]
    train = train or default_train
    study_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=space_name,
        storage=f"sqlite:///{(study_dir / STUDY_FILE).resolve()}",
        load_if_exists=True,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    # The sampler's random state is not stored with the study: seeded as at the start, a resumed
    # study would draw its first settings again (a resumed 12-trial study repeated 5 of its first 6).
    # Seeded past the trials it holds, it draws new ones; a study run in one go keeps `seed`.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    for stale in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):  # cut off by an interruption
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    if done == 0 and not waiting:  # the first trial measures the starting point, so tuning never ends below it
        study.enqueue_trial({**_start(base), **space.start})  # (again, if an interruption cut it off)

    def objective(trial: Any) -> float:
        settings = trial_settings(base, space, trial, study_dir)
        shutil.rmtree(settings.out, ignore_errors=True)  # a trial number is never reused

        def report(trainer: Any, progress: Any, record: Dict[str, Any]) -> None:
            trial.report(_score(record, base.monitor), record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {record['epoch']}: valid {base.monitor} below the median")

        try:
            metrics = train(settings, epoch_callbacks=[report], test=False)
        finally:
            shutil.rmtree(Path(settings.out) / "checkpoints", ignore_errors=True)  # keep metrics, not weights
        return _score(metrics, base.monitor)

    if done < trials:
        study.optimize(objective, n_trials=trials - done, show_progress_bar=True, catch=(RuntimeError, ValueError))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"{study_dir}: no trial completed; see the trials' logs")
    best = study.best_trial
    tuned = TrainSettings.from_file(study_dir / TRIALS_DIR / f"trial-{best.number:04d}" / SETTINGS_FILE)
    config = {k: v for k, v in tuned.to_dict().items() if k not in ("out", "resume")}
    atomic_write_json(study_dir / BEST_FILE, config)
    summary = {
        "space": space_name,
        "model": space.model,
        "best_trial": best.number,
        f"best_valid_{base.monitor}": best.value if base.monitor == "auc" else -best.value,
        "trials": {state.name.lower(): len(study.get_trials(states=(state,))) for state in optuna.trial.TrialState},
        "config": str(study_dir / BEST_FILE),
    }
    atomic_write_json(study_dir / "summary.json", summary)
    return summary


def _score(metrics: Dict[str, Any], monitor: str) -> float:
    return float(metrics["valid_auc"]) if monitor == "auc" else -float(metrics["valid_logloss"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``iarm tune`` flags."""
    parser.add_argument("--model", dest="space", default="iarm", choices=sorted(SEARCH_SPACES),
                        help="the model to tune, or iarm_variants (IARM with the departures from the paper)")
    parser.add_argument("--trials", type=int, default=20, help="total trial budget of the study (default 20)")
    parser.add_argument("--out", required=True, help="the study folder (study.db, trials/, best.json); repeat to resume")
    parser.add_argument("--config", help="an iarm train settings file for everything not tuned")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (and the runs')")
    g = parser.add_argument_group("data and budget of every trial")
    g.add_argument("--dataset", choices=DATASETS)
    g.add_argument("--data-dir")
    g.add_argument("--schema", help="tabular: the schema file")
    g.add_argument("--cache-dir")
    g.add_argument("--field-set")
    g.add_argument("--numeric")
    g.add_argument("--test-ratio", type=float)
    g.add_argument("--valid-ratio", type=float)
    g.add_argument("--synthetic-rows", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--max-steps-per-epoch", type=int)
    g.add_argument("--monitor", choices=["auc", "logloss"])
    g.add_argument("--device", choices=DEVICES)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from iarm_torchrec.train.trainer import setup_logging

    setup_logging()
    base = TrainSettings.from_file(args.config) if args.config else TrainSettings()
    given = {k: v for k, v in vars(args).items() if v is not None and k in base.to_dict() and k not in ("out", "model")}
    base = replace(base, **given)
    summary = tune(base, args.space, Path(args.out), args.trials, args.seed)
    print(f"best trial {summary['best_trial']} of {args.out}: valid {base.monitor} "
          f"{summary[f'best_valid_{base.monitor}']:.5f}; settings in {summary['config']}")  # fmt: skip
    return 0

