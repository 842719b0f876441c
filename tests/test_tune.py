"""``iarm tune``: Optuna's search on the validation split only, pruning, resuming, a config file out."""

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from iarm_torchrec.cli import build_parser
from iarm_torchrec.experiments.tune import BEST_FILE, SEARCH_SPACES, STUDY_FILE, tune
from iarm_torchrec.train.settings import TrainSettings

BASE = TrainSettings(dataset="synthetic", epochs=3, device="cpu")


class FakeTrain:
    """Stands in for the trainer: records what it was asked, writes settings.json, reports
    per-epoch validation AUCs that grow with the learning rate (so TPE has a signal)."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []

    def __call__(self, settings: TrainSettings, epoch_callbacks: Any = (), test: bool = True) -> Dict[str, Any]:
        assert not test, "a trial must never read the test split"
        self.calls.append({"lr": settings.lr, "out": settings.out, "model_config": settings.model_config})
        Path(settings.out).mkdir(parents=True, exist_ok=True)
        settings.save(settings.out)
        record: Dict[str, Any] = {}
        for epoch in range(settings.epochs):
            record = {"epoch": epoch, "valid_auc": 0.5 + settings.lr * 10 * (epoch + 1), "valid_logloss": 0.5}
            for callback in epoch_callbacks:
                callback(None, None, record)
        return {"valid_auc": record["valid_auc"], "valid_logloss": 0.5}


def test_tune_searches_prunes_resumes_and_writes_a_train_config(tmp_path: Path) -> None:
    fake = FakeTrain()
    summary = tune(BASE, "iarm", tmp_path, trials=8, train=fake)
    assert (tmp_path / STUDY_FILE).is_file() and len(fake.calls) == 8
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 8 and summary["trials"]["pruned"] >= 1
    best = TrainSettings.from_file(tmp_path / BEST_FILE)  # what `iarm train --config` takes
    assert best.model == "iarm" and best.lr == max(c["lr"] for c in fake.calls)  # a higher lr is never pruned
    assert summary["best_valid_auc"] == pytest.approx(0.5 + best.lr * 30)
    assert {"num_layers", "num_heads", "head_dim", "attention_dropout", "dropout"} <= set(fake.calls[0]["model_config"])
    # an interrupted study resumes: the budget counts the trials already done
    again = tune(BASE, "iarm", tmp_path, trials=10, train=fake)
    assert len(fake.calls) == 10 and again["trials"]["complete"] + again["trials"]["pruned"] == 10


def test_a_resumed_study_draws_new_settings_not_its_first_ones_again(tmp_path: Path) -> None:
    """Optuna keeps no sampler state in the study: resumed with the same seed, the random start
    would replay its first draws (found in a real resumed study: 5 of 6 new trials repeated)."""
    first, resumed = FakeTrain(), FakeTrain()
    tune(BASE, "iarm_variants", tmp_path, trials=4, train=first)
    tune(BASE, "iarm_variants", tmp_path, trials=8, train=resumed)
    drawn = [json.dumps([c["lr"], c["model_config"]], sort_keys=True) for c in first.calls + resumed.calls]
    assert len(drawn) == 8 and len(set(drawn)) == 8
    one_go = FakeTrain()
    tune(BASE, "iarm_variants", tmp_path / "one-go", trials=4, train=one_go)
    assert one_go.calls == [{**c, "out": c["out"].replace(str(tmp_path), str(tmp_path / "one-go"))} for c in first.calls]


def test_a_study_cut_off_in_its_first_trial_starts_again_at_the_defaults(tmp_path: Path) -> None:
    class CutOff(FakeTrain):
        def __call__(self, settings: TrainSettings, epoch_callbacks: Any = (), test: bool = True) -> Dict[str, Any]:
            raise KeyboardInterrupt  # what Ctrl-C or a killed job leaves: the trial RUNNING in the study

    with pytest.raises(KeyboardInterrupt):
        tune(BASE, "iarm", tmp_path, trials=3, train=CutOff())
    fake = FakeTrain()
    summary = tune(BASE, "iarm", tmp_path, trials=3, train=fake)
    assert len(fake.calls) == 3 and summary["trials"]["complete"] + summary["trials"]["pruned"] == 3
    start = TrainSettings(model="iarm")
    assert fake.calls[0]["lr"] == BASE.lr and fake.calls[0]["model_config"] == start.model_config


def test_every_search_space_draws_valid_settings_and_starts_at_the_defaults(tmp_path: Path) -> None:
    import optuna

    defaults = {"iarm_variants": {"deep_layer_sizes": [400, 400, 400], "num_cross_layers": 1}}
    for name, space in SEARCH_SPACES.items():
        fake = FakeTrain()
        tune(BASE, name, tmp_path / name, trials=2, train=fake)
        for call in fake.calls:
            TrainSettings(model=space.model, model_config=call["model_config"])  # the registry accepts them
        # trial 0 is the untuned starting point: the base learning rates and the model's defaults
        start = TrainSettings(model=space.model, model_config=defaults.get(name, {}))
        assert fake.calls[0]["lr"] == BASE.lr and fake.calls[0]["model_config"] == start.model_config, name
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name / STUDY_FILE}")
        assert study.trials[0].params == {**study.trials[0].params, **space.start}


def test_the_embedding_decay_is_searched_only_where_the_tables_optimizer_applies_it(tmp_path: Path) -> None:
    fused = FakeTrain()  # FBGEMM's fused CPU kernels ignore it (the trainer refuses it): never drawn
    tune(BASE, "fm", tmp_path / "fused", trials=3, train=fused)
    dense = FakeTrain()
    tune(dataclasses.replace(BASE, sparse_optimizer="adam"), "fm", tmp_path / "dense", trials=3, train=dense)
    settings = [TrainSettings.from_file(Path(c["out"]) / "settings.json") for c in fused.calls + dense.calls]
    assert all(s.embedding_weight_decay == 0 for s in settings[:3])
    assert any(s.embedding_weight_decay > 0 for s in settings[3:])


@pytest.mark.slow
def test_iarm_tune_trains_real_trials_without_the_test_split(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "tune", "--model", "iarm", "--trials", "2", "--out", str(tmp_path / "study"), "--dataset", "synthetic",
        "--synthetic-rows", "3000", "--cache-dir", str(tmp_path / "cache"), "--epochs", "2", "--batch-size", "256",
        "--max-steps-per-epoch", "3", "--device", "cpu",
    ])  # fmt: skip
    assert args.handler(args) == 0
    trials = sorted((tmp_path / "study" / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        assert "valid_auc" in metrics and not any(k.startswith("test_") for k in metrics)
        assert not (trial / "checkpoints").exists()
    assert TrainSettings.from_file(tmp_path / "study" / BEST_FILE).model == "iarm"
