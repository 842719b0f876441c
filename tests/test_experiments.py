"""`iarm experiment`: presets expand into the paper's runs, finished runs are reused, seeds are
summarised as mean and standard deviation, and the report prints the paper's figures beside ours."""

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import List

import pytest

from iarm_torchrec.cli import build_parser
from iarm_torchrec.experiments.attention import ATTENTION_FILE
from iarm_torchrec.experiments.command import add_arguments, run, tuned_settings
from iarm_torchrec.experiments.paper import paper_figure
from iarm_torchrec.experiments.presets import TABLE2_MODELS, expand, run_dir, settings_key
from iarm_torchrec.experiments.report import render_report, render_table
from iarm_torchrec.experiments.results import METRICS_FILE, load_metrics, summarize
from iarm_torchrec.experiments.runner import ERROR_FILE, TIMING_FILE
from iarm_torchrec.train.settings import TrainSettings
from iarm_torchrec.train.trainer import train

BASE = TrainSettings(dataset="synthetic", epochs=1, batch_size=256)


def _finish(run_dir: Path, auc: float, loss: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS_FILE).write_text(json.dumps({"test_auc": auc, "test_logloss": loss}))


def test_table2_runs_every_model_at_every_seed(tmp_path: Path) -> None:
    runs = expand("table2", BASE, [0, 1, 2], tmp_path)
    assert len(runs) == 30
    assert [r.settings.model for r in runs[::3]] == TABLE2_MODELS
    assert [r.variant.label for r in runs[::3]] == [
        "FM", "Wide&Deep", "DeepFM", "AFM", "DCN", "NFM", "PNN", "AutoInt", "Deep Crossing", "IARM"
    ]
    assert [r.seed for r in runs[:3]] == [0, 1, 2] and [r.settings.seed for r in runs[:3]] == [0, 1, 2]
    assert len({r.run_dir for r in runs}) == 30
    assert all(r.settings.out == str(r.run_dir) and r.settings.epochs == 1 for r in runs)
    assert all(r.run_dir.parent.name.startswith(r.settings.model + "-") for r in runs)


def test_ablation_layers_split_and_attention_presets(tmp_path: Path) -> None:
    ablation = {r.variant.label: r.settings for r in expand("ablation", BASE, [0], tmp_path)}
    assert list(ablation) == ["IARM", "IARM*", "IRM", "IARM-"]
    flags = {k: tuple(s.model_config[f] for f in ("use_interest", "use_attention", "use_residual"))
             for k, s in ablation.items()}
    assert flags == {
        "IARM": (True, True, True),
        "IARM*": (False, True, True),
        "IRM": (True, False, True),
        "IARM-": (True, True, False),
    }
    layers = expand("layers", BASE, [0, 1, 2], tmp_path)
    assert [(r.settings.model_config["num_layers"], r.variant.group) for r in layers[::3]] == [(n, str(n)) for n in range(5)]
    # the study's settings of each model: IARM's own reach every IARM variant, DCN's reach DCN only
    configs = {"iarm": {"num_heads": 4}, "dcn": {"num_cross_layers": 1}}
    runs = {r.variant.label: r.settings for r in expand("table2", BASE, [0], tmp_path, ["fm", "dcn", "iarm"], configs)}
    assert runs["DCN"].model_config["num_cross_layers"] == 1 and runs["FM"].model_config == {"factor_init_scale": 0.01}
    assert runs["IARM"].model_config["num_heads"] == 4
    star = expand("ablation", BASE, [0], tmp_path, None, configs)[1].settings.model_config
    assert (star["num_heads"], star["use_interest"]) == (4, False)
    split = expand("split", BASE, [0], tmp_path, models=["fm", "iarm"])
    assert [(r.settings.model, r.settings.test_ratio, r.variant.group) for r in split] == [
        ("fm", 0.2, "0.2"), ("iarm", 0.2, "0.2"), ("fm", 0.3, "0.3"), ("iarm", 0.3, "0.3")
    ]
    attention = expand("attention", BASE, [4], tmp_path)
    assert [(r.settings.model, r.seed) for r in attention] == [("iarm", 4)]


