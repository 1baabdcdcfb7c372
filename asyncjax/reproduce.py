"""Command line: python -m asyncjax.reproduce --table=cifar100_lt --budget=short --workdir=DIR

(The rows' configs and seeds: asyncjax/experiments.py; ablations and the phase-II study:
asyncjax/studies.py; the comparison on any config: asyncjax/compare.py.)

Which method for my data: with --config=CONFIG_FILE[:ARGS], the --methods are compared on that
config (your own data, the 224-px benchmarks, CIFAR-100-LT), --seeds each, at a --budget that
scales the config's own epochs (full 1x, medium 0.15x, short 0.04x, smoke a few steps):

    python -m asyncjax.reproduce --config=configs/custom.py:kind=folder --workdir=DIR \
        --methods=plain,async,crt,logit_adjustment --seeds=3 --budget=medium --config.data.root=ROOT

writes DIR/compare_<budget>.md and .json (`python -m asyncjax.plot --workdir=DIR`); the decoupling
family and logit_adjustment reuse each seed's cross_entropy joint phase (trained once).

Runs the rows of the paper's Table 3 (CIFAR-100-LT, ResNet-32) with this
project's trainer, one workdir per (method, imbalance, seed) under DIR, and
writes DIR/cifar100_lt_<budget>.md: our top-1 (mean and standard deviation over
seeds) and Many / Medium / Few beside the paper's figures, and the per-seed
figures as DIR/cifar100_lt_<budget>.json (`python -m asyncjax.plot --workdir=DIR`
draws them). Every row resumes
(or just reports) when the command is run again. `--config.*` overrides apply
to every row, e.g. --config.data.cifar100_dir=PATH. Rows are methods of
asyncjax.main or `cross_entropy` (plain with the linear head, the field's CE row).
`--report_only` runs nothing: the table from the finished seeds' results.json
files alone, merged with the rows already in DIR's table, the unfinished seeds
named in its note (the paper-budget queue: --budget=full --workdir=runs/paper_budget).

Budgets (epochs per phase): smoke = a few steps on ResNet-8 (for CI), short = 8
(sized so that a seed of a row takes about 15 minutes on a quiet 2-core CPU at
~100 img/s and a 3-seed row about an hour; measured wall times are in RESULTS.md),
medium = 30, full = 200 (the paper's). The warm-up keeps the recipe's share of the
epochs (5 of 200, at least 1); the lr steps and DRW's start are fractions already.

The phase-II study (settings chosen on the validation split, never on test):

    python -m asyncjax.reproduce --study=phase2 --budget=medium --seeds=2 --workdir=DIR \
        --config.data.cifar100_dir=PATH [--factors=loss.retention_temperature,phase2.base_lr]

trains the defaults once per seed (DIR/base_seed<s>, a whole async run) and each factor's other
values from that run's phase I (--config.phase1_from), and writes DIR/study_phase2_<budget>.md and
.json with the validation split's overall / Many / Medium / Few (plot: `python -m asyncjax.plot
--workdir=DIR`). The factors and values are studies.STUDY. Other --config overrides apply to the
base and every variant (a study around tau = 0.01: --config.loss.retention_temperature=0.01), and
--config.phase1_from=OTHER_ROOT/base_seed{seed} reuses another study's phase I of each seed for
the base and the variants alike ({seed} is replaced by the seed). A joint grid instead of one
factor at a time, e.g. after a one-factor study:

    python -m asyncjax.reproduce --study=phase2 --budget=medium --seeds=2 --workdir=DIR ... \
        --grid=phase2.base_lr=0.1,0.03,0.01 --grid=loss.retention_weight_base=1,2,4

writes DIR/study_phase2_<budget>_grid.md and .json. Study runs read no test split (read_test=False).
Each records, beside its own figures, what the post-hoc corrections of calibration.py give on
validation (a second table). Once the setting is chosen on validation, --read_test=KIND (none,
tail_bias, logit_adjustment) reads each point's finished runs on the test split once, KIND's
correction at its value chosen on validation: copies under DIR/test/ (nothing trained again), the
table with its test section in DIR/study_phase2_<budget>[_grid]_test_<KIND>.md and .json. Use it
with --grid naming only the points the comparison reports (a grid of one point,
--grid=phase2_old_rows=train, is the defaults). --phase2_seeds makes the seeds phase II's alone, every base and
variant from the one phase I of --config.phase1_from (DIR/base_p2seed<s>): a study at the full
budget from a finished 200-epoch run costs phase II only. The table can then reuse the study's phase I
for the async rows: --async_phase1_from=DIR/base_seed{seed} (seeds without one train their own; a
seed that finished from one is still reported after that directory is gone). A variant's directory
names only the settings that differ from the defaults, so one-factor and grid studies in one DIR
share their runs.

Ablations (the paper's Fig. 2 and 3), async rows at one imbalance factor:

    python -m asyncjax.reproduce --ablation=memory_size --budget=short --workdir=DIR [--values=2,6,10]

`memory_size` varies K (memory.per_class), `lambda` varies lambda_base
(loss.retention_weight_base; 0 turns L_dis off), `split` varies C1
(split.num_head_classes). Writes DIR/ablation_<name>_<budget>.md and .json;
`python -m asyncjax.plot --workdir=DIR` draws them. The paper ran them on
Places-LT; here they always run on CIFAR-100-LT (configs/cifar100_lt.py), with --config.* overrides.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from asyncjax import files, hardware, methods
from asyncjax.compare import compare
from asyncjax.experiments import RECIPES, ROWS, SHARED_JOINT, finished_seeds, joint_row, mean_std, run_seeds
from asyncjax.studies import ABLATIONS, STUDY, ablate, parse_grid, study


def define_flags():
    """The command line's flags; defined only when run as a program, so that importing the
    table writer (tests, notebooks) never clashes with another tool's flags."""
    flags.DEFINE_enum("table", "cifar100_lt", ["cifar100_lt"], "Which paper table to reproduce.")
    flags.DEFINE_string("config", "", "A config file (configs/custom.py:kind=folder, configs/places_lt.py, ...): "
                        "compare --methods on it (asyncjax/compare.py) instead of the CIFAR-100-LT table.")
    flags.DEFINE_enum("budget", "smoke", ["smoke", "short", "medium", "full"],
                      "Training budget of every row: smoke (CI), short (8 epochs per phase), medium (30), "
                      "full (the paper's 200).")
    flags.DEFINE_string("workdir", None, "Root directory; one workdir per row below it.")
    flags.DEFINE_bool("skip_running", False, "A seed that another process is training (its workdir is locked) "
                      "is left to it and the next one taken, so that several workers of one queue share the seeds "
                      "(launch/evidence_queue.sh); without it such a seed stops the command (exit 2).")
    flags.DEFINE_bool("report_only", False, "Run nothing: the table from the finished seeds' results.json "
                      "files, the unfinished ones named.")
    flags.DEFINE_integer("seeds", 1, "Seeds per row (0 .. seeds-1); the table gives mean and std.")
    flags.DEFINE_list("methods", ["plain", "ldam_drw", "async"], "Rows: methods of asyncjax.main, or "
                      "cross_entropy (plain with the linear head); a row name ending in _ldam_recipe "
                      "(cross_entropy, crt, lws, tau_norm, ncm, logit_adjustment) is that row on LDAM-DRW's "
                      "batch 128 and weight decay 2e-4.")
    flags.DEFINE_list("imbalance", ["50", "100", "200"], "Columns: CIFAR-100-LT imbalance factors.")
    flags.DEFINE_enum("ablation", "none", ["none", "memory_size", "lambda", "split"],
                      "Run an ablation of the async method instead of the table.")
    flags.DEFINE_list("values", [], "Ablation values (default: the ablation's own list).")
    flags.DEFINE_enum("study", "none", ["none", "phase2"],
                      "phase2: phase-II variants, each from the same phase I (phase1_from), on validation.")
    flags.DEFINE_list("factors", list(STUDY), "With --study: the factors to vary (default: all).")
    flags.DEFINE_string("async_phase1_from", "", "Table rows of the async method: ROOT/base_seed{seed}; a seed "
                        "whose directory exists starts phase II from its phase I (e.g. a phase-II study's), the "
                        "others train their own.")
    flags.DEFINE_bool("phase2_seeds", False, "With --study: the seeds vary phase II alone (phase2_seed), "
                      "every run from the one phase I of --config.phase1_from.")
    flags.DEFINE_multi_string("grid", [], "With --study: KEY=V1,V2,... (repeat the flag per key): the variants "
                              "are every combination of the keys' values (a joint grid), not one factor at a time.")
    flags.DEFINE_enum("read_test", "", ["", "none", "tail_bias", "logit_adjustment"],
                      "With --study, once the settings are chosen on validation: read each point's finished "
                      "runs on the test split once (copies under DIR/test/, nothing trained again), with this "
                      "post-hoc correction at its value chosen on validation (none: the model as trained).")
    flags.mark_flag_as_required("workdir")


