"""Everything one training run is told, as one typed and validated dataclass.

A run is described by :class:`TrainSettings`: defaults, then an optional JSON file
(``--config FILE``), then command-line flags, later ones winning. The run folder keeps the
effective settings as ``settings.json`` so a run can always be repeated or resumed exactly.

Settings reach the model in one way: ``model`` names a registered model and ``model_config``
holds that model's own settings, checked by the model's config class through the registry
(:func:`~iarm_torchrec.models.registry.check_model_settings`) and stored complete (defaults
filled in). ``--model-config`` takes them as JSON or a JSON file; convenience flags such as
``--num-layers`` or ``--no-interest`` map onto the same keys and are refused, naming the flag,
for a model that lacks them.

Example::

    >>> s = TrainSettings.from_args(["--epochs", "2", "--interest-layers", "64,32", "--no-residual"])
    >>> s.epochs, s.model_config["interest_layer_sizes"], s.model_config["use_residual"]
    (2, [64, 32], False)
    >>> TrainSettings.from_args(["--model", "dcn", "--model-config", '{"num_cross_layers": 2}']).model_config["num_cross_layers"]
    2
    >>> TrainSettings.from_args(["--model", "fm", "--num-layers", "5"])
    Traceback (most recent call last):
    ...
    ValueError: --num-layers does not apply to model 'fm': fm takes factor_init_scale (float, default 0.01)
    >>> TrainSettings(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive global batch size, got 0
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from iarm_torchrec.data.numeric import TRANSFORMS as NUMERIC_TRANSFORMS
from iarm_torchrec.data.preprocess import DATASETS as RAW_DATASETS
from iarm_torchrec.files import PathLike, atomic_write_json
from iarm_torchrec.models.ctr_train import PRECISIONS as TRAIN_PRECISIONS
from iarm_torchrec.models.registry import MODEL_NAMES, check_model_settings, config_class, describe_settings
from iarm_torchrec.modules.checks import check_choice
from iarm_torchrec.train.sharding import TABLE_DATA_TYPES, OptimizerSettings

DATASETS = ("synthetic", *RAW_DATASETS)
"""What ``--dataset`` takes: the generated dataset and every raw format :mod:`iarm_torchrec.data` reads."""
DENSE_OPTIMIZERS = ("adam", "adagrad", "sgd")
SPARSE_OPTIMIZERS = ("adam", "rowwise_adagrad", "adagrad", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = (*TRAIN_PRECISIONS, "auto")
"""``--precision``: the dense arches' compute type (:mod:`iarm_torchrec.models.ctr_train`), or
``auto``: bf16 where the hardware computes it natively, else fp32 (:func:`resolve_precision`)."""
EMBEDDING_PRECISIONS = tuple(TABLE_DATA_TYPES)
"""``--embedding-precision``: how FBGEMM stores the tables (:func:`~iarm_torchrec.train.sharding.set_table_precision`)."""
MONITORS = ("auc", "logloss")
"""Validation metrics that can pick the best epoch (``auc`` higher, ``logloss`` lower is better)."""
SETTINGS_FILE = "settings.json"

MODEL_FLAGS: Dict[str, str] = {
    "num_layers": "--num-layers",
    "num_heads": "--num-heads",
    "head_dim": "--head-dim",
    "interest_layer_sizes": "--interest-layers",
    "deep_layer_sizes": "--deep-layers",
    "use_interest": "--no-interest",
    "use_attention": "--no-attention",
    "use_residual": "--no-residual",
}
"""Convenience flags, by the model setting they set (each model takes those its config knows)."""


@dataclass
class TrainSettings:
    """One training run.

    Args:
        dataset: ``synthetic`` (generated, with a known Bayes-optimal AUC), ``criteo``,
            ``avazu`` or ``movielens-1m``.
        data_dir: the raw source (file or folder); for ``synthetic``, where it is generated; for
            ``tabular``, where the schema's relative file names start (default: the schema's folder).
        schema: ``tabular`` only: the schema file describing the table (:mod:`iarm_torchrec.data.schema`);
            its content is part of the cache key.
        cache_dir: where preprocessed data is cached (default: :attr:`cache_root`).
        out: the run folder (settings, checkpoints, metrics, TensorBoard logs).
        model: a registered model name (:mod:`iarm_torchrec.models.registry`).
        model_config: that model's own settings (its config class's fields, e.g. IARM's
            ``num_layers``, DCN's ``num_cross_layers``); missing ones take the model's
            defaults, unknown ones are refused.
        embedding_dim: ``D``, the size of every field's embedding (all models).
        batch_size: the GLOBAL batch, split evenly over the ranks, so any world size sees
            the same batches.
        epochs: passes over the training split.
        dense_optimizer / lr: optimizer of the dense (non-embedding) parameters.
        sparse_optimizer / sparse_lr: optimizer of the embedding tables, fused into the
            backward pass by FBGEMM. FBGEMM's CPU kernels fuse SGD, Adagrad and row-wise
            Adagrad only: ``adam`` on CPU keeps the tables on the non-fused dense kernel and
            steps them with a dense Adam instead.
        weight_decay: decoupled weight decay of the dense parameters (``AdamW`` for ``adam``).
        embedding_weight_decay: L2 penalty on the embedding rows each batch touches (FBGEMM's
            fused ``weight_decay``, mode L2; FuxiCTR's ``embedding_regularizer``).
        max_grad_norm: clip the dense parameters' gradient to this L2 norm (0: off).
        lr_warmup_steps: scale both learning rates up linearly over the first N steps (0: off).
        lr_plateau_factor / lr_plateau_patience: multiply both learning rates by the factor
            each time the monitored validation metric has not improved for ``patience`` epochs
            (reduce-on-plateau; factor 1: off).
        monitor: the validation metric that picks the best epoch, drives early stopping and
            the plateau schedule: ``auc`` (higher is better) or ``logloss`` (lower is better).
        seed: model initialisation and data shuffling.
        checkpoint_every: also checkpoint every N steps (0: at epoch ends only).
        resume: ``"latest"`` to continue from the newest complete checkpoint of ``out``
            (a fresh start when there is none), or a checkpoint folder.
        early_stopping_patience: stop after this many epochs without a better validation
            AUC (0: never stop early).
        field_set / min_count / test_ratio / valid_ratio / synthetic_rows: preprocessing.
        numeric: how numerical fields enter the model (preprocessing, cached per choice):
            ``log1p``, ``standard`` (train mean and std), ``minmax``, ``none``, or
            ``bucketize`` (each becomes a categorical field: ``floor(ln(x)^2)`` for ``x > 2``,
            the value itself below, Criteo Kaggle's second-place rule); default per dataset.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        max_steps_per_epoch: cut each epoch short after this many steps (0: whole epoch);
            for smoke runs and benchmarks.
        precision: the dense arches' compute type: ``fp32`` (default), ``bf16`` (autocast;
            CPUs with AVX512-BF16/AMX and GPUs), ``fp16`` (autocast, CUDA only) or ``auto``
            (bf16 where the device computes it natively, else fp32:
            :func:`~iarm_torchrec.models.ctr_train.resolve_precision`); parameters, logits and
            loss stay float32 (:class:`~iarm_torchrec.models.ctr_train.CTRTrain`).
        embedding_precision: how FBGEMM stores the tables: ``fp32`` (default) or ``fp16`` (half
            the bytes; pooled embeddings, optimizer state and exports stay float32); ``fp16``
            needs a fused sparse optimizer (not ``adam`` on CPU). See
            :mod:`~iarm_torchrec.train.sharding`.
    """

    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    schema: Optional[str] = None
    cache_dir: Optional[str] = None
    out: str = "runs/iarm"
    model: str = "iarm"
    model_config: Dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 16
    batch_size: int = 1024
    epochs: int = 3
    dense_optimizer: str = "adam"
    lr: float = 1e-3
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    weight_decay: float = 0.0
    embedding_weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    lr_warmup_steps: int = 0
    lr_plateau_factor: float = 1.0
    lr_plateau_patience: int = 1
    monitor: str = "auc"
    seed: int = 0
    checkpoint_every: int = 0
    resume: Optional[str] = None
    early_stopping_patience: int = 2
    field_set: Optional[str] = None
    min_count: Optional[int] = None
    test_ratio: Optional[float] = None
    valid_ratio: Optional[float] = None
    numeric: Optional[str] = None
    synthetic_rows: int = 100_000
    device: str = "auto"
    max_steps_per_epoch: int = 0
    precision: str = "fp32"
    embedding_precision: str = "fp32"

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        if self.embedding_precision == "bf16":
            raise ValueError(
                "embedding_precision bf16: FBGEMM's CPU table kernels (fbgemm-gpu-cpu 1.8.0) have no bfloat16 "
                "forward; use --embedding-precision fp16 (or fp32)"
            )
        check_choice("embedding_precision", self.embedding_precision, EMBEDDING_PRECISIONS)
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, MODEL_NAMES)
        check_choice("dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS)
        check_choice("sparse_optimizer", self.sparse_optimizer, SPARSE_OPTIMIZERS)
        check_choice("device", self.device, DEVICES)
        check_choice("monitor", self.monitor, MONITORS)
        if self.numeric is not None:
            check_choice("numeric", self.numeric, NUMERIC_TRANSFORMS)
        for name in ("weight_decay", "embedding_weight_decay", "max_grad_norm", "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr_plateau_factor <= 1:
            raise ValueError(f"lr_plateau_factor must be in (0, 1] (1: no reduction), got {self.lr_plateau_factor}")
        if self.lr_plateau_patience < 1:
            raise ValueError(f"lr_plateau_patience must be >= 1 epoch, got {self.lr_plateau_patience}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive global batch size, got {self.batch_size}")
        for name in ("embedding_dim", "epochs", "synthetic_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("checkpoint_every", "early_stopping_patience", "max_steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "sparse_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive learning rate, got {getattr(self, name)}")
        for name in ("test_ratio", "valid_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.min_count is not None and self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.dataset == "tabular" and not self.schema:
            raise ValueError("dataset 'tabular' needs --schema FILE, the schema describing the table")
        if self.schema and self.dataset != "tabular":
            raise ValueError(f"--schema applies to --dataset tabular only, not to {self.dataset!r}")
        if self.schema and not Path(self.schema).is_file():
            raise ValueError(f"--schema {self.schema}: no such schema file")
        if self.dataset not in ("synthetic", "tabular") and not self.data_dir:
            raise ValueError(f"dataset {self.dataset!r} needs --data-dir, the raw data's file or folder")
        if not isinstance(self.model_config, dict):
            raise ValueError(f"model_config must be a JSON object of {self.model}'s settings, got {self.model_config!r}")
        self.model_config = check_model_settings(self.model, self.model_config, self.embedding_dim)

    @property
    def cache_root(self) -> Path:
        """Where preprocessed datasets are cached: ``cache_dir``, else ``.iarm-cache`` beside
        the raw data (the folder of a raw file), else, when that is read-only,
        ``$XDG_CACHE_HOME/iarm_torchrec`` (``~/.cache/iarm_torchrec``)."""
        if self.cache_dir:
            return Path(self.cache_dir)
        base = Path(self.data_dir) if self.data_dir else Path(self.schema).resolve().parent if self.schema else Path(self.out).parent / "data"
        if base.is_file():
            base = base.parent
        if base.exists() and not os.access(base, os.W_OK):
            return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iarm_torchrec"
        return base / ".iarm-cache"

    def optimizer_settings(self) -> OptimizerSettings:
        """How the dense parameters and the tables are stepped."""
        return OptimizerSettings(
            dense=self.dense_optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            sparse=self.sparse_optimizer,
            sparse_lr=self.sparse_lr,
            embedding_weight_decay=self.embedding_weight_decay,
        )

    def with_model(self, model: str, model_config: Optional[Dict[str, Any]] = None, **changes: Any) -> "TrainSettings":
        """These settings for ``model`` with ``model_config`` (that model's own settings; its
        defaults where absent), validated anew."""
        return replace(self, model=model, model_config=dict(model_config or {}), **changes)

    def preprocess_options(self) -> Dict[str, Any]:
        """The preprocessing options that were given (``None`` ones are left to the defaults)."""
        options = {
            "field_set": self.field_set,
            "min_count": self.min_count,
            "test_ratio": self.test_ratio,
            "valid_ratio": self.valid_ratio,
            "numeric": self.numeric,
            "schema": str(Path(self.schema).resolve()) if self.schema else None,
        }
        return {k: v for k, v in options.items() if v is not None}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def save(self, run_dir: PathLike) -> Path:
        """Write ``run_dir/settings.json`` atomically."""
        return atomic_write_json(Path(run_dir) / SETTINGS_FILE, self.to_dict())

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "settings") -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            moved = [k for k in unknown if k in MODEL_FLAGS or k == "interest_layers"]
            hint = f" ({moved} are model settings now: put them under \"model_config\")" if moved else ""
            raise ValueError(f"{source}: unknown setting(s) {unknown}{hint}; known settings: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: PathLike) -> "TrainSettings":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_args(cls, argv: Optional[Sequence[str]] = None) -> "TrainSettings":
        """Parse ``iarm train`` flags: defaults < ``--config FILE`` < flags given."""
        parser = argparse.ArgumentParser(prog="iarm train", description="Train a CTR model (IARM by default).")
        add_arguments(parser)
        return cls.from_namespace(parser.parse_args(argv))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "TrainSettings":
        """Settings from parsed ``iarm train`` flags: ``--config``'s, then the flags given; the
        model's settings from the config file (when it names the same model), then
        ``--model-config``, then the convenience flags."""
        data: Dict[str, Any] = {}
        if args.config:
            data = cls.from_file(args.config).to_dict()
        given = {k: v for k, v in vars(args).items() if k in _FIELD_NAMES and v is not None}
        model = given.get("model", data.get("model", cls.model))
        model_config: Dict[str, Any] = {}
        if data and data["model"] == model:
            model_config.update(data["model_config"])
        model_config.update(parse_model_config(args.model_config) if args.model_config else {})
        model_config.update(model_flags(args, model))
        data.update(given)
        data.update(model=model, model_config=model_config)
        return cls.from_dict(data)


_FIELD_NAMES = {f.name for f in fields(TrainSettings)} - {"model_config"}


def parse_model_config(text: str) -> Dict[str, Any]:
    """``--model-config``: a JSON object, or the path of a JSON file holding one."""
    source = "--model-config"
    if Path(text).is_file():
        source, text = text, Path(text).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if source == "--model-config" and not text.lstrip().startswith("{"):
            raise ValueError(f"--model-config {text!r} is neither a JSON object nor a file") from None
        raise ValueError(f"{source}: not valid JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: expected a JSON object of model settings, got {type(value).__name__}")
    return value


def model_flags(args: argparse.Namespace, model: str) -> Dict[str, Any]:
    """The model settings given by convenience flags; a flag the model lacks is refused."""
    takes = config_class(model).setting_defaults()
    given = {key: getattr(args, key) for key in MODEL_FLAGS if getattr(args, key, None) is not None}
    for key in given:
        if key not in takes:
            raise ValueError(f"{MODEL_FLAGS[key]} does not apply to model {model!r}: {describe_settings(model)}")
    return given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``iarm train`` flags. Every default is ``None`` so that only flags actually given
    override ``--config`` (the dataclass holds the real defaults, shown in the help)."""
    d = TrainSettings()
    parser.add_argument("--config", help="JSON file of settings; flags given here override it")
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help=f"(default {d.dataset})")
    g.add_argument("--data-dir", help="raw data file or folder; for synthetic, where it is generated; for tabular, where the schema's files are (default: the schema's folder)")
    g.add_argument("--schema", help="tabular: the schema file (YAML) describing a CSV, TSV or Parquet table (iarm_torchrec/data/schema.py)")
    g.add_argument("--cache-dir", help="preprocessed-data cache (default <data-dir>/.iarm-cache, or ~/.cache/iarm_torchrec when that is read-only)")
    g.add_argument("--field-set", help="movielens-1m: paper (AutoInt's 7 fields, the default) or ids (user_id and movie_id added to the profile and genres)")
    g.add_argument("--min-count", type=int, help="categories seen fewer times share one out-of-vocabulary id")
    g.add_argument("--test-ratio", type=float, help="share of rows held out for testing")
    g.add_argument("--valid-ratio", type=float, help="share of rows held out for validation")
    g.add_argument("--synthetic-rows", type=int, help=f"rows of the synthetic dataset (default {d.synthetic_rows})")
    g.add_argument("--numeric", choices=NUMERIC_TRANSFORMS, help="numerical fields: log1p, standard, minmax, none, or bucketize into categorical fields (default: per dataset; preprocessed and cached per choice)")
    g = parser.add_argument_group("model (each model takes the settings its config knows; see --model-config)")
    g.add_argument("--model", choices=MODEL_NAMES, help=f"registered model name (default {d.model})")
    g.add_argument(
        "--model-config",
        help="the model's own settings as JSON or a JSON file, e.g. '{\"num_cross_layers\": 2}' for dcn; "
        + "; ".join(describe_settings(name) for name in MODEL_NAMES),
    )
    g.add_argument("--embedding-dim", type=int, help=f"D, every model (default {d.embedding_dim})")
    g.add_argument("--num-layers", type=int, help="iarm, autoint: interacting layers")
    g.add_argument("--num-heads", type=int, help="iarm, autoint: attention heads H")
    g.add_argument("--head-dim", type=int, help="iarm, autoint: d' per head")
    g.add_argument("--interest-layers", dest="interest_layer_sizes", type=_comma_ints, help="iarm: interest MLP sizes, e.g. 256,128,64,32")
    g.add_argument("--deep-layers", dest="deep_layer_sizes", type=_comma_ints, help="wide_deep, deepfm, nfm, pnn, dcn: deep tower sizes, e.g. 400,400,400")
    g.add_argument("--no-interest", dest="use_interest", action="store_const", const=False, help="iarm: IARM*, no interest arch")
    g.add_argument("--no-attention", dest="use_attention", action="store_const", const=False, help="iarm: IRM, no attention")
    g.add_argument("--no-residual", dest="use_residual", action="store_const", const=False, help="iarm, autoint: IARM-, no residual")
    g = parser.add_argument_group("training")
    g.add_argument("--out", help=f"run folder (default {d.out})")
    g.add_argument("--batch-size", type=int, help=f"GLOBAL batch, split evenly over the ranks (default {d.batch_size})")
    g.add_argument("--epochs", type=int, help=f"(default {d.epochs})")
    g.add_argument("--dense-optimizer", choices=DENSE_OPTIMIZERS, help=f"(default {d.dense_optimizer})")
    g.add_argument("--lr", type=float, help=f"dense learning rate (default {d.lr})")
    g.add_argument(
        "--sparse-optimizer",
        choices=SPARSE_OPTIMIZERS,
        help=f"embedding-table optimizer, fused into backward by FBGEMM (default {d.sparse_optimizer}); "
        "on CPU FBGEMM fuses only sgd, adagrad and rowwise_adagrad, so adam there runs as a dense "
        "Adam over tables kept on the non-fused dense kernel",
    )
    g.add_argument("--sparse-lr", type=float, help=f"embedding learning rate (default {d.sparse_lr})")
    g.add_argument("--weight-decay", type=float, help="decoupled weight decay of the dense parameters (AdamW for adam; default 0)")
    g.add_argument("--embedding-weight-decay", type=float, help="L2 penalty on the embedding rows each batch touches (FBGEMM's fused weight_decay, L2 mode; default 0)")
    g.add_argument("--max-grad-norm", type=float, help="clip the dense gradient's L2 norm (default 0: off)")
    g.add_argument("--lr-warmup-steps", type=int, help="linear warm-up of both learning rates over N steps (default 0: off)")
    g.add_argument("--lr-plateau-factor", type=float, help="multiply both learning rates by this when the monitored metric stalls (default 1: off)")
    g.add_argument("--lr-plateau-patience", type=int, help=f"epochs without improvement before each reduction (default {d.lr_plateau_patience})")
    g.add_argument("--monitor", choices=MONITORS, help=f"validation metric for the best epoch, early stopping and the plateau schedule (default {d.monitor})")
    g.add_argument("--seed", type=int, help=f"(default {d.seed})")
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default: epoch ends only)")
    g.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="continue from the newest complete checkpoint of --out (or from the checkpoint folder given)",
    )
    g.add_argument(
        "--early-stopping-patience", type=int, help=f"epochs without a better validation AUC (default {d.early_stopping_patience}; 0: off)"
    )
    g.add_argument("--device", choices=DEVICES, help=f"(default {d.device})")
    g.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (smoke runs; default: whole epochs)")
    g.add_argument("--precision", choices=PRECISIONS, help="dense arches' compute type: fp32 (default), bf16 autocast "
                   "(CPUs with AVX512-BF16/AMX, GPUs), fp16 autocast (CUDA only) or auto (bf16 where the CPU or GPU "
                   "computes it natively, else fp32); weights, logits and loss stay fp32")
    g.add_argument("--embedding-precision", help="how FBGEMM stores the tables: fp32 (default) or fp16 (half the bytes; "
                   "pooled embeddings and exports stay fp32; needs a fused --sparse-optimizer, not adam on CPU)")


def _comma_ints(text: str) -> List[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 256,128,64,32, got {text!r}") from None
