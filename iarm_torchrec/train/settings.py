"""Everything one training run is told, as one typed and validated dataclass.

A run is described by :class:`TrainSettings`: defaults, then an optional JSON file
(``--config FILE``), then command-line flags, later ones winning. The run folder keeps the
effective settings as ``settings.json`` so a run can always be repeated or resumed exactly.

Example::

    >>> s = TrainSettings.from_args(["--epochs", "2", "--interest-layers", "64,32", "--no-residual"])
    >>> s.epochs, s.interest_layers, s.use_residual, s.sparse_optimizer
    (2, [64, 32], False, 'rowwise_adagrad')
    >>> TrainSettings(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive global batch size, got 0
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

DATASETS = ("synthetic", "criteo", "avazu", "movielens-1m")
DENSE_OPTIMIZERS = ("adam", "adagrad", "sgd")
SPARSE_OPTIMIZERS = ("adam", "rowwise_adagrad", "adagrad", "sgd")
DEVICES = ("auto", "cpu", "cuda")
SETTINGS_FILE = "settings.json"


@dataclass
class TrainSettings:
    """One training run.

    Args:
        dataset: ``synthetic`` (generated, with a known Bayes-optimal AUC), ``criteo``,
            ``avazu`` or ``movielens-1m``.
        data_dir: the raw source (file or folder); for ``synthetic``, where it is generated.
        cache_dir: where preprocessed data is cached (default: :attr:`cache_root`).
        out: the run folder (settings, checkpoints, metrics, TensorBoard logs).
        model: a registered model name (:mod:`iarm_torchrec.models.registry`).
        embedding_dim / num_layers / num_heads / head_dim / interest_layers /
            use_interest / use_attention / use_residual: model settings (each model takes
            those its config knows).
        batch_size: the GLOBAL batch, split evenly over the ranks, so any world size sees
            the same batches.
        epochs: passes over the training split.
        dense_optimizer / lr: optimizer of the dense (non-embedding) parameters.
        sparse_optimizer / sparse_lr: optimizer of the embedding tables, fused into the
            backward pass by FBGEMM. FBGEMM's CPU kernels fuse SGD, Adagrad and row-wise
            Adagrad only: ``adam`` on CPU keeps the tables on the non-fused dense kernel and
            steps them with a dense Adam instead.
        seed: model initialisation and data shuffling.
        checkpoint_every: also checkpoint every N steps (0: at epoch ends only).
        resume: ``"latest"`` to continue from the newest complete checkpoint of ``out``
            (a fresh start when there is none), or a checkpoint folder.
        early_stopping_patience: stop after this many epochs without a better validation
            AUC (0: never stop early).
        field_set / min_count / test_ratio / valid_ratio / synthetic_rows: preprocessing.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        max_steps_per_epoch: cut each epoch short after this many steps (0: whole epoch);
            for smoke runs and benchmarks.
    """

    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    cache_dir: Optional[str] = None
    out: str = "runs/iarm"
    model: str = "iarm"
    embedding_dim: int = 16
    num_layers: int = 3
    num_heads: int = 2
    head_dim: int = 32
    interest_layers: List[int] = field(default_factory=lambda: [256, 128, 64, 32])
    use_interest: bool = True
    use_attention: bool = True
    use_residual: bool = True
    batch_size: int = 1024
    epochs: int = 3
    dense_optimizer: str = "adam"
    lr: float = 1e-3
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    seed: int = 0
    checkpoint_every: int = 0
    resume: Optional[str] = None
    early_stopping_patience: int = 2
    field_set: Optional[str] = None
    min_count: Optional[int] = None
    test_ratio: Optional[float] = None
    valid_ratio: Optional[float] = None
    synthetic_rows: int = 100_000
    device: str = "auto"
    max_steps_per_epoch: int = 0

    def __post_init__(self) -> None:
        self.interest_layers = _int_list(self.interest_layers, "interest_layers")
        _choice("dataset", self.dataset, DATASETS)
        _choice("dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS)
        _choice("sparse_optimizer", self.sparse_optimizer, SPARSE_OPTIMIZERS)
        _choice("device", self.device, DEVICES)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive global batch size, got {self.batch_size}")
        for name in ("embedding_dim", "num_heads", "head_dim", "epochs", "synthetic_rows"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_layers", "checkpoint_every", "early_stopping_patience", "max_steps_per_epoch"):
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
        if self.dataset != "synthetic" and not self.data_dir:
            raise ValueError(f"dataset {self.dataset!r} needs --data-dir, the raw data's file or folder")

    @property
    def cache_root(self) -> Path:
        """Where preprocessed datasets are cached: ``cache_dir``, else ``.iarm-cache`` beside
        the raw data (the folder of a raw file), else, when that is read-only,
        ``$XDG_CACHE_HOME/iarm_torchrec`` (``~/.cache/iarm_torchrec``)."""
        if self.cache_dir:
            return Path(self.cache_dir)
        base = Path(self.data_dir) if self.data_dir else Path(self.out).parent / "data"
        if base.is_file():
            base = base.parent
        if base.exists() and not os.access(base, os.W_OK):
            return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iarm_torchrec"
        return base / ".iarm-cache"

    def model_settings(self) -> Dict[str, Any]:
        """Model keyword settings under the registry's names (each model takes those it knows)."""
        return {
            "interest_layer_sizes": list(self.interest_layers),
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "use_interest": self.use_interest,
            "use_attention": self.use_attention,
            "use_residual": self.use_residual,
        }

    def preprocess_options(self) -> Dict[str, Any]:
        """The preprocessing options that were given (``None`` ones are left to the defaults)."""
        options = {
            "field_set": self.field_set,
            "min_count": self.min_count,
            "test_ratio": self.test_ratio,
            "valid_ratio": self.valid_ratio,
        }
        return {k: v for k, v in options.items() if v is not None}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def save(self, run_dir: "os.PathLike[str] | str") -> Path:
        """Write ``run_dir/settings.json`` atomically."""
        path = Path(run_dir) / SETTINGS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "settings") -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: "os.PathLike[str] | str") -> "TrainSettings":
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
        data: Dict[str, Any] = cls.from_file(args.config).to_dict() if args.config else {}
        data.update({k: v for k, v in vars(args).items() if k in _FIELD_NAMES and v is not None})
        return cls.from_dict(data)


