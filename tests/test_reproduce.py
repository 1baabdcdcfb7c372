"""The reproduction harness end to end at the smoke budget (tiny data, 2 seeds), and its resume."""
import json
import subprocess
import sys

import numpy as np
import pytest

from asyncjax import plot
from tests import helpers


def test_reproduce_smoke_table(tmp_path):
    """The table's command line, its resume and `python -m asyncjax.plot` on its workdir."""
    data = helpers.write_tiny_cifar(tmp_path / "data")
    command = [sys.executable, "-m", "asyncjax.reproduce", "--budget=smoke", f"--workdir={tmp_path / 'rep'}",
               "--imbalance=10", "--seeds=2", "--methods=plain,async", f"--config.data.cifar100_dir={data}",
               *[a for a in helpers.TINY if "imbalance" not in a]]
    result = subprocess.run(command, cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (tmp_path / "rep" / "cifar100_lt_smoke.md").read_text()
    assert "| plain | 10 |" in table and "| async | 10 |" in table
    assert table.count("±") >= 2  # Mean ± std over the two seeds.
    for row in ("plain_if10_seed0", "plain_if10_seed1", "async_if10_seed0", "async_if10_seed1"):
        assert (tmp_path / "rep" / row / "results.json").exists()
    # A rerun of one method only reports its finished runs and merges into the table: no row is lost.
    # In-process (reproduce.reproduce, what the command line above ran): no second JAX start-up.
    import contextlib
    import io

    from asyncjax import reproduce
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        reproduce.reproduce(str(tmp_path / "rep"), "smoke", 2, ["plain"], [10],
                            [a for a in command if a.startswith("--config.")])
    assert printed.getvalue().count("is complete") == 2
    assert (tmp_path / "rep" / "cifar100_lt_smoke.md").read_text() == table
    figures = json.loads((tmp_path / "rep" / "cifar100_lt_smoke.json").read_text())
    plain = next(r for r in figures["rows"] if r["method"] == "plain")
    seed1 = json.loads((tmp_path / "rep" / "plain_if10_seed1" / "results.json").read_text())
    assert len(plain["overall"]) == 2 and plain["overall"][1] == seed1["overall"]
    plotted = subprocess.run([sys.executable, "-m", "asyncjax.plot", f"--workdir={tmp_path / 'rep'}"],
                             cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True, timeout=300)
    assert plotted.returncode == 0, plotted.stderr[-3000:]
    assert (tmp_path / "rep" / "plots" / "cifar100_lt_smoke.png").stat().st_size > 1000


def test_ablation_smoke_table_and_plot(tmp_path):
    data = helpers.write_tiny_cifar(tmp_path / "data")
    root = tmp_path / "ablation"
    command = [sys.executable, "-m", "asyncjax.reproduce", "--budget=smoke", f"--workdir={root}",
               "--ablation=memory_size", "--values=2,4", "--imbalance=10", f"--config.data.cifar100_dir={data}",
               *[a for a in helpers.TINY if "imbalance" not in a and "per_class" not in a]]
    result = subprocess.run(command, cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (root / "ablation_memory_size_smoke.md").read_text()
    assert "| memory.per_class |" in table and "| 2 |" in table and "| 4 |" in table
    banks = [np.load(root / f"ablation_memory_size_{k}_seed0" / "memory_bank.npz")["bank"] for k in (2, 4)]
    assert banks[0].shape[1] == 2 and banks[1].shape[1] == 4  # The ablated value reached the run.
    plot.make_plots(str(root))  # What `python -m asyncjax.plot --workdir=ROOT` runs (its CLI: the table test).
    assert (root / "plots" / "ablation_memory_size_smoke.png").stat().st_size > 1000


def test_budgets_scale_the_recipe():
    """short: 8 epochs per phase, the recipe's warm-up share (5 of 200 epochs -> 1), one monitoring
    look mid-phase; full: the paper's recipe untouched; overrides still win."""
    from asyncjax import config_utils, experiments

    short = experiments.row_config("ldam_drw", 100, 2, "short", ["--config.phase2.epochs=12"])
    assert (short.phase1.epochs, short.phase1.warmup_epochs, short.phase2.epochs) == (8, 1, 12)
    assert short.eval_every_epochs == 4 and short.seed == 2 and short.data.imbalance == 100
    assert short.phase1.weight_decay == 2e-4 and short.phase1.batch_size == 128  # Its authors' recipe.
    config_utils.resolve_head(short)
    assert short.model.head == "cosine"  # LDAM's normalised classifier.
    full = experiments.row_config("async", 50, 0, "full", [])
    assert (full.phase1.epochs, full.phase1.warmup_epochs, full.phase2.warmup_epochs) == (200, 5, 5)
    assert tuple(full.phase1.decay_fractions) == (0.8, 0.9) and full.eval_every_epochs == 20


def test_phase2_study_smoke_from_one_phase1(tmp_path):
    """The study at smoke budget: one phase I (the defaults' run), the other value of one factor
    from it, validation figures only, and its plot."""
    data = helpers.write_tiny_cifar(tmp_path / "data", train_per_class=24)
    root = tmp_path / "study"
    command = [sys.executable, "-m", "asyncjax.reproduce", "--study=phase2", "--budget=smoke", f"--workdir={root}",
               "--factors=phase2.batch_norm", "--seeds=1", f"--config.data.cifar100_dir={data}",
               *[a for a in helpers.TINY if "imbalance" not in a]]
    result = subprocess.run(command, cwd=helpers.REPO, env=helpers.cli_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (root / "study_phase2_smoke.md").read_text()
    assert "| phase2.batch_norm | update |" in table and "| phase2.batch_norm | freeze |" in table
    assert "validation split" in table
    variant = json.loads((root / "phase2.batch_norm=freeze_seed0" / "results.json").read_text())
    assert variant["phase1_from"] == str(root / "base_seed0")
    assert "overall" not in variant and variant["test_read"] is False  # Study runs read no test split.
    assert "With a post-hoc correction" in table and "| tail_bias |" in table and "| logit_adjustment |" in table
    assert variant["config"]["phase2"]["batch_norm"] == "freeze"
    assert not (root / "phase2.batch_norm=update_seed0").exists()  # The default is the base run itself.
    figures = json.loads((root / "study_phase2_smoke.json").read_text())
    assert [r["value"] for r in figures["rows"]] == ["update", "freeze"]
    assert figures["rows"][1]["overall"][0] == variant["val"]["overall"]
    plot.make_plots(str(root))  # What `python -m asyncjax.plot --workdir=ROOT` runs (its CLI: the table test).
    assert (root / "plots" / "study_phase2_smoke.png").stat().st_size > 1000
    # A study around other defaults (tau 0.1) over the same phase I: its base takes phase I from the
    # first study's base, and so does its variant (the new base holds no phase-I checkpoints).
    # In-process from here on (studies.study, what the command line above runs): the command line is
    # tested once above, and each further process would pay JAX's start-up again.
    from asyncjax import studies
    around = tmp_path / "around"
    overrides = [a for a in command if a.startswith("--config.")]
    overrides += ["--config.loss.retention_temperature=0.1", f"--config.phase1_from={root / 'base_seed{seed}'}"]
    studies.study(str(around), "smoke", 1, ["phase2.batch_norm"], overrides)
    for run in ("base_seed0", "phase2.batch_norm=freeze_seed0"):
        chained = json.loads((around / run / "results.json").read_text())
        assert chained["phase1_from"] == str(root / "base_seed0"), run
        assert chained["config"]["loss"]["retention_temperature"] == 0.1, run
        assert chained["phase1"] == variant["phase1"], run  # The very same phase-I model.
    # A joint grid in the first study's root: (freeze, the default lr) is the one-factor run already
    # there (reported, not retrained); (freeze, lr 0.005) is new and named by both settings.
    import contextlib
    import io

    from asyncjax import experiments
    lr = f"{experiments.row_config('async', 100, 0, 'smoke', []).phase2.base_lr:g}"
    overrides = [a for a in command if a.startswith("--config.data") or a in helpers.TINY]
    grid = studies.parse_grid(["phase2.batch_norm=freeze", f"phase2.base_lr={lr},0.005"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        studies.study(str(root), "smoke", 1, [], overrides, grid)
    assert printed.getvalue().count("is complete") == 2  # The base and the one-factor variant.
    both = json.loads((root / "phase2.batch_norm=freeze,phase2.base_lr=0.005_seed0" / "results.json").read_text())
    assert (both["config"]["phase2"]["batch_norm"], both["config"]["phase2"]["base_lr"]) == ("freeze", 0.005)
    figures = json.loads((root / "study_phase2_smoke_grid.json").read_text())
    assert figures["grid"] == ["phase2.batch_norm", "phase2.base_lr"]
    assert [r["settings"]["phase2.base_lr"] for r in figures["rows"]] == [lr, "0.005"]
    assert figures["rows"][0]["overall"][0] == variant["val"]["overall"]
    assert figures["rows"][1]["overall"][0] == both["val"]["overall"]
    assert "| phase2.batch_norm | phase2.base_lr | overall |" in (root / "study_phase2_smoke_grid.md").read_text()
    plot.make_plots(str(root))  # What `python -m asyncjax.plot --workdir=ROOT` runs (its CLI: the table test).
    assert (root / "plots" / "study_phase2_smoke_grid.png").stat().st_size > 1000
    # After the choice: the chosen points read on test once (--read_test), in-process. Copies of the
    # finished runs, nothing retrained (the same validation figures); the study's own runs untouched.
    before = (root / "phase2.batch_norm=freeze_seed0" / "results.json").read_bytes()
    read = root / "test" / "phase2.batch_norm=freeze_seed0,calibration=logit_adjustment" / "results.json"
    stamps = []
    for _ in range(2):  # The second time only reports: test is read once per run.
        studies.study(str(root), "smoke", 1, [], overrides, studies.parse_grid(["phase2.batch_norm=update,freeze"]),
                      read_test="logit_adjustment")
        stamps.append(read.stat().st_mtime_ns)
    assert stamps[0] == stamps[1]
    assert (root / "phase2.batch_norm=freeze_seed0" / "results.json").read_bytes() == before
    tested = json.loads(read.read_text())
    assert tested["test_read"] is True and tested["evaluated_on"] == "test" and "overall" in tested
    chosen = variant["calibration"]["options"]["logit_adjustment"]
    assert tested["calibration"]["applied"] == "logit_adjustment"
    assert tested["calibration"]["value"] == chosen["value"]  # Chosen on validation, as in the study run.
    assert tested["val"]["overall"] == chosen["val"]["overall"]  # The same model: nothing retrained.
    assert (root / "test" / "base_seed0,calibration=logit_adjustment" / "results.json").exists()
    figures = json.loads((root / "study_phase2_smoke_grid_test_logit_adjustment.json").read_text())
    assert figures["rows"][1]["test"]["overall"] == [tested["overall"]]
    assert "Read once on the test split" in (root / "study_phase2_smoke_grid_test_logit_adjustment.md").read_text()


def test_grid_study_runs_every_combination_from_each_seeds_phase1(tmp_path, monkeypatch):
    """A 2 x 2 grid over 2 seeds, the trainer replaced by a recorder: every combination runs once
    per seed from that seed's phase I, a combination of defaults is the base run itself, and each
    directory names only the settings that differ from the defaults."""
    from asyncjax import studies, train

    runs = {}

    def fake_run(config, workdir):
        runs[workdir] = config
        score = float(len(runs))
        return {"val": {"overall": score, "many": score, "medium": score, "few": score, "classes": 99},
                "phase1": {"val_head": {"overall": 1.0}}}

    monkeypatch.setattr(train, "run", fake_run)
    defaults = studies.row_config("async", 100, 0, "medium", [])
    lr, weight = f"{defaults.phase2.base_lr:g}", f"{defaults.loss.retention_weight_base:g}"
    grid = studies.parse_grid([f"phase2.base_lr={lr},0.005", f"loss.retention_weight_base={weight},7"])
    text = studies.study(str(tmp_path), "medium", 2, [], [], grid)
    names = sorted(p.rsplit("/", 1)[-1] for p in runs)
    assert names == sorted([f"{n}_seed{s}" for s in (0, 1) for n in (
        "base", "loss.retention_weight_base=7", "phase2.base_lr=0.005",
        "phase2.base_lr=0.005,loss.retention_weight_base=7")])
    both = runs[str(tmp_path / "phase2.base_lr=0.005,loss.retention_weight_base=7_seed1")]
    assert (both.phase2.base_lr, both.loss.retention_weight_base, both.seed) == (0.005, 7.0, 1)
    assert both.phase1_from == str(tmp_path / "base_seed1")
    assert f"| {lr} | {weight} | " in text and "| 0.005 | 7 | " in text and text.count("\n| ") == 5  # Head + 4.
    for bad, words in (("phase2.base_lr", "KEY=V1"), ("model.width=1,2", "unknown study factor")):
        try:
            studies.parse_grid([bad])
        except ValueError as error:
            assert words in str(error)
        else:
            raise AssertionError(f"--grid={bad} was accepted")


def test_phase2_seeds_share_one_phase1_and_read_no_test(tmp_path, monkeypatch):
    """--phase2_seeds: every base and variant from the one phase I of --config.phase1_from, the
    seed index varying phase II alone (phase2_seed), no run reading the test split; the
    corrections each run chose on validation make the second table."""
    from asyncjax import studies, train

    runs = {}

    def fake_run(config, workdir):
        runs[workdir] = config
        score = float(len(runs))
        val = {"overall": score, "many": score, "medium": score, "few": score, "classes": 99}
        options = {kind: {"value": 0.5, "val": val} for kind in ("none", "tail_bias", "logit_adjustment")}
        return {"val": {**val}, "phase1": {"val_head": {"overall": 1.0}},
                "calibration": {"applied": "none", "value": 0.0, "options": options}}

    monkeypatch.setattr(train, "run", fake_run)
    source = str(tmp_path / "finished_async")
    text = studies.study(str(tmp_path / "study"), "full", 2, ["phase2_old_rows"],
                         [f"--config.phase1_from={source}"], phase2_seeds=True)
    names = sorted(p.rsplit("/", 1)[-1] for p in runs)
    assert names == ["base_p2seed0", "base_p2seed1", "phase2_old_rows=freeze_p2seed0", "phase2_old_rows=freeze_p2seed1"]
    for workdir, config in runs.items():
        seed = int(workdir[-1])
        assert (config.seed, config.phase2_seed, config.read_test, config.phase1_from) == (0, seed, False, source)
        assert config.phase2.epochs == 200
    assert "2 phase-II seed(s) from one phase I" in text and "| phase2_old_rows | freeze | tail_bias | 0.5 / 0.5 |" in text
    with pytest.raises(ValueError, match="phase1_from"):
        studies.study(str(tmp_path / "other"), "full", 2, ["phase2_old_rows"], [], phase2_seeds=True)


def test_table_async_rows_reuse_a_studys_phase1_where_one_exists(tmp_path, monkeypatch):
    """--async_phase1_from: an async seed whose directory exists takes phase I from it (and the
    table names it), and so does a finished seed trained from a directory that is gone since;
    other seeds and methods train their own."""
    from asyncjax import reproduce, train

    runs = {}

    def fake_run(config, workdir):
        runs[workdir.rsplit("/", 1)[-1]] = config
        return {"overall": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0, "wall_time_s": {"phase2": 60.0},
                "phase1_from": config.phase1_from or None}

    monkeypatch.setattr(train, "run", fake_run)
    (tmp_path / "study" / "base_seed0").mkdir(parents=True)
    (tmp_path / "table" / "async_if100_seed1").mkdir(parents=True)
    (tmp_path / "table" / "async_if100_seed1" / "results.json").write_text(
        json.dumps({"phase1_from": str(tmp_path / "study" / "base_seed1")}))
    text = reproduce.reproduce(str(tmp_path / "table"), "medium", 3, ["plain", "async"], [100], [],
                               str(tmp_path / "study" / "base_seed{seed}"))
    assert runs["async_if100_seed0"].phase1_from == str(tmp_path / "study" / "base_seed0")
    assert runs["async_if100_seed1"].phase1_from == str(tmp_path / "study" / "base_seed1")
    assert runs["async_if100_seed2"].phase1_from == "" and runs["plain_if100_seed0"].phase1_from == ""
    assert f"async IF 100 seed 0 from {tmp_path / 'study' / 'base_seed0'}" in text and "seed 2 from" not in text


def test_skip_running_leaves_a_seed_being_trained_elsewhere_to_its_process(tmp_path, monkeypatch):
    """Two workers of one queue: a seed whose workdir lock another run holds is skipped (named as
    not finished) with --skip_running and the next seed taken; without it the command stops there."""
    from asyncjax import checks, reproduce, train

    ran = []

    def fake_run(config, workdir):  # The trainer's own lock (setup.build), then a result.
        checks.lock_workdir(workdir).close()
        ran.append(workdir.rsplit("/", 1)[-1])
        return {"overall": 40.0 + config.seed, "many": 1.0, "medium": 1.0, "few": 1.0, "wall_time_s": {"joint": 60.0}}

    monkeypatch.setattr(train, "run", fake_run)
    other_worker = checks.lock_workdir(str(tmp_path / "plain_if100_seed1"))
    try:
        text = reproduce.reproduce(str(tmp_path), "full", 3, ["plain"], [100], [], skip_running=True)
        assert ran == ["plain_if100_seed0", "plain_if100_seed2"]
        assert "| plain | 100 | 2 | 41.00 ± 1.41 |" in text
        assert f"Not finished (no results.json; not in the table): {tmp_path / 'plain_if100_seed1'}." in text
        with pytest.raises(checks.WorkdirBusy, match="is in use by pid"):
            reproduce.reproduce(str(tmp_path), "full", 3, ["plain"], [100], [])
    finally:
        other_worker.close()
    # A post-hoc row's seed waits while its cross-entropy joint phase is trained elsewhere.
    ran.clear()
    other_worker = checks.lock_workdir(str(tmp_path / "cross_entropy_if100_seed0"))
    try:
        text = reproduce.reproduce(str(tmp_path), "full", 1, ["crt"], [100], [], skip_running=True)
        assert ran == [] and f"Not finished (no results.json; not in the table): {tmp_path / 'cross_entropy_if100_seed0'}, " \
            f"{tmp_path / 'crt_if100_seed0'}." in text
    finally:
        other_worker.close()


def test_table_decoupling_rows_take_the_cross_entropy_rows_joint_phase(tmp_path, monkeypatch):
    """The decoupling family and logit adjustment in the table: the cross_entropy row runs first
    (added where it was not asked for), and each of their seeds takes that seed's joint phase
    (joint_from) and chooses tau on validation; no other row does."""
    from asyncjax import experiments, reproduce, train

    runs = []

    def fake_run(config, workdir):
        runs.append((workdir.rsplit("/", 1)[-1], config))
        return {"overall": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0, "wall_time_s": {"joint": 60.0}}

    monkeypatch.setattr(train, "run", fake_run)
    reproduce.reproduce(str(tmp_path), "medium", 2, ["plain", "tau_norm", "crt"], [100], [])
    names = [name for name, _ in runs]
    assert names[:2] == ["cross_entropy_if100_seed0", "cross_entropy_if100_seed1"] and len(names) == 8
    for name, config in runs:
        seed = name[-1]
        if name.startswith(("tau_norm", "crt")):
            assert config.joint_from == str(tmp_path / f"cross_entropy_if100_seed{seed}"), name
            assert tuple(config.decoupling.tau_grid) == experiments.TAU_GRID and config.seed == int(seed)
        else:
            assert config.joint_from == "", name
    ce = dict(runs)["cross_entropy_if100_seed0"]
    assert (ce.method, ce.model.head) == ("plain", "linear")


def test_table_from_results_files_alone_merges_rows_and_names_the_missing(tmp_path, monkeypatch):
    """--report_only: no run (train.run must not be called), the finished seeds' results.json make
    the rows, earlier rows of the table stay, a seed without results.json is named as missing."""
    from asyncjax import reproduce, train
    monkeypatch.setattr(train, "run", lambda *a: pytest.fail("report_only ran a training run"))

    def finished(name, overall, **extra):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"overall": overall, "many": overall + 20, "medium": overall, "few": overall - 20,
             "wall_time_s": {"joint": 3600.0}, **extra}))

    # The devices of a row's seeds, most seconds first; a results.json from before they were
    # recorded says so.
    intel = "Intel(R) Xeon(R) Processor (family 6 model 167, avx512, amx)"
    finished("cross_entropy_if100_seed0", 38.0, trained_on_s={intel: 3000.0, "NVIDIA H200": 600.0})
    finished("cross_entropy_if100_seed1", 40.0, trained_on_s={intel: 3600.0})
    finished("ldam_drw_if100_seed0", 42.0)
    first = reproduce.reproduce(str(tmp_path), "full", 2, ["cross_entropy"], [100], [], report_only=True)
    assert ("| cross_entropy | 100 | 2 | 39.00 ± 1.41 | 59.00 ± 1.41 | 39.00 ± 1.41 | 19.00 ± 1.41 | 38.32 | "
            "paper, Table 3 | +0.68 | Intel Xeon (family 6 model 167); NVIDIA H200 | 60.0 |") in first
    second = reproduce.reproduce(str(tmp_path), "full", 2, ["ldam_drw", "async"], [100], [], report_only=True)
    assert "| cross_entropy | 100 | 2 | 39.00 ± 1.41 |" in second  # Merged from the table's earlier rows.
    assert ("| ldam_drw | 100 | 1 | 42.00 | 62.00 | 42.00 | 22.00 | 42.04 | paper, Table 3 | -0.04 | "
            "not recorded | 60.0 |") in second
    assert "| async |" not in second
    assert (f"Not finished (no results.json; not in the table): {tmp_path / 'ldam_drw_if100_seed1'}, "
            f"{tmp_path / 'async_if100_seed0'}, {tmp_path / 'async_if100_seed1'}.") in second
    assert (tmp_path / "cifar100_lt_full.md").read_text() == second
    assert "Leads" not in second  # No pair of LEADS is in the table yet.
    # A row whose seed 0 finished before the devices were recorded and seed 1 after names both
    # (seed 0's hour first: more seconds than seed 1's half hour).
    finished("ldam_drw_if100_seed1", 44.0, trained_on_s={intel: 1800.0})
    third = reproduce.reproduce(str(tmp_path), "full", 2, ["ldam_drw"], [100], [], report_only=True)
    assert "| ldam_drw | 100 | 2 | 43.00 ± 1.41 |" in third
    assert "| +0.96 | not recorded; Intel Xeon (family 6 model 167) | 60.0 |" in third


def test_table_says_whether_a_lead_exceeds_two_seed_stds(tmp_path):
    from asyncjax import reproduce

    def row(*overall):
        return [{"overall": v, "many": v, "medium": v, "few": v, "wall_time_s": {"joint": 60.0}} for v in overall]

    rows = {("plain", 100): row(41.0, 42.0, 43.0), ("async", 100): row(44.0, 44.5, 45.0),
            ("logit_adjustment", 100): row(47.0), ("async", 50): row(49.0, 49.2), ("plain", 50): row(47.0, 47.1)}
    text = reproduce.write_table(rows, "full", 3, str(tmp_path / "t.md"), "")
    # IF 100: lead 44.5 - 42.0 = 2.5, the larger std 1.0 (plain's): more than 2 of them.
    assert "- async − plain, IF 100: +2.50 (3 and 3 seeds); seed std up to 1.00, so the difference is more than 2" in text
    # IF 50: lead 2.05 against async's std 0.141: more than 2. With plain's seeds spread wider, not.
    assert "- async − plain, IF 50: +2.05 (2 and 2 seeds); seed std up to 0.14, so the difference is more" in text
    rows[("plain", 50)] = row(46.0, 48.2)
    text = reproduce.write_table(rows, "full", 3, str(tmp_path / "t.md"), "")
    assert "- async − plain, IF 50: +2.00 (2 and 2 seeds); seed std up to 1.56, so the difference is not more" in text
    assert ("- async − logit_adjustment, IF 100: -2.50 (3 and 1 seeds); a row with one seed has no spread to "
            "compare with.") in text


def test_the_cross_entropy_row_is_plain_with_the_linear_head():
    from asyncjax import experiments
    config = experiments.row_config("cross_entropy", 100, 0, "full", [])
    assert (config.method, config.model.head, config.phase1.epochs) == ("plain", "linear", 200)
    assert experiments.row_config("plain", 100, 0, "full", []).model.head != "linear"


def test_the_cross_entropy_recipe_check_differs_from_the_cross_entropy_row_in_batch_and_weight_decay_only():
    from asyncjax import experiments, reproduce
    ours = experiments.row_config("cross_entropy", 100, 0, "full", []).to_dict()
    check = experiments.row_config("cross_entropy_ldam_recipe", 100, 0, "full", []).to_dict()
    # LDAM-DRW's recipe: its batch (the lr scaled to it, still 0.1) and weight decay; all else the same.
    assert {k: v for k, v in check["phase1"].items() if ours["phase1"][k] != v} == {
        "batch_size": 128, "base_batch_size": 128, "weight_decay": 2e-4}
    assert {k: v for k, v in check.items() if k != "phase1" and ours[k] != v} == {}
    assert reproduce.PUBLISHED["cross_entropy_ldam_recipe"] == reproduce.PUBLISHED["cross_entropy"]


def test_the_post_hoc_family_on_ldam_drws_recipe_takes_that_recipes_cross_entropy_joint_phase(tmp_path, monkeypatch):
    from asyncjax import experiments, reproduce, train

    runs = {}

    def fake_run(config, workdir):
        runs[workdir.rsplit("/", 1)[-1]] = config
        return {"overall": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0, "wall_time_s": {"joint": 60.0}}

    monkeypatch.setattr(train, "run", fake_run)
    text = reproduce.reproduce(str(tmp_path), "full", 1, ["logit_adjustment_ldam_recipe", "crt"], [100], [])
    # Each family row after its recipe's cross-entropy row, which runs first, and on its recipe.
    assert list(runs) == ["cross_entropy_ldam_recipe_if100_seed0", "cross_entropy_if100_seed0",
                          "logit_adjustment_ldam_recipe_if100_seed0", "crt_if100_seed0"]
    la, crt = runs["logit_adjustment_ldam_recipe_if100_seed0"], runs["crt_if100_seed0"]
    assert la.joint_from == str(tmp_path / "cross_entropy_ldam_recipe_if100_seed0")
    assert crt.joint_from == str(tmp_path / "cross_entropy_if100_seed0")
    assert (la.method, la.phase1.batch_size, la.phase1.weight_decay) == ("logit_adjustment", 128, 2e-4)
    assert (crt.phase1.batch_size, crt.phase1.weight_decay) == (64, 5e-4)
    assert experiments.joint_row("plain") is None and experiments.joint_row("ncm") == "cross_entropy"
    assert "| logit_adjustment_ldam_recipe | 100 | 1 | 1.00 | 1.00 | 1.00 | 1.00 | 43.9 |" in text
