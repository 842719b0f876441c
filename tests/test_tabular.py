"""--dataset tabular: the schema file, the Arrow reader, the examples, and equality with the former built-in readers."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from iarm_torchrec.data.cache import DataSource, cache_dir
from iarm_torchrec.data.preprocess import encode, preprocess
from iarm_torchrec.data.schema import SchemaError, load_schema, parse_schema
from iarm_torchrec.data.spec import FeatureSpec
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "iarm_torchrec" / "data" / "schemas"
_spec = importlib.util.spec_from_file_location("example_generate", ROOT / "examples" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)  # type: ignore[union-attr]

MINIMAL = {"format": "csv", "files": "t.csv", "label": "y", "fields": [{"name": "u", "kind": "categorical"}], "user_fields": ["u"]}


def _with(**changes):
    return {**MINIMAL, **changes}


@pytest.mark.parametrize(
    "data, key",
    [
        (_with(format="xlsx"), "format:"),
        (_with(fields=[{"name": "u", "kind": "cat"}]), "fields[0] (u).kind"),
        (_with(fields=[{"name": "u", "kind": "multi_hot"}]), "fields[0] (u).separator"),
        (_with(fields=[{"name": "u", "kind": "categorical", "transform": "log1p"}]), "fields[0] (u).transform"),
        (_with(fields=[{"name": "u", "kind": "categorical", "min_count": 0}]), "fields[0] (u).min_count"),
        (_with(fields=[{"name": "u", "kind": "categorical", "derive": {"from": "t", "part": "minute"}}]), "fields[0] (u).derive.part"),
        (_with(label={"column": "r", "positive": "more than 3"}), "label.positive"),
        (_with(user_fields=["nobody"]), "user_fields"),
        (_with(header=False), "columns"),
        (_with(header=False, columns=["y"]), "columns"),
        (_with(colums=["y"]), "colums"),
        ({**_with(splits={"train": "a.csv"})}, "splits"),
        (_with(delimiter="::"), "delimiter"),
    ],
)
def test_schema_errors_name_the_key(data, key):
    with pytest.raises(SchemaError) as error:
        parse_schema(data, "my.yaml")
    assert f"my.yaml: {key}" in str(error.value)


def test_schema_file_and_yaml_errors(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("format: csv\nfields: [\n")
    with pytest.raises(SchemaError, match="s.yaml: not valid YAML"):
        load_schema(path)
    s = load_schema(SCHEMAS / "criteo.yaml")
    assert [f.name for f in s.fields][:2] == ["I1", "I2"] and s.delimiter == "\t" and s.quote is None


def test_criteo_x1_example_presplit_csv(tmp_path):
    data = generate.criteo_x1(tmp_path / "raw", rows=600)
    spec = preprocess("tabular", str(data), str(tmp_path / "out"), schema=ROOT / "examples" / "criteo_x1" / "schema.yaml", workers=1)
    lines = {s: len((data / f"{s}.csv").read_text().splitlines()) - 1 for s in ("train", "valid", "test")}
    assert spec.rows == lines  # pre-split files keep their rows, whatever --split says
    assert spec.dense == [f"I{i}" for i in range(1, 14)] and len(spec.sparse) == 26
    assert spec.options["schema"]["name"] == "criteo_x1" and spec.options["min_count"] == 10


def test_click_log_parquet_multi_hot_time_split_and_scoring(tmp_path):
    import pyarrow.parquet as pq

    data = generate.click_log(tmp_path / "raw", rows=3000, files=2, row_group=500)
    schema = ROOT / "examples" / "click_log" / "schema.yaml"
    out = tmp_path / "out"
    spec = preprocess("tabular", str(data), str(out), schema=schema, split="time", workers=1, chunk_mb=0.01)
    assert sum(spec.rows.values()) == 3000 and spec.rows["valid"] == 300 and spec.rows["test"] == 300
    tags = next(f for f in spec.sparse if f.name == "tags")
    assert tags.multi_hot and tags.max_length == 5
    assert next(f for f in spec.sparse if f.name == "item_id").vocab_size == 100001  # hash_buckets + id 0
    assert spec.user_fields == ["user_id", "age", "gender"]
    from iarm_torchrec.data.parts import read_part

    lengths = np.concatenate([read_part(p).multi_hot["tags"][1] for p in sorted((out / "train").iterdir())])
    assert lengths.max() <= 5 and lengths.min() == 0
    # new rows of the same schema, without the label: scored with the saved vocabularies
    table = generate.click_log_table(40, seed=5)
    pq.write_table(table.drop(["clicked"]), tmp_path / "new.parquet")
    encoded = encode(str(tmp_path / "new.parquet"), str(out), str(tmp_path / "enc"), labelled=False, workers=1)
    assert encoded.rows == {"test": 40} and encoded.options["labelled"] is False
    # the same rows as JSON, the timestamp as epoch seconds (hour and weekday derived from it): the same inputs
    import datetime

    from iarm_torchrec.data.encoders import RowEncoder

    utc = datetime.timezone.utc
    rows = [{**r, "event_time": r["event_time"].replace(tzinfo=utc).timestamp()} for r in table.drop(["clicked", "session_id"]).to_pylist()]
    dense, one_hot, multi = RowEncoder(spec, out / "vocab").encode(rows)
    (part,) = [read_part(p) for p in (tmp_path / "enc" / "test").iterdir()]
    assert (one_hot == part.sparse).all() and np.allclose(dense, part.dense, rtol=1e-6, atol=0)
    assert all((multi["tags"][k] == part.multi_hot["tags"][k]).all() for k in (0, 1))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_label_rule_derived_fields_and_neutral_rows(tmp_path):
    rows = ["user,ts,rating,tags"]
    for i in range(30):
        rows.append(f"u{i % 4},{1_700_000_000 + 3600 * i},{1 + i % 5},a|b|{'c' if i % 2 else ''}")
    _write(tmp_path / "r.csv", "\n".join(rows) + "\n")
    schema = {
        "format": "csv", "files": "r.csv", "label": {"column": "rating", "positive": "> 3", "negative": "< 3"},
        "fields": [
            {"name": "user", "kind": "categorical"},
            {"name": "tags", "kind": "multi_hot", "separator": "|", "max_length": 2},
            {"name": "hour", "kind": "categorical", "derive": {"from": "ts", "part": "hour"}},
            {"name": "weekday", "kind": "categorical", "derive": {"from": "ts", "part": "weekday"}},
        ],
        "user_fields": ["user"],
    }  # fmt: skip
    spec = preprocess("tabular", str(tmp_path), str(tmp_path / "out"), schema=schema, workers=1)
    assert sum(spec.rows.values()) == 24  # ratings 3 dropped
    assert spec.options["positives"]["train"] + spec.options["positives"].get("valid", 0) + spec.options["positives"].get("test", 0) == 12
    sizes = {f.name: f.vocab_size for f in spec.sparse}
    assert 10 < sizes["hour"] <= 24 + 1 and sizes["weekday"] == 3 + 1  # 30 hours from Tuesday 22:13 UTC span three days
    assert {f.name: f.max_length for f in spec.sparse}["tags"] == 2
    enc = encode(str(tmp_path / "r.csv"), str(tmp_path / "out"), str(tmp_path / "enc"), keep_neutral=True, workers=1)
    assert enc.rows == {"test": 30} and enc.options["neutral_rows"] == 6


def test_a_missing_epoch_time_derives_missing_parts_not_1970():
    import pyarrow as pa

    from iarm_torchrec.data.schema import TimeSource
    from iarm_torchrec.data.times import part_keys, time_seconds
    from iarm_torchrec.data.vocab import token_keys

    seconds, ok = time_seconds(pa.array([b"1700000000", b"", None, b"x"], pa.binary()), TimeSource("ts"))
    assert ok.tolist() == [True, True, True, False]  # empty and null are missing, "x" is not a time
    assert part_keys(seconds, ok, "hour").tolist() == [token_keys(np.array([b"22"]))[0], 0, 0, 0]


def _shard_ids(folder: Path) -> np.ndarray:
    from iarm_torchrec.data.parts import read_part

    return np.concatenate([read_part(p).sparse for p in sorted(folder.iterdir())])


@pytest.mark.parametrize(
    "derive, parts",
    [({"unit": "s"}, ["hour", "weekday"]), ({"format": "%Y-%m-%d %H:%M"}, ["hour", "weekday", "day", "month", "year"])],
    ids=["epoch", "format"],
)
def test_json_rows_with_the_time_column_encode_as_preprocessing(tmp_path, derive, parts):
    import datetime

    from iarm_torchrec.data.encoders import RowEncoder, RowError

    rng = np.random.default_rng(3)
    seconds = 1_600_000_000 + 60 * rng.integers(0, 3 * 365 * 1440, 200)  # three years, whole minutes
    utc = datetime.timezone.utc
    cells = [str(t) if "unit" in derive else datetime.datetime.fromtimestamp(t, utc).strftime(derive["format"]) for t in seconds]
    if "unit" in derive:
        cells[5] = cells[6] = ""  # missing times: missing parts (JSON null and "")
    _write(tmp_path / "t.csv", "y,u,ts\n" + "".join(f"{i % 2},u{i % 7},{c}\n" for i, c in enumerate(cells)))
    derived = [{"name": p, "kind": "categorical", "derive": {"from": "ts", "part": p, **derive}} for p in parts]
    schema = {"format": "csv", "files": "t.csv", "label": "y", "user_fields": ["u"], "fields": [{"name": "u", "kind": "categorical"}] + derived}
    spec = preprocess("tabular", str(tmp_path), str(tmp_path / "out"), schema=schema, workers=1)
    encode(str(tmp_path / "t.csv"), str(tmp_path / "out"), str(tmp_path / "enc"), workers=1)  # every row, in file order
    encoder = RowEncoder(spec, tmp_path / "out" / "vocab")
    assert encoder.fields == {"u": "one_hot", **{p: "one_hot" for p in parts}, "ts": "time"}
    # a JSON row carries the cell, an epoch also as a number (of either JSON type)
    rows = [{"u": f"u{i % 7}", "ts": c if "format" in derive or i % 3 == 0 else (None if c == "" else int(c) if i % 3 == 1 else float(c))}
            for i, c in enumerate(cells)]  # fmt: skip
    _, one_hot, _ = encoder.encode(rows)
    reference = _shard_ids(tmp_path / "enc" / "test")
    assert one_hot.shape == reference.shape and (one_hot == reference).all()
    assert len(np.unique(reference[:, 1])) > 12 and set(reference[:, 2]) >= set(range(1, 8))  # hours, all weekdays
    if "unit" in derive:
        assert (reference[[5, 6], 1:] == 0).all()
    # a derived field given directly is as before; given with its time, the row is refused; null is not given
    timed = [i for i in range(20) if cells[i]]
    when = [datetime.datetime.fromtimestamp(seconds[i], utc) for i in timed]
    direct = [{"u": rows[i]["u"], "hour": str(w.hour), "weekday": w.weekday()} for i, w in zip(timed, when)]
    np.testing.assert_array_equal(encoder.encode(direct)[1][:, :3], reference[timed, :3])
    with pytest.raises(RowError, match=r"^row 1: field 'hour': given along with 'ts', from which it is derived") as error:
        encoder.encode([rows[0], {**rows[1], "hour": 13}])
    assert error.value.row == 1 and error.value.field == "hour"
    assert (encoder.encode([{**rows[0], "hour": None}])[1] == reference[:1]).all()
    assert (encoder.encode([{**direct[0], "ts": None}])[1][:, :3] == reference[:1, :3]).all()
    bad = ["yesterday", "1e400", True, [1], float("nan")] + (["2021-02-30 10:00", "2021-02-03 10:00:00"] if "format" in derive else [])
    for value in bad:
        with pytest.raises(RowError, match=r"^row 1: field 'ts': expected ") as error:
            encoder.encode([rows[0], {"ts": value}])
        assert error.value.field == "ts"
    with pytest.raises(RowError, match=r"unknown field; fields are \[.*'ts'"):
        encoder.encode([{"when": 1}])


def test_a_time_column_named_like_a_field(tmp_path):
    from iarm_torchrec.data.encoders import RowEncoder
    from iarm_torchrec.data.spec import FeatureSpec, SparseFieldSpec

    def encoder(fields):
        schema = parse_schema({"format": "csv", "label": "y", "user_fields": [fields[0]["name"]], "fields": fields}).to_dict()
        sparse = [SparseFieldSpec(f["name"], 9) for f in fields if f["kind"] == "categorical"]
        dense = [f["name"] for f in fields if f["kind"] == "numeric"]
        return RowEncoder(FeatureSpec("toy", sparse, dense, options={"hash_buckets": {f.name: 8 for f in sparse}, "schema": schema}), tmp_path)

    hour = {"name": "hour", "kind": "categorical", "derive": {"from": "ts", "part": "hour"}}
    both = encoder([{"name": "ts", "kind": "numeric"}, hour])  # the field reads the time column itself: both
    assert both.fields == {"hour": "one_hot", "ts": "dense"}
    dense, one_hot, _ = both.encode([{"ts": 1_700_000_000}])
    assert dense.tolist() == [[1_700_000_000]] and (one_hot == both.encode([{"hour": "22"}])[1]).all()
    # the derived field takes its source's name: the name is the field's, the time cannot be sent
    own = encoder([{"name": "u", "kind": "categorical"}, {**hour, "name": "ts"}])
    assert own.fields == {"u": "one_hot", "ts": "one_hot"}
    assert (own.encode([{"ts": 13}])[1] == own.encode([{"ts": "13"}])[1]).all()


def test_bad_rows_name_file_line_and_field(tmp_path):
    schema = {"format": "csv", "files": "b.csv", "label": "y", "fields": [{"name": "u", "kind": "categorical"}, {"name": "x", "kind": "numeric"}], "user_fields": ["u"]}
    _write(tmp_path / "b.csv", "y,u,x\n1,a,2\n0,b\n1,c,zz\n0,d,4\n")
    with pytest.raises(ValueError, match=r"b.csv:3: expected 3 ','-separated columns \(y, u, x\), found 2"):
        preprocess("tabular", str(tmp_path), str(tmp_path / "o1"), schema=schema, workers=1)
    _write(tmp_path / "b.csv", "y,u,x\n1,a,2\n1,c,zz\n0,d,4\n")
    with pytest.raises(ValueError, match=r"b.csv:3: field x: 'zz' is not a number"):
        preprocess("tabular", str(tmp_path), str(tmp_path / "o2"), schema=schema, workers=1)
    _write(tmp_path / "b.csv", "y,u,x\n1,a,2\n0,b\n1,c,zz\n2,e,1\n0,d,4\n")
    spec = preprocess("tabular", str(tmp_path), str(tmp_path / "o3"), schema=schema, workers=1, skip_bad_rows=True)
    assert sum(spec.rows.values()) == 2 and spec.options["skipped_rows"] == 3
    (tmp_path / "b.csv").write_bytes(b"y,u,x\r\n1,a,2\r\n0,b\r,3\r\n0,d,4\r\n")  # CRLF is fine, a lone CR is named
    with pytest.raises(ValueError, match=r"b.csv:3: a carriage return \(\\r\) inside the line"):
        preprocess("tabular", str(tmp_path), str(tmp_path / "o5"), schema=schema, workers=1)
    _write(tmp_path / "b.csv", "y,u,x,extra\n1,a,2,3\n")
    with pytest.raises(ValueError, match=r"b.csv:1: columns \['extra'\] are not described by the schema"):
        preprocess("tabular", str(tmp_path), str(tmp_path / "o4"), schema=schema, workers=1)


def test_parquet_bad_row_names_row_group_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"y": pa.array([0, 1, 1, 2, 0, 1]), "u": pa.array(list("abcdef"))})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=3)
    schema = {"format": "parquet", "files": "p.parquet", "label": "y", "fields": [{"name": "u", "kind": "categorical"}], "user_fields": ["u"]}
    with pytest.raises(ValueError, match=r"p.parquet: row group 1, row 4: field y: '2' is not 0 or 1"):
        preprocess("tabular", str(tmp_path), str(tmp_path / "o"), schema=schema, workers=1)


def test_cache_key_follows_the_schema_content(tmp_path):
    _write(tmp_path / "t.csv", "y,u\n1,a\n")
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(MINIMAL).replace('"u"', '"u"'))
    source = DataSource("tabular", None, tmp_path / "cache", {"schema": str(path)}, 0)
    before = cache_dir(source)
    path.write_text(json.dumps({**MINIMAL, "min_count": 3}))
    assert cache_dir(source) != before


def _digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(folder.rglob("*.npy"))}


@pytest.mark.data
@pytest.mark.parametrize("dataset, folder", [("criteo", "criteo-kaggle-10k"), ("avazu", "avazu-sample")])
def test_shipped_schema_gives_the_former_builtin_readers_shards(tmp_path, dataset, folder):
    # tests/builtin_shards.json: sha256 (first 16 hex digits) of every shard and vocabulary that the
    # former CriteoReader / AvazuReader wrote here (workers=1, chunk_mb=0.5), before --dataset criteo
    # and avazu went through their shipped schemas; both ways of naming the schema must give them
    reference = json.loads((Path(__file__).parent / "builtin_shards.json").read_text())[dataset]
    source = str(shared_data(folder))
    a = preprocess(dataset, source, str(tmp_path / "builtin"), workers=1, chunk_mb=0.5)
    b = preprocess("tabular", source, str(tmp_path / "schema"), schema=SCHEMAS / f"{dataset}.yaml", workers=1, chunk_mb=0.5)
    assert len(reference["files"]) > 3
    assert _digests(tmp_path / "builtin") == reference["files"] == _digests(tmp_path / "schema")
    assert a.rows == reference["rows"] and a.dataset == dataset and b.dataset == "tabular"
    assert (a.sparse, a.dense, a.user_fields, a.rows) == (b.sparse, b.dense, b.user_fields, b.rows)
    assert FeatureSpec.load(tmp_path / "schema").options["schema"]["name"] == dataset


def test_component_and_recipe_pass_the_schema():
    from tests.test_components import load_recipe, option, torchrun_command, trainer_args

    from components import iarm

    words = trainer_args(torchrun_command(iarm.train(dataset="tabular", schema="/s.yaml", out="/o")))
    assert option(words, "--dataset") == "tabular" and option(words, "--schema") == "/s.yaml"
    app = load_recipe("tabular")("--embedding-dim", "8", schema="/s.yaml", nnodes=2, nproc_per_node=3, out="/o")
    words = torchrun_command(app)
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("2", "3")
    passed = trainer_args(words)
    assert option(passed, "--schema") == "/s.yaml" and option(passed, "--dataset") == "tabular"
    assert passed[-2:] == ["--embedding-dim", "8"]


def test_train_settings_take_the_schema(tmp_path):
    from iarm_torchrec.train.builder import data_source
    from iarm_torchrec.train.settings import TrainSettings

    with pytest.raises(ValueError, match="needs --schema"):
        TrainSettings(dataset="tabular")
    with pytest.raises(ValueError, match="--schema applies to --dataset tabular only"):
        TrainSettings(dataset="criteo", data_dir="x", schema=str(SCHEMAS / "criteo.yaml"))
    s = TrainSettings.from_args(["--dataset", "tabular", "--schema", str(SCHEMAS / "criteo.yaml"), "--min-count", "3"])
    source = data_source(s)
    assert source.options == {"min_count": 3, "schema": str(SCHEMAS / "criteo.yaml")}


def test_time_column_split_cuts_ties_in_file_order_across_chunks(tmp_path):
    times = [9, 5, 5, 1, 9, 5, 5, 1, 9, 9]
    _write(tmp_path / "t.csv", "y,u,t\n" + "".join(f"{i % 2},u{i},{t}\n" for i, t in enumerate(times)))
    schema = {**MINIMAL, "files": "t.csv", "time_column": "t", "ignore": []}
    from iarm_torchrec.data.rows import chunk_payloads
    from iarm_torchrec.data.splits import SplitConfig
    from iarm_torchrec.data.tabular import TabularReader

    reader = TabularReader(str(tmp_path), schema=schema)
    chunks = reader.plan(12)  # a few lines per chunk
    assert len(chunks) > 2
    reader.prepare_split(SplitConfig("time", 0.2, 0.2), chunks)
    codes = np.concatenate([reader.parse(c, d).split_codes for c, d in zip(chunks, chunk_payloads(chunks))])
    # sorted: 1 1 5 5 5 5 | 9 9 | 9 9 -> the 9s at rows 0 and 4 validate, at rows 8 and 9 test
    assert codes.tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 2, 2]
    spec = preprocess("tabular", str(tmp_path), str(tmp_path / "o"), schema=schema, split="time", valid_ratio=0.2, test_ratio=0.2, workers=1)
    assert spec.rows == {"train": 6, "valid": 2, "test": 2}
    with pytest.raises(ValueError, match="--split time needs an order"):
        preprocess("tabular", str(tmp_path), str(tmp_path / "o2"), schema={**MINIMAL, "files": "t.csv", "ignore": ["t"]}, split="time", workers=1)
