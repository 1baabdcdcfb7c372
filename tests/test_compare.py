"""reproduce --config (asyncjax/compare.py): which method for my data, on class folders, at smoke
budget, in-process (the trainer's own command line is tested elsewhere)."""
import json
import os
import shutil

import pytest

from asyncjax import compare, example_data
from tests import helpers

SPEC = str(helpers.REPO / "configs" / "custom.py") + ":kind=folder,smoke=True"


def _results(workdir, name):
    return json.loads((workdir / name / "results.json").read_text())


def test_methods_on_class_folders_share_one_joint_phase_per_seed_and_rows_merge(tmp_path):
    root = tmp_path / "shapes"
    example_data.write(str(root), size=16, imbalance=10, max_count=40, test_per_class=4)
    workdir = tmp_path / "compare"
    overrides = [f"--config.data.root={root}", "--config.data.val_per_class=3", "--config.model.conv_weight_grad=xla"]
    text = compare.compare(str(workdir), SPEC, ["plain", "crt", "logit_adjustment"], 2, "smoke", overrides)
    # The decoupling family and logit adjustment took each seed's cross-entropy joint phase: trained
    # once, in cross_entropy_seed<s> (linear head), and never in their own workdirs.
    for seed in (0, 1):
        joint = workdir / f"cross_entropy_seed{seed}"
        assert (joint / "checkpoints" / "joint").is_dir()
        assert json.loads((joint / "config.json").read_text())["model"]["head"] == "linear"
        for method in ("crt", "logit_adjustment"):
            results = _results(workdir, f"{method}_seed{seed}")
            assert results["joint_from"] == os.path.abspath(joint) and results["config"]["seed"] == seed
            assert not (workdir / f"{method}_seed{seed}" / "checkpoints" / "joint").exists()
            assert '"joint"' not in (workdir / f"{method}_seed{seed}" / "metrics.jsonl").read_text()
        tau = _results(workdir, f"logit_adjustment_seed{seed}")["tau_choice"]
        assert tau["grid"] == list(compare.TAU_GRID)  # Chosen on validation: the grid's best.
        assert tau["val_overall"][tau["grid"].index(tau["value"])] == max(tau["val_overall"])
    table = json.loads((workdir / "compare_smoke.json").read_text())
    rows = {row["method"]: row for row in table["rows"]}
    assert set(rows) == {"plain", "crt", "logit_adjustment"} and table["split"] == "the test split"
    for method, row in rows.items():
        seeds = [_results(workdir, f"{method}_seed{s}") for s in (0, 1)]
        assert row["seeds"] == 2 and row["overall"] == [r["overall"] for r in seeds]
        assert row["few"] == [r["few"] for r in seeds] and row["evaluated_on"] == "test"
    assert "| crt * |" in text and "| plain |" in text
    # A rerun with another method adds its row; the earlier rows stay (their runs only reported).
    again = compare.compare(str(workdir), SPEC, ["tau_norm"], 2, "smoke", overrides)
    merged = json.loads((workdir / "compare_smoke.json").read_text())
    assert {row["method"] for row in merged["rows"]} == {"plain", "crt", "logit_adjustment", "tau_norm"}
    assert {row["method"]: row for row in merged["rows"]}["plain"] == rows["plain"]
    assert "| tau_norm * (tau " in again
    assert not (workdir / "tau_norm_seed0" / "checkpoints").exists()  # tau-norm trains nothing.
    from asyncjax import plot
    written = plot.make_plots(str(workdir))
    assert [os.path.basename(p) for p in written] == ["compare_smoke.png"] and os.path.getsize(written[0]) > 1000


def test_data_without_a_test_split_is_compared_on_validation(tmp_path):
    root = tmp_path / "shapes"
    example_data.write(str(root), size=16, imbalance=10, max_count=40, test_per_class=4)
    shutil.rmtree(root / "test")
    workdir = tmp_path / "compare"
    text = compare.compare(str(workdir), SPEC, ["plain"], 1, "smoke",
                           [f"--config.data.root={root}", "--config.data.val_per_class=3",
                            "--config.model.conv_weight_grad=xla"])
    assert "on the validation split (this data has no test split)" in text
    row, = json.loads((workdir / "compare_smoke.json").read_text())["rows"]
    assert row["evaluated_on"] == "val" and row["overall"] == [_results(workdir, "plain_seed0")["overall"]]


def test_budgets_scale_the_configs_own_epochs():
    config = compare.method_config(str(helpers.REPO / "configs" / "custom.py") + ":kind=folder", "crt", 1,
                                   "medium", ["--config.phase1.epochs=40"], joint_from="/runs/ce")
    assert config.phase1.epochs == 40  # Overrides win.
    assert config.phase2.epochs == 15 and config.phase2.warmup_epochs == 1  # 0.15 x 100 epochs; 5 x 0.15.
    assert config.classifier.epochs == 2 and config.joint_from == "/runs/ce" and config.model.head == "linear"
    assert config.seed == 1 and tuple(config.decoupling.tau_grid) == compare.TAU_GRID
    plain = compare.method_config(str(helpers.REPO / "configs" / "custom.py") + ":kind=folder", "plain", 0, "full", [])
    assert plain.phase1.epochs == 100 and plain.joint_from == "" and plain.model.head == "auto"
    with pytest.raises(KeyError):
        compare.method_config(str(helpers.REPO / "configs" / "custom.py"), "plain", 0, "huge", [])
