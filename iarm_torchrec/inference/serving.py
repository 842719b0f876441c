"""The serving artifact: one TorchScript file with a quantized model and the encoders it was trained with.

``iarm export RUN --serving --out FILE [--quantize int8|int4|fp16|none]`` (:func:`export_serving`):

1. the run's model (any registered model, or a user's subclass via ``model_class``) is wrapped so
   that it returns click **probabilities** (``sigmoid`` inside);
2. TorchRec's :func:`~torchrec.inference.modules.quantize_inference_model` swaps every
   ``EmbeddingBagCollection`` for a ``QuantEmbeddingBagCollection`` (FBGEMM's inference TBE:
   row-wise ``int8`` / ``int4`` / ``fp16`` rows, or ``fp32`` for ``none``); first-order tables
   (``embedding_dim=1``, FM/DeepFM/Wide&Deep) stay ``fp16`` (``fp32`` for ``none``), since TBE cannot
   store a one-column row in 8 or 4 bits;
3. :func:`torchrec.fx.symbolic_trace` traces it, with the interacting layers' attention as plain ATen
   ops (:func:`~iarm_torchrec.modules.interacting.plain_aten_attention`: no compiled kernel of this
   package), and :func:`torch.jit.script` compiles the graph;
4. :func:`torch.jit.save` writes it with ``_extra_files``:

   * ``iarm/serving.json``: ``{"format": "iarm_torchrec.serving/2", "model", "model_config",
     "quantization", "training_run", "inputs" (the KJT's keys in order, one-hot / multi-hot /
     dense fields, dense column order), "encoders" (key scheme, OOV id, hashing, numeric transform
     and statistics, vocabulary files, their ``vocab_format`` and sizes, ``version``: a digest of
     all of it, the vocabularies counted by their keys), "versions"}``;
   * ``iarm/data/spec.json`` and ``iarm/data/vocab/<field>.planes.zlib``: the preprocessed folder
     without its splits, each vocabulary (sorted ``uint64`` keys: key ``keys[i]`` -> id ``i+1``)
     packed by :func:`~iarm_torchrec.inference.packed_keys.pack_keys` (~2 bytes a key, not 8).

:meth:`ServingArtifact.load` reads format 2 only (format 1, with ``.npy`` vocabularies, is refused
with a line naming the file: export the run again), unpacks the vocabularies into the preprocessed
folder's ``vocab/<field>.npy`` and checks them against the encoders' ``version``.

The scripted module's ``forward(dense_features: Tensor[B, N] float32, sparse_features:
KeyedJaggedTensor) -> Tensor[B]`` loads with ``torch.jit.load`` in any Python holding torch,
fbgemm_gpu and torchrec (imported first: they register the TBE ops and the KJT class), without this
package, and in C++ (``torch::jit::load`` with FBGEMM's operator library linked): ``docs/serving.md``.
"""

import copy
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from iarm_torchrec.data.encoders import RowEncoder
from iarm_torchrec.data.preprocess import VOCAB_DIR
from iarm_torchrec.data.spec import SPEC_FILE, FeatureSpec
from iarm_torchrec.files import PathLike, atomic_path
from iarm_torchrec.inference.packed_keys import KEYS_FORMAT, pack_keys, unpack_keys

SERVING_FORMAT = "iarm_torchrec.serving/2"
META_FILE = "iarm/serving.json"
DATA_PREFIX = "iarm/data/"
NPY = ".npy"  # a vocabulary in the preprocessed folder
PACKED = ".planes.zlib"  # the same in the artifact
QUANTIZATIONS: Dict[str, torch.dtype] = {
    "int8": torch.qint8,
    "int4": torch.quint4x2,
    "fp16": torch.half,
    "none": torch.float,
}