def test_runs_are_shared_between_studies_and_keyed_by_what_changes_the_result(tmp_path: Path) -> None:
    iarm = {p: expand(p, BASE, [0], tmp_path)[i].run_dir for p, i in
            [("table2", 9), ("ablation", 0), ("layers", 3), ("attention", 0)]}
    assert len(set(iarm.values())) == 1, iarm
    assert iarm["table2"] == tmp_path / "runs" / iarm["table2"].parent.name / "seed-0"
    same = replace(BASE, model="iarm", out="elsewhere", device="cpu", resume="latest", cache_dir="/tmp/c")
    assert run_dir(tmp_path, same) == run_dir(tmp_path, replace(BASE, model="iarm"))
    changes = ({"epochs": 2}, {"lr": 0.01}, {"model_config": {"num_layers": 2}}, {"test_ratio": 0.3}, {"seed": 1},
               {"embedding_precision": "fp16"})
    for change in changes:
        assert run_dir(tmp_path, replace(BASE, model="iarm", **change)) != run_dir(tmp_path, replace(BASE, model="iarm"))
    # a setting added later is keyed only when changed: the folders of earlier runs still match
    assert "embedding_precision" not in settings_key(BASE)
    # an FM run's folder hashes FM's settings only: IARM's defaults changing would not move it
    assert "num_layers" not in json.dumps(settings_key(BASE.with_model("fm")))


def test_expand_rejects_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'table9'; choose one of"):
        expand("table9", BASE, [0], tmp_path)
    with pytest.raises(ValueError, match="at least one seed"):
        expand("table2", BASE, [], tmp_path)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        expand("table2", BASE, [1, 1], tmp_path)


def test_summaries_are_mean_and_sample_std_over_finished_seeds(tmp_path: Path) -> None:
    runs = expand("ablation", BASE, [0, 1, 2], tmp_path)
    aucs = {0: 0.81, 1: 0.83, 2: 0.86}
    for r in runs:
        if r.variant.label == "IARM":
            _finish(r.run_dir, aucs[r.seed], 0.40 - r.seed / 100)
        elif r.variant.label == "IRM" and r.seed == 1:
            _finish(r.run_dir, 0.8, 0.41)
    rows = summarize(runs)
    assert [(s.label, s.seeds) for s in rows] == [("IARM", [0, 1, 2]), ("IRM", [1])]
    iarm = rows[0]
    assert iarm.auc_mean == pytest.approx(statistics.fmean(aucs.values()))
    assert iarm.auc_std == pytest.approx(math.sqrt(((0.81 - 0.8333333) ** 2 + (0.83 - 0.8333333) ** 2 + (0.86 - 0.8333333) ** 2) / 2), rel=1e-5)
    assert iarm.loss_mean == pytest.approx(0.39) and iarm.loss_std == pytest.approx(0.01)
    assert math.isnan(rows[1].auc_std) and rows[1].n == 1


def test_bad_metrics_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text('{"test_auc": 0.8,\n oops}')
    with pytest.raises(ValueError, match=rf"{tmp_path}/metrics.json: line 2: not valid JSON"):
        load_metrics(tmp_path)
    (tmp_path / METRICS_FILE).write_text('{"test_auc": 0.8}')
    with pytest.raises(ValueError, match=r"metrics.json: missing \['test_logloss'\]"):
        load_metrics(tmp_path)
    assert load_metrics(tmp_path / "absent") is None