# Published top-1 on CIFAR-100-LT with ResNet-32 at 200 epochs, and where each comes from: the
# paper's Table 3 (METHOD.md) for its rows, the field's usual sources for the baselines it lacks
# (issue 30). Every figure is the source's own: none was re-derived here.
TABLE3 = "paper, Table 3"
BAG_OF_TRICKS = "BagofTricks-LT gallery"
PUBLISHED = {
    "cross_entropy": {200: (35.63, TABLE3), 100: (38.32, TABLE3), 50: (43.85, TABLE3)},
    "ldam_drw": {200: (38.06, TABLE3), 100: (42.04, TABLE3), 50: (46.62, TABLE3)},  # The paper's "LDAM" row.
    "focal": {100: (38.41, TABLE3 + " (from LDAM-DRW's paper)")},
    "plain": {200: (39.35, TABLE3), 100: (42.48, TABLE3), 50: (47.61, TABLE3)},     # "Ours (plain)".
    "async": {200: (40.53, TABLE3), 100: (44.79, TABLE3), 50: (49.32, TABLE3)},     # "Ours".
    "balanced_softmax": {100: (42.99, BAG_OF_TRICKS)},
    "crt": {100: (40.26, BAG_OF_TRICKS)},
    "lws": {100: (40.16, BAG_OF_TRICKS)},
    "tau_norm": {100: (40.96, BAG_OF_TRICKS)},
    # Menon et al. (2021) give about 43.9 for post-hoc adjustment of a cross-entropy model.
    "logit_adjustment": {100: (43.9, "Menon et al. 2021, post-hoc (about 43.9)")},
}
# A row on another recipe (experiments.RECIPES) is compared with the same published figure.
PUBLISHED.update({name + suffix: PUBLISHED[name] for suffix in RECIPES if suffix for name in list(PUBLISHED)
                  if name + suffix in ROWS})


