"""TrainSettings: defaults < --config FILE < flags, validation messages, the saved copy, the CLI."""

import json
from pathlib import Path

import pytest

from iarm_torchrec.cli import build_parser
from iarm_torchrec.data.cache import cache_dir
from iarm_torchrec.train.data import data_source
from iarm_torchrec.train.settings import SETTINGS_FILE, TrainSettings


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"epochs": 7, "lr": 0.01, "interest_layers": [64, 32], "use_attention": False}))
    s = TrainSettings.from_args(["--config", str(config), "--lr", "0.5", "--no-residual"])
    assert (s.epochs, s.lr, s.interest_layers) == (7, 0.5, [64, 32])
    assert (s.use_attention, s.use_residual, s.use_interest) == (False, False, True)
    assert s.batch_size == TrainSettings().batch_size


def test_the_run_folder_keeps_the_effective_settings(tmp_path: Path) -> None:
    s = TrainSettings.from_args(["--epochs", "4", "--interest-layers", "8,4", "--resume"])
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
        ({"interest_layers": [64, 0]}, "interest_layers must be positive layer sizes"),
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


def test_bad_flags_are_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        TrainSettings.from_args(["--interest-layers", "64,x"])
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_preprocessed_data_is_cached_by_what_it_depends_on(tmp_path: Path) -> None:
    base = dict(dataset="criteo", data_dir=str(tmp_path / "criteo"), out=str(tmp_path / "run"))
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