_FIELD_NAMES = {f.name for f in fields(TrainSettings)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``iarm train`` flags. Every default is ``None`` so that only flags actually given
    override ``--config`` (the dataclass holds the real defaults, shown in the help)."""
    d = TrainSettings()
    parser.add_argument("--config", help="JSON file of settings; flags given here override it")
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help=f"(default {d.dataset})")
    g.add_argument("--data-dir", help="raw data file or folder; for synthetic, where it is generated")
    g.add_argument("--cache-dir", help="preprocessed-data cache (default <data-dir>/.iarm-cache, or ~/.cache/iarm_torchrec when that is read-only)")
    g.add_argument("--field-set", help="movielens-1m: paper (AutoInt's 7 fields, the default) or ids (user_id and movie_id added to the profile and genres)")
    g.add_argument("--min-count", type=int, help="categories seen fewer times share one out-of-vocabulary id")
    g.add_argument("--test-ratio", type=float, help="share of rows held out for testing")
    g.add_argument("--valid-ratio", type=float, help="share of rows held out for validation")
    g.add_argument("--synthetic-rows", type=int, help=f"rows of the synthetic dataset (default {d.synthetic_rows})")
    g = parser.add_argument_group("model")
    g.add_argument("--model", help=f"registered model name (default {d.model})")
    g.add_argument("--embedding-dim", type=int, help=f"D (default {d.embedding_dim})")
    g.add_argument("--num-layers", type=int, help=f"interacting layers (default {d.num_layers})")
    g.add_argument("--num-heads", type=int, help=f"attention heads H (default {d.num_heads})")
    g.add_argument("--head-dim", type=int, help=f"d' per head (default {d.head_dim})")
    g.add_argument("--interest-layers", type=_comma_ints, help="interest MLP sizes, e.g. 256,128,64,32")
    g.add_argument("--no-interest", dest="use_interest", action="store_const", const=False, help="IARM*: no interest arch")
    g.add_argument("--no-attention", dest="use_attention", action="store_const", const=False, help="IRM: no attention")
    g.add_argument("--no-residual", dest="use_residual", action="store_const", const=False, help="IARM-: no residual")
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


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _int_list(value: Any, name: str) -> List[int]:
    items = _comma_ints(value) if isinstance(value, str) else list(value)
    if not items or any(not isinstance(i, int) or i <= 0 for i in items):
        raise ValueError(f"{name} must be positive layer sizes such as 256,128,64,32, got {value!r}")
    return items


def _comma_ints(text: str) -> List[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 256,128,64,32, got {text!r}") from None