class ProbabilityModel(nn.Module):
    """A CTR model whose forward returns click probabilities instead of logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return torch.sigmoid(self.model(dense_features, sparse_features))


def _table_dtypes(model: nn.Module, quantization: str) -> Dict[str, torch.dtype]:
    """Per-table weight dtypes that differ from the chosen one: one-column (first-order) tables."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    narrow = torch.float if quantization == "none" else torch.half
    return {
        config.name: narrow
        for module in model.modules()
        if isinstance(module, EmbeddingBagCollection)
        for config in module.embedding_bag_configs()
        if config.embedding_dim == 1
    }


def quantized_module(model: nn.Module, quantization: str = "int8") -> nn.Module:
    """``model`` (left untouched) as a :class:`ProbabilityModel` whose tables are FBGEMM inference
    TBEs with ``quantization``'s row format (TorchRec's ``quantize_inference_model``)."""
    from torchrec.inference.modules import quantize_inference_model

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {sorted(QUANTIZATIONS)}, got {quantization!r}")
    wrapped = ProbabilityModel(copy.deepcopy(model).cpu().eval())
    quantized = quantize_inference_model(
        wrapped,
        quantization_dtype=QUANTIZATIONS[quantization],
        per_table_weight_dtype=_table_dtypes(wrapped, quantization),
    )
    return quantized.eval()


def script_module(model: nn.Module, quantization: str = "int8") -> torch.jit.ScriptModule:
    """The quantized, fx-traced (attention as plain ATen ops) and scripted probability model."""
    from torchrec.fx import symbolic_trace

    from iarm_torchrec.modules.interacting import plain_aten_attention

    quantized = quantized_module(model, quantization)
    with plain_aten_attention():
        graph = symbolic_trace(quantized)
    return torch.jit.script(graph)


def _digest(files: Dict[str, bytes], encoders: Dict[str, Any]) -> str:
    """The encoders' ``version``: a digest of their description and of the preprocessed folder's
    ``files``, each vocabulary by its keys (so the same keys give the same version whichever numpy
    or zlib wrote them)."""
    h = hashlib.sha256(json.dumps(encoders, sort_keys=True).encode())
    for name in sorted(files):
        body = np.load(io.BytesIO(files[name])).astype("<u8").tobytes() if name.endswith(NPY) else files[name]
        h.update(name.encode() + b"\0" + body)
    return h.hexdigest()[:16]


def _packed(files: Dict[str, bytes]) -> Dict[str, bytes]:
    """The preprocessed folder's files as the artifact stores them: each ``vocab/<field>.npy`` as
    ``vocab/<field>.planes.zlib`` (:func:`~iarm_torchrec.inference.packed_keys.pack_keys`)."""
    stored: Dict[str, bytes] = {}
    for name, body in files.items():
        if name.endswith(NPY):
            stored[name[: -len(NPY)] + PACKED] = pack_keys(np.load(io.BytesIO(body)))
        else:
            stored[name] = body
    return stored


def _unpacked(stored: Dict[str, bytes], path: Path) -> Dict[str, bytes]:
    """The artifact's data files back as the preprocessed folder's (vocabularies as ``.npy``)."""
    files: Dict[str, bytes] = {}
    for name, body in stored.items():
        if not name.endswith(PACKED):
            files[name] = body
            continue
        try:
            keys = unpack_keys(body)
        except ValueError as error:
            raise ValueError(f"{path}: {DATA_PREFIX}{name}: {error}: the artifact is damaged; export it again") from None
        npy = io.BytesIO()
        np.save(npy, keys)
        files[name[: -len(PACKED)] + NPY] = npy.getvalue()
    return files


