"""The serving artifact: quantized + scripted model equal to the float model, loadable (vocabularies
included) without this package, scored by ``iarm predict`` like the float export, refused when of
another format or damaged; every registered model scripts."""

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from iarm_torchrec.cli import main as iarm
from iarm_torchrec.data.loader import PADDING_LABEL, ShardedBatchLoader
from iarm_torchrec.data.synthetic import TSV_DIR
from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.inference.export import load_exported
from iarm_torchrec.inference.predict import predict
from iarm_torchrec.inference.packed_keys import pack_keys
from iarm_torchrec.inference.serving import (
    META_FILE,
    SERVING_FORMAT,
    ServingArtifact,
    export_serving,
    is_serving_artifact,
    read_extra_files,
    script_module,
)
from iarm_torchrec.models.registry import MODEL_NAMES, make_config
from iarm_torchrec.train.layout import RUN_FILE
from train_utils import checkpointed_run

# Largest |p_served - p_float| over the synthetic test split (probabilities). Measured on the shared
# small run (D = 8, 2,000 test rows): none 6e-8 (the same fp32 rows through the TBE), fp16 8e-5,
# int8 7e-4, int4 1.6e-2; the bounds leave about 4x headroom for other seeds and machines.
TOLERANCE: Dict[str, float] = {"none": 1e-5, "fp16": 5e-4, "int8": 3e-3, "int4": 6e-2}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpointed_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def artifacts(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    folder = tmp_path_factory.mktemp("serving")
    out = {q: export_serving(run, folder / f"{q}.pt", q) for q in ("none", "fp16", "int8")}
    assert iarm(["export", str(run), "--serving", "--quantize", "int4", "--out", str(folder / "int4.pt")]) == 0
    out["int4"] = folder / "int4.pt"
    return out


@pytest.fixture(scope="module")
def float_export(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("float") / "iarm.pt"
    assert iarm(["export", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def data_dir(run: Path) -> Path:
    return Path(json.loads((run / RUN_FILE).read_text())["data_dir"])


def _scores(model, data_dir: Path, probabilities: bool) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for batch in ShardedBatchLoader(data_dir, "test", batch_size=1000, drop_last=False):
            p = model(batch.dense_features, batch.sparse_features)
            out.append((p if probabilities else torch.sigmoid(p))[batch.labels != PADDING_LABEL])
    return torch.cat(out)


@pytest.mark.parametrize("quantization", ["none", "fp16", "int8", "int4"])
def test_served_probabilities_equal_the_float_model(
    quantization: str, artifacts: Dict[str, Path], float_export: Path, data_dir: Path
) -> None:
    expected = _scores(load_exported(float_export), data_dir, probabilities=False)
    artifact = ServingArtifact.load(artifacts[quantization])
    served = _scores(artifact.module, data_dir, probabilities=True)
    error = (served - expected).abs().max().item()
    print(f"{quantization}: max |p_served - p_float| = {error:.3g} over {len(served)} rows")
    assert error <= TOLERANCE[quantization]
    assert artifact.metadata["quantization"] == quantization and artifact.metadata["model"] == "iarm"


def test_the_artifact_is_no_larger_than_its_tables_plus_a_constant(artifacts: Dict[str, Path]) -> None:
    sizes = {q: ServingArtifact.load(p).size_report() for q, p in artifacts.items()}
    for q, s in sizes.items():
        overhead = s["file_bytes"] - s["table_bytes"] - s["dense_bytes"] - s["encoder_bytes"]
        assert 0 < overhead < 512 * 1024, (q, s)  # TorchScript code and zip headers
    # the TBE rows at D = 8: fp32 32 B, fp16 and int8 16 B (alignment), int4 16 B
    assert sizes["int8"]["table_bytes"] < sizes["none"]["table_bytes"]
    assert sizes["int8"]["table_bytes"] == sizes["fp16"]["table_bytes"]


def test_the_artifact_loads_without_this_package(artifacts: Dict[str, Path], tmp_path: Path) -> None:
    """``torch.jit.load`` in a Python with torch, fbgemm and torchrec but where ``import iarm_torchrec`` fails,
    and the vocabularies read from the zip and decoded with numpy and zlib as ``docs/serving.md`` shows."""
    artifact = ServingArtifact.load(artifacts["int8"])
    keys = artifact.metadata["inputs"]["sparse_keys"]
    batch = 5
    lengths = torch.ones(len(keys) * batch, dtype=torch.int32)
    values = torch.randint(0, 3, (len(keys) * batch,), dtype=torch.int32)
    dense = torch.rand(batch, len(artifact.metadata["inputs"]["dense_fields"]))
    torch.save({"dense": dense, "values": values, "lengths": lengths}, tmp_path / "inputs.pt")
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)
    expected = artifact.module(dense, kjt)
    script = f"""
import sys
sys.path = [p for p in sys.path if p.endswith("site-packages") or "/lib/python3" in p and "site-packages" not in p]
try:
    import iarm_torchrec
except ImportError:
    pass
else:
    raise SystemExit("iarm_torchrec is importable here: the test proves nothing")
import json, zipfile, zlib, numpy as np, torch, fbgemm_gpu, torchrec
extra = {{{META_FILE!r}: ""}}
module = torch.jit.load({str(artifacts["int8"])!r}, _extra_files=extra)
meta = json.loads(extra[{META_FILE!r}])
x = torch.load({str(tmp_path / "inputs.pt")!r})
kjt = torchrec.KeyedJaggedTensor(keys=meta["inputs"]["sparse_keys"], values=x["values"], lengths=x["lengths"])
torch.save(module(x["dense"], kjt), {str(tmp_path / "out.pt")!r})
with zipfile.ZipFile({str(artifacts["int8"])!r}) as z:
    files = {{n.split("/extra/", 1)[1]: z.read(n) for n in z.namelist() if "/extra/iarm/" in n}}
vocab = {{}}
for field, e in meta["encoders"]["fields"].items():
    if e["kind"] == "vocab":
        planes = np.frombuffer(zlib.decompress(files[e["file"]]), np.uint8).reshape(8, -1)
        vocab[field] = planes.T.copy().view("<u8").ravel()
np.savez({str(tmp_path / "vocab.npz")!r}, **vocab)
print(meta["model"], meta["quantization"])
"""
    site = [p for p in sys.path if p.endswith("site-packages")]
    # -I: no PYTHONPATH, no user site, no script folder; -S: no .pth files, so not the editable install's finder
    code = f"import sys; sys.path[:0] = {site!r}; exec({script!r})"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["iarm", "int8"]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    decoded = np.load(tmp_path / "vocab.npz")
    fields = artifact.metadata["encoders"]["fields"]
    assert sorted(decoded.files) == sorted(f for f, e in fields.items() if e["kind"] == "vocab") != []
    for field in decoded.files:
        keys = np.load(io.BytesIO(artifact.data_files[f"vocab/{field}.npy"]))
        assert np.array_equal(decoded[field], keys) and len(keys) + 1 == fields[field]["size"]


def test_the_vocabularies_are_stored_packed(artifacts: Dict[str, Path], data_dir: Path) -> None:
    """Each vocabulary is in the artifact as pack_keys of the preprocessed keys, not as its .npy."""
    stored = read_extra_files(artifacts["int8"])
    npy = sorted((data_dir / "vocab").glob("*.npy"))
    assert npy and not any(name.endswith(".npy") for name in stored)
    for path in npy:
        keys = np.load(path)
        blob = stored[f"iarm/data/vocab/{path.stem}.planes.zlib"]
        assert blob == pack_keys(keys) and len(blob) < path.stat().st_size


def _rewritten(artifact: Path, out: Path, change: Dict[str, bytes]) -> Path:
    """A zip of ``artifact``'s ``iarm/`` extra files with some replaced (enough for the checks that
    ServingArtifact.load makes before it loads the module)."""
    with zipfile.ZipFile(out, "w") as archive:
        for name, body in read_extra_files(artifact).items():
            archive.writestr(f"archive/extra/{name}", change.get(name, body))
    return out


@pytest.mark.parametrize("version", ["iarm_torchrec.serving/1", "iarm_torchrec.serving/3"])
def test_another_format_is_refused_in_one_line_naming_the_file(version: str, artifacts: Dict[str, Path], tmp_path: Path) -> None:
    meta = json.loads(read_extra_files(artifacts["int8"])[META_FILE])
    other = _rewritten(artifacts["int8"], tmp_path / "other.pt", {META_FILE: json.dumps({**meta, "format": version}).encode()})
    with pytest.raises(ValueError) as error:
        ServingArtifact.load(other)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{other}: serving format {version!r}")
    assert SERVING_FORMAT in message and "export the run again" in message


def test_a_damaged_vocabulary_is_refused(artifacts: Dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    stored = read_extra_files(artifacts["int8"])
    name = next(n for n in stored if n.endswith(".planes.zlib"))
    truncated = _rewritten(artifacts["int8"], tmp_path / "truncated.pt", {name: stored[name][:-4]})
    with pytest.raises(ValueError) as error:
        ServingArtifact.load(truncated)
    assert str(error.value).startswith(f"{truncated}: {name}: not a u64le-byteplanes-zlib packing")
    keys = np.load(data_dir / "vocab" / (Path(name).name[: -len(".planes.zlib")] + ".npy"))
    other_keys = _rewritten(artifacts["int8"], tmp_path / "other.pt", {name: pack_keys(keys[1:])})
    with pytest.raises(ValueError, match="encoders' data do not match their version .*: the artifact is damaged"):
        ServingArtifact.load(other_keys)


def test_predict_reads_the_artifact_like_the_export(
    artifacts: Dict[str, Path], float_export: Path, data_dir: Path, tmp_path: Path
) -> None:
    spec = json.loads((data_dir / "spec.json").read_text())
    lines = (data_dir / TSV_DIR / "train.txt").read_bytes().splitlines(keepends=True)
    raw = tmp_path / "test.txt"
    raw.write_bytes(b"".join(lines[len(lines) - spec["rows"]["test"] :]))
    assert is_serving_artifact(artifacts["int8"]) and not is_serving_artifact(float_export)
    from_export = predict(float_export, raw, tmp_path / "float.txt", progress=False)
    for q in ("none", "int8"):
        assert iarm(["predict", "--model", str(artifacts[q]), "--input", str(raw), "--out", str(tmp_path / f"{q}.txt")]) == 0
        served = np.loadtxt(tmp_path / f"{q}.txt")
        assert len(served) == len(from_export) == spec["rows"]["test"]
        assert np.abs(served - from_export.numpy()).max() <= TOLERANCE[q] + 1e-6  # + the files' %.6g rounding


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_scripts_and_matches(name: str) -> None:
    torch.manual_seed(0)
    features = FeatureConfig(
        [SparseFeature("a", 50), SparseFeature("b", 30), SparseFeature("g", 10, multi_hot=True)], ["d"], ["a"], 16
    )
    model = make_config(name, features).build(torch.device("cpu")).eval()
    kjt = KeyedJaggedTensor(
        keys=["a", "b", "g"],
        values=torch.tensor([1, 7, 49, 0, 3, 29, 2, 9, 4, 1, 5]),
        lengths=torch.tensor([1, 1, 1, 1, 1, 1, 2, 0, 3]),
    )
    dense = torch.rand(3, 1)
    with torch.no_grad():
        expected = torch.sigmoid(model(dense, kjt))
        for quantization, tolerance in (("none", 1e-6), ("int8", 3e-3)):
            scripted = script_module(model, quantization)
            assert isinstance(scripted, torch.jit.ScriptModule)
            assert (scripted(dense, kjt) - expected).abs().max().item() <= tolerance


@pytest.mark.slow
@pytest.mark.data
def test_movielens_auc_of_int8_and_int4_is_within_target_of_float(tmp_path: Path) -> None:
    """The issue's accuracy targets on real data: a short IARM run on MovieLens-1M (20% test split),
    int8 AUC within 0.001 of float, int4 within 0.003 (the benchmark measures the longer run)."""
    from torchmetrics.functional.classification import binary_auroc

    from conftest import shared_data
    from train_utils import run_env

    source = shared_data("movielens-1m")
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "iarm_torchrec.train", "--dataset", "movielens-1m", "--data-dir", str(source),
        "--field-set", "paper", "--test-ratio", "0.2", "--valid-ratio", "0.1", "--cache-dir", str(tmp_path / "cache"),
        "--batch-size", "2048", "--epochs", "1", "--max-steps-per-epoch", "60", "--embedding-dim", "16",
        "--num-layers", "1", "--head-dim", "8", "--interest-layers", "16", "--device", "cpu", "--out", str(run),
    ]  # fmt: skip
    subprocess.run(command, check=True, env=run_env(), timeout=600, capture_output=True)
    data_dir = Path(json.loads((run / RUN_FILE).read_text())["data_dir"])
    export = tmp_path / "float.pt"
    assert iarm(["export", str(run), "--out", str(export)]) == 0

    def auc_of(model, probabilities: bool) -> float:
        scores, labels = [], []
        with torch.no_grad():
            for batch in ShardedBatchLoader(data_dir, "test", batch_size=8192, drop_last=False):
                keep = batch.labels != PADDING_LABEL
                p = model(batch.dense_features, batch.sparse_features)
                scores.append((p if probabilities else torch.sigmoid(p))[keep])
                labels.append(batch.labels[keep])
        return float(binary_auroc(torch.cat(scores), torch.cat(labels).long()))

    float_auc = auc_of(load_exported(export), probabilities=False)
    assert float_auc > 0.7
    for quantization, bound in (("int8", 0.001), ("int4", 0.003)):
        artifact = export_serving(run, tmp_path / f"{quantization}.pt", quantization)
        delta = auc_of(ServingArtifact.load(artifact).module, probabilities=True) - float_auc
        print(f"{quantization}: AUC {float_auc + delta:.5f}, float {float_auc:.5f}, delta {delta:+.6f}")
        assert abs(delta) <= bound