def _table_rows(markdown: str) -> List[List[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]


def test_report_prints_the_papers_figures_beside_ours(tmp_path: Path) -> None:
    runs = expand("table2", BASE, [0, 1], tmp_path, models=["autoint", "iarm"])
    for r in runs:
        _finish(r.run_dir, 0.84 + r.seed / 100, 0.33)
    rows = _table_rows(render_table("table2", "movielens-1m", summarize(runs)))
    assert rows[0] == ["Model", "AUC (ours)", "LOSS (ours)", "AUC (paper)", "LOSS (paper)", "seeds"]
    assert rows[1] == ["AutoInt", "0.8450 ± 0.0071", "0.3300 ± 0.0000", "0.8362", "0.3393", "2"]
    assert rows[2] == ["IARM", "0.8450 ± 0.0071", "0.3300 ± 0.0000", "0.8386", "0.3296", "2"]
    criteo = _table_rows(render_table("table2", "criteo", summarize(runs)))
    assert criteo[2][3:5] == ["0.7545", "0.4830"]
    synthetic = _table_rows(render_table("table2", "synthetic", summarize(runs)))
    assert synthetic[2][3:5] == ["—", "—"]
    report = render_report("table2", "movielens-1m", summarize(runs), {"seeds": "0,1"}, [("AUC", "plots/x.png")])
    assert report.startswith("## Table 2: effectiveness comparison of the models — movielens-1m")
    assert "- seeds: 0,1" in report and "![AUC](plots/x.png)" in report


def test_split_report_has_tables_6_layout_and_changes(tmp_path: Path) -> None:
    runs = expand("split", BASE, [0], tmp_path, models=["deepfm"])
    _finish(runs[0].run_dir, 0.73, 0.47)  # test ratio 0.2
    _finish(runs[1].run_dir, 0.72, 0.48)  # test ratio 0.3
    header, row = _table_rows(render_table("split", "criteo", summarize(runs)))
    assert header[:5] == ["Model", "AUC 0.2 (ours)", "LOSS 0.2 (ours)", "AUC 0.2 (paper)", "LOSS 0.2 (paper)"]
    cells = dict(zip(header, row))
    assert cells["AUC 0.2 (paper)"] == "0.7283" and cells["LOSS 0.3 (paper)"] == "0.4792"
    assert cells["AUC 0.3 (ours)"] == "0.7200"
    assert cells["AUC change (ours)"] == "-0.0100" and cells["LOSS change (ours)"] == "+0.0100"
    assert cells["AUC change (paper)"] == "-0.0034" and cells["LOSS change (paper)"] == "+0.0085"
    assert cells["seeds"] == "1/1"


def test_paper_figures_match_the_papers_tables() -> None:
    assert paper_figure("ablation", "criteo", "IARM*") == (0.7371, 0.4965)
    assert paper_figure("ablation", "avazu", "IRM") == (0.7637, 0.4019)
    assert paper_figure("ablation", "movielens-1m", "IARM-") == (0.8236, 0.3422)
    assert paper_figure("table2", "avazu", "FM") == (0.5437, 0.6221)
    assert paper_figure("split", "criteo", "IARM", "0.3") == (0.7527, 0.4993)
    assert paper_figure("split", "criteo", "IARM", "0.2") == paper_figure("table2", "criteo", "IARM")
    assert paper_figure("layers", "movielens-1m", "3 layers", "3") is None


def test_paper_recipe_renders_one_resumable_experiment_process() -> None:
    path = Path(__file__).resolve().parents[1] / "recipes" / "paper.py"
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    app = namespace["paper"](
        "--max-steps-per-epoch", "5", preset="split", dataset="criteo", data_dir="/d/criteo", out="/r/p",
        models="fm,iarm", max_retries=2, mounts=["type=bind", "src=/d", "dst=/d", "readonly"], env={"A": "1"},
    )
    (role,) = app.roles
    assert role.entrypoint == "python" and role.args[:2] == ["-m", "iarm_torchrec.experiments"]
    words = role.args[2:]
    assert words == ["--preset", "split", "--dataset", "criteo", "--data-dir", "/d/criteo", "--out", "/r/p",
                     "--seeds", "0,1,2", "--models", "fm,iarm", "--test-ratio", "0.2", "--valid-ratio", "0.1",
                     "--max-steps-per-epoch", "5"]
    assert role.max_retries == 2 and role.env["A"] == "1"
    assert [(m.src_path, m.dst_path, m.read_only) for m in role.mounts] == [("/d", "/d", True)]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(words)
    assert args.preset == ["split"] and args.models == ["fm", "iarm"] and args.seeds == [0, 1, 2]


def _study_args(tmp_path: Path, *flags: str) -> argparse.Namespace:
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"embedding_dim": 4, "device": "cpu", "model_config": {
        "num_layers": 1, "num_heads": 2, "head_dim": 4, "interest_layer_sizes": [8]}}))
    return build_parser().parse_args([  # through the `iarm` command's parser
        "experiment", "--dataset", "synthetic", "--synthetic-rows", "3000", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(tmp_path / "study"), "--seeds", "0", "--config", str(config), "--epochs", "1",
        "--batch-size", "128", "--max-steps-per-epoch", "4", *flags,
    ])