def machines(results: list[dict]) -> str:
    """The devices that trained a row's seeds (results.json `trained_on_s`), most seconds first; a
    seed that finished before the devices were recorded (no `trained_on_s`) counts its wall time as
    'not recorded', so that a row mixing old and new seeds names both."""
    seconds = hardware.total_seconds(r.get("trained_on_s") or {"not recorded": sum(r["wall_time_s"].values())}
                                     for r in results)
    return "; ".join(hardware.short_name(n) for n in sorted(seconds, key=seconds.get, reverse=True))


# The comparisons issue 30 asks for in a sentence each: (method, against).
LEADS = (("async", "plain"), ("async", "logit_adjustment"))


def leads(rows: dict) -> list[str]:
    """A line per LEADS pair that the table has at one imbalance factor: the lead of the means,
    and whether it is more than 2 standard deviations of the seeds (the larger of the two rows'
    sample stds: the stricter reading)."""
    lines = []
    for method, other in LEADS:
        for (name, imbalance), results in rows.items():
            if name != method or (other, imbalance) not in rows:
                continue
            ours, theirs = ([r["overall"] for r in rs] for rs in (results, rows[(other, imbalance)]))
            lead = np.mean(ours) - np.mean(theirs)
            if min(len(ours), len(theirs)) < 2:
                verdict = "a row with one seed has no spread to compare with"
            else:
                spread = max(np.std(ours, ddof=1), np.std(theirs, ddof=1))
                verdict = (f"seed std up to {spread:.2f}, so the difference is "
                           f"{'more' if abs(lead) > 2 * spread else 'not more'} than 2 of them")
            lines.append(f"- {method} − {other}, IF {imbalance}: {lead:+.2f} ({len(ours)} and {len(theirs)} "
                         f"seeds); {verdict}.")
    return lines