def serving_metadata(payload: Dict[str, Any], quantization: str, data_files: Dict[str, bytes]) -> Dict[str, Any]:
    """``iarm/serving.json`` of an export payload (:func:`~iarm_torchrec.inference.export.export_payload`),
    but the encoders' ``version``, which :func:`write_artifact` adds from the data files it stores."""
    import fbgemm_gpu
    import torchrec

    import iarm_torchrec

    spec = FeatureSpec(**json.loads(data_files[SPEC_FILE]))
    options = spec.options
    buckets = options.get("hash_buckets", {}) or {}
    vocab_dir = options.get("vocab_dir", VOCAB_DIR)
    vocab_dir = vocab_dir if not Path(vocab_dir).is_absolute() else VOCAB_DIR
    encoders: Dict[str, Any] = {
        "key_scheme": options.get("key_scheme"),
        "oov_id": options.get("oov_id", 0),
        "multi_hot_separator": "|",
        "numeric": options.get("numeric", "none"),
        "numeric_stats": options.get("numeric_stats", {}),
        "vocab_format": KEYS_FORMAT,
        "fields": {
            f.name: (
                {"kind": "hash", "buckets": int(buckets[f.name]), "size": f.vocab_size}
                if f.name in buckets
                else {"kind": "vocab", "file": f"{DATA_PREFIX}{vocab_dir}/{f.name}{PACKED}", "size": f.vocab_size}
            )
            for f in spec.sparse
        },
    }
    return {
        "format": SERVING_FORMAT,
        "model": payload["model_config"]["model"],
        "model_config": payload["model_config"],
        "quantization": quantization,
        "training_run": payload.get("training_run", {"checkpoint": payload.get("checkpoint")}),
        "dataset": spec.dataset,
        "inputs": {
            "sparse_keys": [f.name for f in spec.sparse],
            "one_hot_fields": spec.one_hot_fields,
            "multi_hot_fields": spec.multi_hot_fields,
            "dense_fields": list(spec.dense),
            "user_fields": list(spec.user_fields),
            "output": "click probability per row, float32 [B]",
        },
        "encoders": encoders,
        "versions": {
            "torch": torch.__version__,
            "torchrec": getattr(torchrec, "__version__", "unknown"),
            "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "unknown"),
            "iarm_torchrec": getattr(iarm_torchrec, "__version__", "unknown"),
        },
    }


def export_serving(
    source: PathLike,
    out: PathLike,
    quantize: str = "int8",
    checkpoint: Optional[PathLike] = None,
    model_class: Optional[type] = None,
) -> Path:
    """Write the serving artifact of ``source`` (a run folder of ``iarm train``, or a file of
    ``iarm export``) to ``out``; returns its path. ``checkpoint`` picks a run's checkpoint (default:
    the best); ``model_class`` rebuilds the model as that subclass of the exported model's class."""
    from iarm_torchrec.inference.export import export_payload, model_from_payload, read_export

    source = Path(source)
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {sorted(QUANTIZATIONS)}, got {quantize!r}")
    if source.is_dir():
        payload = export_payload(source, checkpoint)
    else:
        if checkpoint:
            raise ValueError("checkpoint applies to a run folder, not to an exported file")
        payload = read_export(source)
    model = model_from_payload(payload, model_class)
    data_files = {name: data.numpy().tobytes() for name, data in payload["data_files"].items()}
    metadata = serving_metadata(payload, quantize, data_files)
    return write_artifact(script_module(model, quantize), out, metadata, data_files)


def write_artifact(module: torch.jit.ScriptModule, out: PathLike, metadata: Dict[str, Any], data_files: Dict[str, bytes]) -> Path:
    """Save ``module`` as a serving artifact at ``out`` (atomically) with ``metadata`` and the
    preprocessed folder's ``data_files`` (vocabularies as ``.npy``; stored packed). The encoders'
    ``version`` is computed from ``data_files``, so an artifact rewritten with edited encoders (a
    changed spec, say) loads as consistent."""
    encoders = {k: v for k, v in metadata["encoders"].items() if k != "version"}
    metadata = {**metadata, "encoders": {**encoders, "version": _digest(data_files, encoders)}}
    extra: Dict[str, Any] = {META_FILE: json.dumps(metadata, indent=1)}
    extra.update({DATA_PREFIX + name: data for name, data in _packed(data_files).items()})
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.jit.save(module, str(tmp), _extra_files=extra)
    return out