def test_experiment_trains_once_resumes_reports_and_survives_a_failed_run(tmp_path: Path) -> None:
    calls: List[TrainSettings] = []

    def counting(settings: TrainSettings) -> dict:
        calls.append(settings)
        if settings.model == "dcn":
            raise RuntimeError("boom")
        return train(settings)

    study = tmp_path / "study"
    assert run(_study_args(tmp_path, "--preset", "attention"), counting) == 0
    assert [(s.model, s.resume) for s in calls] == [("iarm", "latest")]  # a cut-off run would continue
    (iarm_dir,) = [Path(s.out) for s in calls]
    metrics = load_metrics(iarm_dir)
    assert metrics is not None and 0 < metrics["test_auc"] < 1 and (iarm_dir / TIMING_FILE).is_file()
    assert (iarm_dir / ATTENTION_FILE).is_file()
    report = (study / "report.md").read_text()
    assert "## Fig. 5: average attention between fields (IARM) — synthetic" in report
    assert "| Rank | Field pair | Mean attention |" in report
    assert f"- command: `iarm experiment --preset attention --dataset synthetic --cache-dir {tmp_path / 'cache'}" in report
    assert "function" not in report
    for name in ["synthetic-attention-layer1.png", "synthetic-attention-mean.png"]:
        assert (study / "plots" / name).stat().st_size > 1000
        assert f"(plots/{name})" in report
    stamp = (iarm_dir / METRICS_FILE).stat().st_mtime_ns

    # repeated, with a second study sharing the IARM run and a model whose training fails
    assert run(_study_args(tmp_path, "--preset", "table2,attention", "--models", "dcn,iarm"), counting) == 1
    assert [s.model for s in calls] == ["iarm", "dcn"]
    assert (iarm_dir / METRICS_FILE).stat().st_mtime_ns == stamp
    dcn_dir = Path(calls[1].out)
    assert (dcn_dir / ERROR_FILE).read_text() == "RuntimeError: boom\n" and load_metrics(dcn_dir) is None
    table2 = _table_rows((study / "table2.md").read_text())
    assert [row[0] for row in table2[1:]] == ["IARM"]
    assert table2[1][1] == f"{metrics['test_auc']:.4f}"
    assert (study / "report.md").read_text().index("## Table 2") < (study / "report.md").read_text().index("## Fig. 5")


def test_a_preset_runs_on_tuned_settings(tmp_path: Path) -> None:
    tuned = replace(BASE, lr=0.005, sparse_lr=0.2).with_model("dcn", {"num_cross_layers": 1})
    tuned.save(tmp_path)
    args = build_parser().parse_args(["experiment", "--preset", "table2", "--out", str(tmp_path / "s"),
                                      "--tuned", str(tmp_path / "settings.json"), "--models", "dcn,fm"])  # fmt: skip
    models, training = tuned_settings(args.tuned)
    runs = {r.settings.model: r.settings for r in expand("table2", BASE, [0], tmp_path, ["dcn", "fm"], models, training)}
    assert (runs["dcn"].lr, runs["dcn"].sparse_lr, runs["dcn"].model_config["num_cross_layers"]) == (0.005, 0.2, 1)
    assert (runs["fm"].lr, runs["fm"].sparse_lr) == (BASE.lr, BASE.sparse_lr)