def write_table(rows: dict, budget: str, seeds: int, path: str, note: str) -> str:
    del seeds  # Each row says how many seeds it has: merged rows may have other counts.
    lines = [f"# CIFAR-100-LT (paper Table 3), budget `{budget}`", "",
             "Top-1 accuracy (%) of the final model on the test split; mean ± std over seeds. Published: "
             "ResNet-32, 200 epochs; ours − published is the mean's difference. Trained on: the devices "
             "that trained the seeds (results.json `trained_on_s`; 'not recorded': time trained before 2026-12-07, when recording began).",
             note, "",
             "| method | IF | seeds | ours: overall | many | medium | few | published | source | "
             "ours − published | trained on | wall time / seed (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, imbalance), results in rows.items():
        minutes = np.mean([sum(r["wall_time_s"].values()) for r in results]) / 60
        published, source = PUBLISHED.get(method, {}).get(imbalance, (None, "-"))
        gap = f"{np.mean([r['overall'] for r in results]) - published:+.2f}" if published else "-"
        lines.append(f"| {method} | {imbalance} | {len(results)} | {mean_std([r['overall'] for r in results])} | "
                     f"{mean_std([r['many'] for r in results])} | {mean_std([r['medium'] for r in results])} | "
                     f"{mean_std([r['few'] for r in results])} | {published if published else '-'} | {source} | "
                     f"{gap} | {machines(results)} | {minutes:.1f} |")
    lead_lines = leads(rows)
    if lead_lines:
        lines += ["", "Leads (mean against mean; the larger row's seed std):", *lead_lines]
    text = "\n".join(lines) + "\n"
    files.write_text(path, text)
    # The per-seed figures, for `python -m asyncjax.plot --workdir=DIR` (bars with std error bars).
    files.write_text(path[:-len(".md")] + ".json", json.dumps({
        "table": "cifar100_lt", "budget": budget, "note": note,
        # "paper": the published figure (the key plot.py has always read), "source": where it is from.
        "rows": [{"method": method, "imbalance": imbalance,
                  **dict(zip(("paper", "source"), PUBLISHED.get(method, {}).get(imbalance, (None, None)))),
                  "wall_time_s": [sum(r["wall_time_s"].values()) for r in results],
                  "trained_on_s": [r.get("trained_on_s", {}) for r in results],
                  **{k: [r[k] for r in results] for k in ("overall", "many", "medium", "few")}}
                 for (method, imbalance), results in rows.items()]}))
    return text


def earlier_rows(json_path: str) -> dict:
    """The rows an earlier invocation wrote to the table's JSON, as {(method, IF): per-seed results}:
    a rerun with fewer --methods or --imbalance values merges into the table, never drops rows."""
    if not os.path.exists(json_path):
        return {}
    with open(json_path) as f:
        saved = json.load(f)
    rows = {}
    for row in saved.get("rows", []):
        seeds = len(row["overall"])
        rows[(row["method"], row["imbalance"])] = [
            {**{k: row[k][i] for k in ("overall", "many", "medium", "few")},
             "wall_time_s": {"total": row["wall_time_s"][i]},
             "trained_on_s": row.get("trained_on_s", [{}] * seeds)[i]} for i in range(seeds)]
    return rows


def reproduce(workdir: str, budget: str, seeds: int, methods, imbalances, overrides,
              async_phase1_from: str = "", report_only: bool = False, skip_running: bool = False) -> str:
    """The table's rows run one after the other (each seed resumes where it stopped, or only reports
    when finished: a queue that can be started again), then the table rewritten. `report_only`:
    nothing is run; the table is made from the finished seeds' results.json, the missing ones named.
    `skip_running`: seeds that another process is training are left to it (experiments.run_seeds)
    and named in the table's note."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"cifar100_lt_{budget}.md")
    rows, note = earlier_rows(path[:-len(".md")] + ".json"), ""
    reused, missing = [], []
    # The post-hoc family's joint phase is a cross_entropy row's: that row runs first.
    joints = list(dict.fromkeys(joint_row(m) for m in methods if joint_row(m)))
    methods = [*joints, *[m for m in methods if m not in joints]]
    for imbalance in imbalances:
        for method in methods:
            row_dir = os.path.join(workdir, f"{method}_if{imbalance}")
            if report_only:
                found, absent = finished_seeds(row_dir, seeds)
                missing += absent
                if found:
                    rows[(method, imbalance)] = found
                note = next((r["data_note"] for r in found if r.get("data_note")), note)
                continue
            found, row_note = run_seeds(method, imbalance, seeds, budget, overrides, row_dir, method,
                                        async_phase1_from, skip_running)
            if found:
                rows[(method, imbalance)] = found
            done = {r["seed"] for r in found}  # The others were left to another worker (skip_running).
            missing += [f"{row_dir}_seed{seed}" for seed in range(seeds) if seed not in done]
            note = row_note or note
            reused += [f"{method} IF {imbalance} seed {r['seed']} from {r['phase1_from']}"
                       for r in found if r.get("phase1_from")]
    note = f"Measured on: {note}." if note else ""
    if reused:
        note += (" Phase I not trained in this table (phase1_from; the wall time counts the source's phase I): "
                 + "; ".join(reused) + ".")
    if missing:
        note += f" Not finished (no results.json; not in the table): {', '.join(missing)}."
    return write_table(rows, budget, seeds, path, note.strip())


def main(argv, overrides=()):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    FLAGS = flags.FLAGS
    known = (*methods.METHODS, *ROWS, SHARED_JOINT)
    unknown = [m for m in FLAGS.methods if m not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {known}")
    # Errors and interruptions: cli.run's exit codes (2 bad input, 3 interrupted and resumable).
    if FLAGS.grid and FLAGS.study == "none":
        raise app.UsageError("--grid needs --study=phase2")
    if FLAGS.read_test and FLAGS.study == "none":
        raise app.UsageError("--read_test needs --study=phase2")
    if FLAGS.config:
        if FLAGS.study != "none" or FLAGS.ablation != "none" or FLAGS.report_only:
            raise app.UsageError("--config compares methods; --study, --ablation and --report_only are the "
                                 "CIFAR-100-LT table's")
        table = compare(FLAGS.workdir, FLAGS.config, FLAGS.methods, FLAGS.seeds, FLAGS.budget, list(overrides))
    elif FLAGS.study != "none":
        table = study(FLAGS.workdir, FLAGS.budget, FLAGS.seeds, FLAGS.factors, list(overrides),
                      parse_grid(FLAGS.grid), FLAGS.phase2_seeds, FLAGS.read_test)
    elif FLAGS.ablation != "none":
        values = FLAGS.values or ABLATIONS[FLAGS.ablation][1]
        imbalance = int(FLAGS.imbalance[0]) if FLAGS["imbalance"].present else 100
        table = ablate(FLAGS.workdir, FLAGS.ablation, values, FLAGS.budget, FLAGS.seeds, imbalance,
                       list(overrides))
    else:
        table = reproduce(FLAGS.workdir, FLAGS.budget, FLAGS.seeds, FLAGS.methods,
                          [int(i) for i in FLAGS.imbalance], list(overrides), FLAGS.async_phase1_from,
                          FLAGS.report_only, FLAGS.skip_running)
    print(table)


if __name__ == "__main__":
    define_flags()
    config_overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    from asyncjax import cli
    cli.run(lambda argv: main(argv, config_overrides), __doc__,
            argv=[a for a in sys.argv if not a.startswith("--config.")])
