"""A synthetic Criteo with known answers: labels drawn from a planted model, the best AUC known.

The generator writes Criteo-format TSV (label, 13 integer fields, 26 categorical 8-hex
fields, empty where missing) so the real reader and preprocessing run on it, and draws each
label from a planted click model::

    logit = b0 + sum_f w_f[C_f]                      per-value effects, all 26 fields
               + u[C1, C2, C3, C4]                   the user block: one effect per user tuple
               + sum_(a,b) p_ab[C_a, C_b]            planted field-pair interactions
               + sum_i beta_i * z(log1p(I_i))        a few integer fields (z: standardised)

Categorical values are Zipf-distributed (users too: a Zipf population of users, each with a
fixed tuple of user-field values); integers are log-normal. ``b0`` is set so the mean
click probability is :attr:`SyntheticConfig.base_ctr`. Everything is deterministic from the seed.

Beside the data, ``ground_truth.json`` records the user fields, the planted pairs and the
Bayes-optimal AUC and log loss on the test rows (from the true probabilities, saved in test
order as ``test_probabilities.npy``): the best any model can do on this test split.

One call does it all (generate, write TSV, preprocess with the Criteo path, score)::

    data_dir = make_synthetic_dataset("runs/synthetic", rows=200_000, seed=0)
    loader = ShardedBatchLoader(data_dir, "train", batch_size=1024, shuffle=True)

With the defaults (200k rows, seed 0) the test split's Bayes-optimal AUC is 0.840; a model of
per-value effects alone reaches about 0.77, so the user block and the planted pairs carry
most of what separates a good model from a plain logistic regression.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from iarm_torchrec.data.builtin import builtin_schema
from iarm_torchrec.data.loader import ShardedSplit
from iarm_torchrec.data.preprocess import preprocess
from iarm_torchrec.data.spec import SPEC_FILE, SPLITS, PathLike
from iarm_torchrec.data.splits import SplitConfig
from iarm_torchrec.files import atomic_write_bytes, atomic_write_json

_CRITEO = builtin_schema("criteo")  # the generated TSV is Criteo's layout, preprocessed as criteo
INT_FIELDS = [f.name for f in _CRITEO.fields if f.kind == "numeric"]
CAT_FIELDS = [f.name for f in _CRITEO.fields if f.kind == "categorical"]
NUM_INTEGER = len(INT_FIELDS)
NUM_CATEGORICAL = len(CAT_FIELDS)
GROUND_TRUTH_FILE = "ground_truth.json"
TEST_PROBABILITIES_FILE = "test_probabilities.npy"
TSV_DIR = "tsv"
GENERATOR_VERSION = 1


def _default_vocab() -> List[int]:
    # C1-C4 users, C5-C10 the planted pairs, then Criteo-like sizes from tiny to large
    return [40, 20, 8, 4, 12, 8, 10, 6, 8, 12, 3, 5, 10, 60, 100, 150, 250, 400, 600, 1000, 1500, 2000, 3000,
            4000, 6, 300]


def _default_missing() -> List[float]:
    return [0.0] * 10 + [0.0, 0.05, 0.0, 0.1, 0.0, 0.02, 0.3, 0.0, 0.4, 0.0, 0.15, 0.0, 0.45, 0.0, 0.2, 0.35]


@dataclass(frozen=True)
class SyntheticConfig:
    """The planted click model and the shape of the data.

    Args:
        rows: samples in all; the last ``test_ratio`` of them test, the ``valid_ratio`` before
            validate, the rest train.
        seed: the one seed everything derives from.
        vocab_sizes: values per categorical field ``C1..C26``.
        missing_rates: chance that a categorical field is empty (such a value has no effect).
        integer_missing_rate: chance that an integer field is empty.
        zipf_exponent: ``P(value k) ~ (k + 1) ** -zipf_exponent``.
        num_users: the user population; each user has fixed ``user_fields`` values.
        user_fields: the user block ``C1..C4`` whose tuple carries the user-interest effect.
        planted_pairs: field pairs with one random effect per pair of values.
        effect_std / user_effect_std / pair_effect_std: std of per-value, user-tuple, pair effects.
        effect_std_vocab: fields with more values get per-value effects of std
            ``effect_std * sqrt(effect_std_vocab / vocab_size)``.
        dense_effects: ``beta_i`` of the first integer fields (standardised ``log1p``).
        base_ctr: the mean click probability.
    """

    rows: int = 200_000
    seed: int = 0
    vocab_sizes: List[int] = field(default_factory=_default_vocab)
    missing_rates: List[float] = field(default_factory=_default_missing)
    integer_missing_rate: float = 0.1
    zipf_exponent: float = 1.1
    num_users: int = 1000
    user_fields: List[str] = field(default_factory=lambda: ["C1", "C2", "C3", "C4"])
    planted_pairs: List[Tuple[str, str]] = field(default_factory=lambda: [("C5", "C6"), ("C7", "C8"), ("C9", "C10")])
    effect_std: float = 0.3
    effect_std_vocab: int = 100
    user_effect_std: float = 0.8
    pair_effect_std: float = 0.6
    dense_effects: List[float] = field(default_factory=lambda: [0.3, -0.25, 0.2, 0.15])
    base_ctr: float = 0.25
    valid_ratio: float = 0.1
    test_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.rows < 10:
            raise ValueError(f"rows must be at least 10, got {self.rows}")
        if len(self.vocab_sizes) != NUM_CATEGORICAL or min(self.vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes needs {NUM_CATEGORICAL} positive sizes, got {self.vocab_sizes}")
        if len(self.missing_rates) != NUM_CATEGORICAL or not all(0 <= r < 1 for r in self.missing_rates):
            raise ValueError(f"missing_rates needs {NUM_CATEGORICAL} rates in [0, 1), got {self.missing_rates}")
        planted = list(self.user_fields) + [f for pair in self.planted_pairs for f in pair]
        unknown = [f for f in planted if f not in CAT_FIELDS]
        if unknown:
            raise ValueError(f"user_fields and planted_pairs must name fields C1..C26, got {unknown}")
        if any(self.missing_rates[CAT_FIELDS.index(f)] > 0 for f in planted):
            raise ValueError("user and planted-pair fields must have missing rate 0 (their effects need values)")
        if len(self.dense_effects) > NUM_INTEGER:
            raise ValueError(f"at most {NUM_INTEGER} dense_effects, got {len(self.dense_effects)}")
        if not 0 < self.base_ctr < 1:
            raise ValueError(f"base_ctr must be in (0, 1), got {self.base_ctr}")
        if not (0 < self.valid_ratio and 0 < self.test_ratio and self.valid_ratio + self.test_ratio < 1):
            raise ValueError("valid_ratio and test_ratio must be positive and leave rows for training")

    def value_effect_std(self, vocab_size: int) -> float:
        """Std of a field's per-value effects: ``effect_std``, shrunk for fields of more than
        ``effect_std_vocab`` values so that the rare values of large fields (seen a few times
        at most) carry little of the signal and the planted model stays learnable."""
        return self.effect_std * min(1.0, (self.effect_std_vocab / vocab_size) ** 0.5)

    def split_rows(self) -> Dict[str, Tuple[int, int]]:
        """``split -> (first row, end row)``: the time split of :mod:`iarm_torchrec.data.splits`
        (train, valid, test in generation order), the very rule preprocessing applies."""
        codes = self.splits().assign(np.arange(self.rows), np.arange(self.rows), self.rows)
        ends = np.cumsum(np.bincount(codes, minlength=len(SPLITS))).tolist()
        return {s: (([0] + ends)[i], ends[i]) for i, s in enumerate(SPLITS)}

    def splits(self) -> SplitConfig:
        return SplitConfig("time", self.valid_ratio, self.test_ratio)


@dataclass
class SyntheticCriteo:
    """Generated rows, in memory.

    Attributes:
        integers: ``rows x 13`` int64, ``-1`` where missing.
        categories: ``rows x 26`` int64 value indices, ``-1`` where missing.
        user_tuple: ``rows`` int64, index of the sample's ``(C1..C4)`` combination.
        pair_codes: ``rows x P`` int64, index of the sample's value pair for each planted pair.
        dense_z: ``rows x len(dense_effects)`` the standardised ``log1p`` integers (0 where missing).
        logits / probabilities / labels: the planted model's logit, its sigmoid, the drawn 0/1 label.
        hex_codes: per field, the 8-hex string of each value index.
    """

    config: SyntheticConfig
    integers: np.ndarray
    categories: np.ndarray
    user_tuple: np.ndarray
    pair_codes: np.ndarray
    dense_z: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    hex_codes: List[np.ndarray]
    bias: float


def _zipf(rng: np.random.Generator, vocab: int, exponent: float, size: int) -> np.ndarray:
    weights = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), vocab - 1)


def _solve_bias(rest: np.ndarray, target: float) -> float:
    """``b`` with ``mean(sigmoid(b + rest)) == target`` (bisection; the mean grows with ``b``)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if (1 / (1 + np.exp(-(mid + rest)))).mean() < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def generate(config: SyntheticConfig) -> SyntheticCriteo:
    """Draw the rows and their labels from the planted model (vectorised; deterministic).

    Example::

        >>> data = generate(SyntheticConfig(rows=5000, seed=1))
        >>> data.categories.shape, bool(0.2 < data.labels.mean() < 0.3)
        ((5000, 26), True)
    """
    rng = np.random.default_rng(config.seed)
    n, vocab = config.rows, config.vocab_sizes
    col = {name: j for j, name in enumerate(CAT_FIELDS)}

    categories = np.stack([_zipf(rng, v, config.zipf_exponent, n) for v in vocab], axis=1)
    # the user block: a Zipf population of users, each with fixed user-field values
    user_cols = [col[f] for f in config.user_fields]
    users = _zipf(rng, config.num_users, config.zipf_exponent, n)
    for j in user_cols:
        categories[:, j] = _zipf(rng, vocab[j], config.zipf_exponent, config.num_users)[users]
    missing = rng.random((n, NUM_CATEGORICAL)) < np.asarray(config.missing_rates)
    categories[missing] = -1

    logits = np.zeros(n)
    for j, v in enumerate(vocab):
        effect = np.append(rng.normal(0, config.value_effect_std(v), v), 0.0)  # index -1: missing, no effect
        logits += effect[categories[:, j]]
    user_tuple = np.zeros(n, dtype=np.int64)
    for j in user_cols:
        user_tuple = user_tuple * vocab[j] + categories[:, j]
    _, user_tuple = np.unique(user_tuple, return_inverse=True)
    logits += rng.normal(0, config.user_effect_std, user_tuple.max() + 1)[user_tuple]
    pair_codes = np.zeros((n, len(config.planted_pairs)), dtype=np.int64)
    for p, (a, b) in enumerate(config.planted_pairs):
        pair_codes[:, p] = categories[:, col[a]] * vocab[col[b]] + categories[:, col[b]]
        logits += rng.normal(0, config.pair_effect_std, vocab[col[a]] * vocab[col[b]])[pair_codes[:, p]]

    mu = rng.uniform(0.0, 4.0, NUM_INTEGER)
    sigma = rng.uniform(0.5, 1.5, NUM_INTEGER)
    integers = np.floor(np.expm1(rng.normal(mu, sigma, (n, NUM_INTEGER)).clip(min=0))).astype(np.int64)
    integers[rng.random((n, NUM_INTEGER)) < config.integer_missing_rate] = -1
    k = len(config.dense_effects)
    dense_log = np.log1p(integers[:, :k].clip(min=0).astype(np.float64))
    present = integers[:, :k] >= 0
    z = (dense_log - mu[:k]) / sigma[:k]  # standardised with the true log-normal parameters
    dense_z = np.where(present, z, 0.0)
    logits += dense_z @ np.asarray(config.dense_effects, dtype=np.float64)

    bias = _solve_bias(logits, config.base_ctr)
    logits += bias
    probabilities = 1 / (1 + np.exp(-logits))
    labels = (rng.random(n) < probabilities).astype(np.int64)
    hex_codes = []
    for v in vocab:  # an odd multiplier is a bijection mod 2**32: distinct codes per value
        mult, add = int(rng.integers(0, 2**31)) * 2 + 1, int(rng.integers(0, 2**32))
        codes = (np.arange(v, dtype=np.uint64) * np.uint64(mult) + np.uint64(add)) % np.uint64(2**32)
        hex_codes.append(np.array([f"{c:08x}".encode() for c in codes.tolist()] + [b""], dtype="S8"))
    return SyntheticCriteo(
        config, integers, categories, user_tuple, pair_codes, dense_z, logits, probabilities, labels, hex_codes, bias
    )


