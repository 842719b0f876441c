"""The table of a tuned study (``scripts/tuned_study.sh``): per search space, the tuning's best
validation AUC and trial counts, then test AUC / log loss of its best settings over the seeds.

Usage: ``python scripts/tuned_report.py STUDY_ROOT`` (the ``ROOT`` of tuned_study.sh: ``tune/<space>``
and ``final/<space>/seed-N``); prints a Markdown table.
"""

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List


def _mean_sd(values: List[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def rows(root: Path) -> List[Dict[str, Any]]:
    table = []
    for summary_file in sorted((root / "tune").glob("*/summary.json")):
        space = summary_file.parent.name
        summary = json.loads(summary_file.read_text())
        best = json.loads((summary_file.parent / "best.json").read_text())
        finals = [json.loads(p.read_text()) for p in sorted((root / "final" / space).glob("seed-*/metrics.json"))]
        table.append({
            "space": space,
            "valid": summary["best_valid_auc"],
            "trials": summary["trials"],
            "best_trial": summary["best_trial"],
            "test_auc": [m["test_auc"] for m in finals],
            "test_logloss": [m["test_logloss"] for m in finals],
            "bayes": finals[0].get("bayes_optimal_test_auc") if finals else None,
            "settings": {"lr": best["lr"], "sparse_lr": best["sparse_lr"], "weight_decay": best["weight_decay"],
                         "lr_plateau_factor": best["lr_plateau_factor"], **best["model_config"]},
        })  # fmt: skip
    return table


def main(root: Path) -> None:
    table = rows(root)
    print("| search space | best valid AUC (trial) | trials complete / pruned / failed | test AUC | test log loss |")
    print("|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: -statistics.mean(r["test_auc"] or [0])):
        t = r["trials"]
        print(f"| {r['space']} | {r['valid']:.4f} ({r['best_trial']}) | {t['complete']} / {t['pruned']} / {t['fail']} "
              f"| {_mean_sd(r['test_auc'])} | {_mean_sd(r['test_logloss'])} |")
    print()
    for r in table:
        print(f"* {r['space']}: {json.dumps(r['settings'])}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