def is_serving_artifact(path: PathLike) -> bool:
    """Whether ``path`` is a serving artifact (a TorchScript zip holding ``iarm/serving.json``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/extra/" + META_FILE) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_extra_files(path: PathLike) -> Dict[str, bytes]:
    """The artifact's ``_extra_files`` by name, read from the zip (without loading the module)."""
    files: Dict[str, bytes] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = name.split("/extra/", 1)
            if len(parts) == 2 and parts[1].startswith("iarm/"):
                files[parts[1]] = archive.read(name)
    return files


@dataclass
class ServingArtifact:
    """A loaded serving artifact: the scripted module, its metadata and its data files."""

    path: Path
    module: torch.jit.ScriptModule
    metadata: Dict[str, Any]
    data_files: Dict[str, bytes]  # the preprocessed folder's, unpacked: spec.json, vocab/<field>.npy

    @classmethod
    def load(cls, path: PathLike) -> "ServingArtifact":
        import fbgemm_gpu  # noqa: F401  (registers the TBE inference ops)
        import torchrec  # noqa: F401  (and the KeyedJaggedTensor class)

        path = Path(path)
        if not is_serving_artifact(path):
            raise ValueError(f"{path}: not a serving artifact (no {META_FILE}); make one with iarm export RUN --serving")
        files = read_extra_files(path)
        metadata = json.loads(files[META_FILE])
        if metadata.get("format") != SERVING_FORMAT:
            raise ValueError(f"{path}: serving format {metadata.get('format')!r}, but this iarm_torchrec reads "
                             f"{SERVING_FORMAT!r} only: export the run again with iarm export RUN --serving")
        data = _unpacked({name[len(DATA_PREFIX) :]: body for name, body in files.items() if name.startswith(DATA_PREFIX)}, path)
        encoders = dict(metadata["encoders"])
        version = encoders.pop("version")
        if _digest(data, encoders) != version:
            raise ValueError(
                f"{path}: its encoders' data do not match their version {version}: the artifact is damaged; export it again"
            )
        module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
        for parameter in module.parameters():  # scoring only: no autograd records, plain .numpy()
            parameter.requires_grad_(False)
        return cls(path, module, metadata, data)

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec(**json.loads(self.data_files[SPEC_FILE]))

    def write_data_files(self, folder: Path) -> Path:
        """Recreate the preprocessed folder (spec and vocabularies, no splits) in ``folder``."""
        for name, body in self.data_files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        return folder

    def row_encoder(self, folder: Path) -> RowEncoder:
        """The encoder of JSON rows, over the vocabularies written to ``folder``."""
        self.write_data_files(folder)
        spec = self.spec
        return RowEncoder(spec, folder / _vocab_subdir(spec))

    def size_report(self) -> Dict[str, int]:
        """Bytes of the file, of its embedding tables as the TBEs store them (row-wise quantized rows
        with their alignment), of the other (dense) weights and of the encoders' data as stored
        (``serving.json``, the spec, the packed vocabularies)."""
        tables = dense = 0
        for name, t in self.module.state_dict().items():
            size = t.numel() * t.element_size()
            if name.endswith(("weights_host", "weights_uvm", "weights_dev")):
                tables += size
            elif t.is_floating_point():
                dense += size
        return {
            "file_bytes": self.path.stat().st_size,
            "table_bytes": int(tables),
            "dense_bytes": int(dense),
            "encoder_bytes": sum(len(b) for b in read_extra_files(self.path).values()),
        }


def _vocab_subdir(spec: FeatureSpec) -> str:
    vocab_dir = spec.options.get("vocab_dir", VOCAB_DIR)
    return VOCAB_DIR if Path(vocab_dir).is_absolute() else vocab_dir


__all__: List[str] = [
    "SERVING_FORMAT",
    "QUANTIZATIONS",
    "ServingArtifact",
    "export_serving",
    "is_serving_artifact",
    "quantized_module",
    "script_module",
]