def write_tsv(data: SyntheticCriteo, path: Path) -> None:
    """Write every row, in generation order, as Criteo TSV (label, I1..I13, C1..C26; empty where missing)."""
    ints = data.integers
    columns = [data.labels.astype("S1")]
    for i in range(NUM_INTEGER):
        columns.append(np.where(ints[:, i] >= 0, ints[:, i].astype("S20"), b""))
    for j in range(NUM_CATEGORICAL):
        columns.append(data.hex_codes[j][data.categories[:, j]])  # -1 -> the empty code
    lines = [b"\t".join(row) for row in zip(*(c.tolist() for c in columns))]
    atomic_write_bytes(path, b"\n".join(lines) + b"\n")


def bayes_optimal(probabilities: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """AUC and log loss of the true probabilities: no model can beat them in expectation."""
    p = torch.from_numpy(np.asarray(probabilities, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels)).long()
    return {
        "auc": float(binary_auroc(p, y)),
        "log_loss": float(torch.nn.functional.binary_cross_entropy(p, y.double())),
        "rows": int(len(y)),
    }


def ground_truth(data: SyntheticCriteo) -> Dict[str, Any]:
    """What ``ground_truth.json`` records: the planted structure and the best possible scores."""
    cfg = data.config
    splits = cfg.split_rows()
    return {
        "generator": "iarm_torchrec.data.synthetic",
        "version": GENERATOR_VERSION,
        "config": asdict(cfg),
        "user_fields": list(cfg.user_fields),
        "planted_pairs": [list(pair) for pair in cfg.planted_pairs],
        "dense_effect_fields": INT_FIELDS[: len(cfg.dense_effects)],
        "bias": data.bias,
        "split_rows": {s: list(r) for s, r in splits.items()},
        "click_rate": {s: float(data.labels[a:b].mean()) for s, (a, b) in splits.items()},
        "bayes_optimal": {s: bayes_optimal(data.probabilities[a:b], data.labels[a:b]) for s, (a, b) in splits.items()},
        "test_probabilities": TEST_PROBABILITIES_FILE,
    }


def make_synthetic_dataset(
    out_dir: PathLike,
    rows: int = 200_000,
    seed: int = 0,
    workers: int = 1,
    numeric: Optional[str] = None,
    min_count: Optional[int] = None,
    **settings: Any,
) -> Path:
    """Generate, preprocess and score the synthetic Criteo in ``out_dir``; reuse it when it is
    already there with the same settings.

    ``out_dir`` then holds the raw ``tsv/train.txt`` (all rows in generation order), the
    preprocessed dataset (``spec.json``, ``train/``, ``valid/``, ``test/``, ``vocab/``; Criteo's
    reader and preprocessing with the time split, so the splits are the generation order's
    cut of :meth:`SyntheticConfig.split_rows`, and ``user_fields`` the planted user block),
    ``ground_truth.json`` and ``test_probabilities.npy`` (true click probabilities of the test
    split's rows, in the order the loader reads them unshuffled).

    Args:
        out_dir: the folder to fill (created).
        rows, seed, settings: the :class:`SyntheticConfig`.
        workers: preprocessing processes (1 is fastest up to a few million rows: starting
            workers costs more than they save).
        numeric / min_count: Criteo preprocessing's options (:func:`~iarm_torchrec.data.preprocess.preprocess`).

    Returns:
        ``out_dir``, the preprocessed folder (pass it to the loader).
    """
    config = SyntheticConfig(rows=rows, seed=seed, **settings)
    out = Path(out_dir)
    truth_file = out / GROUND_TRUTH_FILE
    if truth_file.is_file() and (out / SPEC_FILE).is_file():
        recorded = json.loads(truth_file.read_text()).get("config")
        if recorded == json.loads(json.dumps(asdict(config))):
            return out
    truth_file.unlink(missing_ok=True)  # written last: its presence marks a complete folder
    data = generate(config)
    (out / TSV_DIR).mkdir(parents=True, exist_ok=True)
    source = out / TSV_DIR / "train.txt"
    write_tsv(data, source)
    spec = preprocess(
        "criteo",
        str(source),
        str(out),
        split="time",
        valid_ratio=config.valid_ratio,
        test_ratio=config.test_ratio,
        user_fields=list(config.user_fields),
        numeric=numeric,
        min_count=min_count,
        workers=workers,
        overwrite=True,
    )
    first, end = config.split_rows()["test"]
    test_labels = ShardedSplit(out, "test").labels.take(np.arange(end - first))
    if spec.rows != {s: b - a for s, (a, b) in config.split_rows().items()} or not np.array_equal(
        test_labels, data.labels[first:end]
    ):
        raise RuntimeError(f"{out}: the preprocessed splits {spec.rows} do not follow the generation order")
    np.save(out / TEST_PROBABILITIES_FILE, data.probabilities[first:end])
    atomic_write_json(truth_file, ground_truth(data))
    return out
