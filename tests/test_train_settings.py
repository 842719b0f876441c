"""TrainSettings: defaults < --config FILE < flags, validation messages, the saved copy, the CLI."""

import json
from pathlib import Path

import pytest

from iarm_torchrec.cli import build_parser
from iarm_torchrec.data.cache import cache_dir
from iarm_torchrec.train.builder import data_source
from iarm_torchrec.train.settings import SETTINGS_FILE, TrainSettings


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps(
        {"epochs": 7, "lr": 0.01, "model_config": {"interest_layer_sizes": [64, 32], "use_attention": False, "num_heads": 4}}
    ))
    s = TrainSettings.from_args(["--config", str(config), "--lr", "0.5", "--num-layers", "2",
                                 "--model-config", '{"num_heads": 3}'])
    assert (s.epochs, s.lr, s.model_config["interest_layer_sizes"]) == (7, 0.5, [64, 32])
    m = s.model_config
    assert (m["use_attention"], m["num_layers"], m["use_interest"], m["num_heads"]) == (False, 2, True, 3)
    assert s.batch_size == TrainSettings().batch_size


def test_model_settings_reach_only_the_chosen_model(tmp_path: Path) -> None:
    dcn = TrainSettings.from_args(["--model", "dcn", "--model-config", '{"num_cross_layers": 2}', "--deep-layers", "8,4"])
    assert dcn.model_config == {
        "num_cross_layers": 2, "cross_type": "vector", "deep_layer_sizes": [8, 4], "dropout": 0.0, "norm": "none"}
    assert "num_layers" not in dcn.to_dict() and "use_interest" not in json.dumps(dcn.to_dict())
    file = tmp_path / "pnn.json"
    file.write_text('{"product": "outer"}')
    assert TrainSettings.from_args(["--model", "pnn", "--model-config", str(file)]).model_config["product"] == "outer"
    assert TrainSettings.from_args(["--model", "fm"]).model_config == {"factor_init_scale": 0.01}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "fm", "--num-layers", "5"], "--num-layers does not apply to model 'fm': fm takes factor_init_scale"),
        (["--model", "dcn", "--no-interest"], "--no-interest does not apply to model 'dcn': dcn takes cross_type"),
        (["--model", "dcn", "--model-config", '{"num_layers": 2}'],
         "model 'dcn' has no setting 'num_layers'; dcn takes cross_type (str, default 'vector'), deep_layer_sizes"),
        (["--model", "dcn", "--model-config", '{"num_cross_layers": "2"}'], "setting 'num_cross_layers' must be int"),
        (["--model", "dcn", "--model-config", '{"cross_type": "low_rank"}'], "model 'dcn': cross_type must be one of"),
        (["--num-heads", "0"], "model 'iarm': num_heads must be positive, got 0"),
        (["--model-config", "[1]"], "--model-config: expected a JSON object"),
        (["--model-config", "nothing.json"], "is neither a JSON object nor a file"),
    ],
)
def test_model_settings_the_model_lacks_are_refused_by_name(argv: list, message: str) -> None:
    with pytest.raises(ValueError) as error:
        TrainSettings.from_args(argv)
    assert message in str(error.value)


def test_a_config_file_of_another_model_does_not_leak_its_model_settings(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    TrainSettings(epochs=4, model_config={"num_layers": 1}).save(tmp_path)
    config = tmp_path / "settings.json"
    s = TrainSettings.from_args(["--config", str(config), "--model", "dcn"])
    assert (s.epochs, s.model, s.model_config["num_cross_layers"]) == (4, "dcn", 3)
    assert TrainSettings.from_args(["--config", str(config)]).model_config["num_layers"] == 1


def test_the_run_folder_keeps_the_effective_settings(tmp_path: Path) -> None:
    s = TrainSettings.from_args(["--epochs", "4", "--interest-layers", "8,4", "--resume"])
    assert json.loads((s.save(tmp_path)).read_text())["model_config"]["interest_layer_sizes"] == [8, 4]
    assert s.resume == "latest"
    s.save(tmp_path)
    assert TrainSettings.from_file(tmp_path / SETTINGS_FILE) == s


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"batch_size": -2}, "batch_size must be a positive global batch size, got -2"),
        ({"sparse_optimizer": "lamb"}, "sparse_optimizer must be one of ['adam', 'rowwise_adagrad', 'adagrad', 'sgd'], got 'lamb'"),
        ({"dataset": "criteo"}, "dataset 'criteo' needs --data-dir"),
        ({"valid_ratio": 1.5}, "valid_ratio must be in (0, 1), got 1.5"),
        ({"model_config": {"interest_layer_sizes": [64, 0]}}, "interest_layer_sizes must be one or more positive layer sizes"),
        ({"model": "xgboost"}, "model must be one of"),
        ({"lr": 0.0}, "lr must be a positive learning rate, got 0.0"),
        ({"checkpoint_every": -1}, "checkpoint_every must be >= 0, got -1"),
    ],
)
def test_bad_values_name_the_setting(settings: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        TrainSettings(**settings)
    assert message in str(error.value)


def test_bad_config_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 2,\n "lr": }')
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON \(line 2"):
        TrainSettings.from_file(bad)
    bad.write_text('{"epoch": 2}')
    with pytest.raises(ValueError, match=r"bad\.json: unknown setting\(s\) \['epoch'\]"):
        TrainSettings.from_file(bad)
    bad.write_text('{"num_layers": 2}')
    with pytest.raises(ValueError, match=r"are model settings now: put them under \"model_config\""):
        TrainSettings.from_file(bad)


def test_bad_flags_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        TrainSettings.from_args(["--interest-layers", "64,x"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_preprocessed_data_is_cached_by_what_it_depends_on(tmp_path: Path) -> None:
    base = dict(dataset="criteo", data_dir=str(tmp_path / "criteo"), out=str(tmp_path / "run"))
    (tmp_path / "criteo").mkdir()
    (tmp_path / "criteo" / "train.txt").write_text("1\t2\n")  # the key holds the raw files' identity

    def cached(settings: TrainSettings) -> Path:
        return cache_dir(data_source(settings))

    a = cached(TrainSettings(**base, min_count=5))
    assert a == cached(TrainSettings(**base, min_count=5, epochs=9, lr=0.1))  # training settings: same data
    assert a != cached(TrainSettings(**base, min_count=6))
    assert a.parent == tmp_path / "criteo" / ".iarm-cache"
    assert cached(TrainSettings(**base, cache_dir=str(tmp_path / "c"))).parent == tmp_path / "c"


def test_the_iarm_command_has_every_subcommand() -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--epochs", "2", "--sparse-optimizer", "adam"])
    assert TrainSettings.from_namespace(args).epochs == 2
    assert parser.parse_args(["export", "RUN", "--out", "m.pt"]).run == "RUN"
    assert parser.parse_args(["predict", "--model", "m.pt", "--input", "x", "--out", "y", "--unlabelled"]).unlabelled
    assert parser.parse_args(["data", "criteo", "src", "dst", "--min-count", "3"]).min_count == 3
    train_help = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "on CPU FBGEMM fuses only sgd, adagrad and rowwise_adagrad" in " ".join(train_help.split())
