"""Command line: python -m asyncjax.reproduce --table=cifar100_lt --budget=short --workdir=DIR

Runs the rows of the paper's Table 3 (CIFAR-100-LT, ResNet-32) with this
project's trainer, one workdir per (method, imbalance, seed) under DIR, and
writes DIR/cifar100_lt_<budget>.md: our top-1 (mean and standard deviation over
seeds) and Many / Medium / Few beside the paper's figures, and the per-seed
figures as DIR/cifar100_lt_<budget>.json (`python -m asyncjax.plot --workdir=DIR`
draws them). Every row resumes
(or just reports) when the command is run again. `--config.*` overrides apply
to every row, e.g. --config.data.cifar100_dir=PATH.

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
--workdir=DIR`). The factors and values are reproduce.STUDY. Other --config overrides apply to the
base and every variant (a study around tau = 0.01: --config.loss.retention_temperature=0.01), and
--config.phase1_from=OTHER_ROOT/base_seed{seed} reuses another study's phase I of each seed for
the base and the variants alike ({seed} is replaced by the seed). A joint grid instead of one
factor at a time, e.g. after a one-factor study:

    python -m asyncjax.reproduce --study=phase2 --budget=medium --seeds=2 --workdir=DIR ... \
        --grid=phase2.base_lr=0.1,0.03,0.01 --grid=loss.retention_weight_base=1,2,4

writes DIR/study_phase2_<budget>_grid.md and .json. The table can then reuse the study's phase I
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


def define_flags():
    """The command line's flags; defined only when run as a program, so that importing
    row_config or the table writer (tests, notebooks) never clashes with another tool's flags."""
    flags.DEFINE_enum("table", "cifar100_lt", ["cifar100_lt"], "Which paper table to reproduce.")
    flags.DEFINE_enum("budget", "smoke", ["smoke", "short", "medium", "full"],
                      "Training budget of every row: smoke (CI), short (8 epochs per phase), medium (30), "
                      "full (the paper's 200).")
    flags.DEFINE_string("workdir", None, "Root directory; one workdir per row below it.")
    flags.DEFINE_integer("seeds", 1, "Seeds per row (0 .. seeds-1); the table gives mean and std.")
    flags.DEFINE_list("methods", ["plain", "ldam_drw", "async"], "Rows: methods of asyncjax.main.")
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
    flags.DEFINE_multi_string("grid", [], "With --study: KEY=V1,V2,... (repeat the flag per key): the variants "
                              "are every combination of the keys' values (a joint grid), not one factor at a time.")
    flags.mark_flag_as_required("workdir")


# Ablation name -> (config key, default values, label); values parse as the key's type.
ABLATIONS = {
    "memory_size": ("memory.per_class", ["2", "6", "10", "14", "18"], "exemplars per head class K"),
    "lambda": ("loss.retention_weight_base", ["0", "0.5", "1", "2", "4"], "lambda_base (lambda = lambda_base sqrt(C1/C2))"),
    "split": ("split.num_head_classes", ["50", "60", "70", "80", "90"], "head classes C1"),
}

# Paper, Table 3 (METHOD.md): top-1 on CIFAR-100-LT with ResNet-32 at 200 epochs.
PAPER = {
    "cross_entropy": {200: 35.63, 100: 38.32, 50: 43.85},
    "ldam_drw": {200: 38.06, 100: 42.04, 50: 46.62},   # The paper's "LDAM" row.
    "plain": {200: 39.35, 100: 42.48, 50: 47.61},      # "Ours (plain)".
    "async": {200: 40.53, 100: 44.79, 50: 49.32},      # "Ours".
}
EPOCHS = {"short": 8, "medium": 30, "full": 200}

# The phase-II study: each factor varied alone from the defaults (values typed by the config;
# phase2.epoch_fraction is phase II's epochs as a fraction of phase I's). Validation split only.
STUDY = {
    "loss.retention_temperature": ["1", "0.3", "0.1", "0.03", "0.01"],
    "loss.retention_weight_base": ["0", "0.5", "1", "2", "4"],
    "loss.retention_reduction": ["mean", "sum"],
    "phase2.base_lr": ["0.1", "0.03", "0.01"],
    "phase2.backbone_lr_multiplier": ["1", "0.1"],
    "phase2.batch_norm": ["update", "freeze"],
    "phase2_init": ["random", "imprint"],
    "memory.per_class": ["5", "10", "20"],
    "phase2.sampler": ["instance", "class_balanced"],
    "phase2.epoch_fraction": ["1", "0.5", "0.25"],
}


def row_config(method: str, imbalance: int, seed: int, budget: str, overrides: list[str]):
    from asyncjax import config_utils

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cifar100_lt.py")
    # The method's preset: LDAM-DRW runs its authors' recipe (batch 128, weight decay 2e-4).
    config = config_utils.load_config_file(f"{path}:smoke={budget == 'smoke'},method={method}")
    config.seed, config.data.imbalance = seed, imbalance
    if budget == "smoke":
        for phase in (config.phase1, config.phase2):
            phase.epochs, phase.max_steps_per_epoch = 2, 3
        config.eval_every_epochs = 100
    else:
        for phase in (config.phase1, config.phase2):
            # The recipe's warm-up share (5 of 200 epochs), so a short budget is not mostly warm-up.
            phase.warmup_epochs = max(1, round(phase.warmup_epochs * EPOCHS[budget] / phase.epochs))
            phase.epochs = EPOCHS[budget]
        # Monitoring only (the reported model is the final one): one look mid-phase at short budget.
        config.eval_every_epochs = max(1, EPOCHS[budget] // (2 if budget == "short" else 10))
    config_utils.apply_overrides(config, overrides)
    # A study around other defaults reuses each seed's phase I: phase1_from=ROOT/base_seed{seed}.
    config.phase1_from = config.phase1_from.replace("{seed}", str(seed))
    return config


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def write_table(rows: dict, budget: str, seeds: int, path: str, note: str) -> str:
    del seeds  # Each row says how many seeds it has: merged rows may have other counts.
    lines = [f"# CIFAR-100-LT (paper Table 3), budget `{budget}`", "",
             "Top-1 accuracy (%) of the final model on the test split; mean ± std over seeds.",
             f"Paper: ResNet-32, 200 epochs. {note}", "",
             "| method | IF | seeds | ours: overall | many | medium | few | paper | wall time / seed (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (method, imbalance), results in rows.items():
        minutes = np.mean([sum(r["wall_time_s"].values()) for r in results]) / 60
        paper = PAPER.get(method, {}).get(imbalance)
        lines.append(f"| {method} | {imbalance} | {len(results)} | {_mean_std([r['overall'] for r in results])} | "
                     f"{_mean_std([r['many'] for r in results])} | {_mean_std([r['medium'] for r in results])} | "
                     f"{_mean_std([r['few'] for r in results])} | {paper if paper else '-'} | {minutes:.1f} |")
    text = "\n".join(lines) + "\n"
    _write_atomically(path, text)
    # The per-seed figures, for `python -m asyncjax.plot --workdir=DIR` (bars with std error bars).
    _write_atomically(path[:-len(".md")] + ".json", json.dumps({
        "table": "cifar100_lt", "budget": budget, "note": note,
        "rows": [{"method": method, "imbalance": imbalance, "paper": PAPER.get(method, {}).get(imbalance),
                  "wall_time_s": [sum(r["wall_time_s"].values()) for r in results],
                  **{k: [r[k] for r in results] for k in ("overall", "many", "medium", "few")}}
                 for (method, imbalance), results in rows.items()]}))
    return text


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _run_seeds(method: str, imbalance: int, seeds: int, budget: str, overrides, row_dir: str, title: str,
               async_phase1_from: str = ""):
    """One row: the seeds' results.json dicts (each run resumes or just reports), and the data note.
    An async seed whose `async_phase1_from` directory ({seed} replaced) exists starts phase II from
    that directory's phase I; the trainer refuses it unless it was trained with this row's phase-I
    settings."""
    from asyncjax import train

    results = []
    for seed in range(seeds):
        config = row_config(method, imbalance, seed, budget, overrides)
        source = async_phase1_from.replace("{seed}", str(seed))
        directory = f"{row_dir}_seed{seed}"
        # A finished seed trained from `source` is reported even where `source` is gone since.
        if method == "async" and source and (
                os.path.isdir(source) or _trained_from(directory) == os.path.abspath(source)):
            config.phase1_from = os.path.abspath(source)
        print(f"=== {title}, IF {imbalance}, seed {seed}: {directory}", flush=True)
        results.append(train.run(config, directory))
    return results, next((r["data_note"] for r in reversed(results) if r.get("data_note")), "")


def _trained_from(directory: str) -> str | None:
    """The phase1_from of a finished run in `directory` (None when unfinished or trained here)."""
    path = os.path.join(directory, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("phase1_from")


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
             "wall_time_s": {"total": row["wall_time_s"][i]}} for i in range(seeds)]
    return rows


def reproduce(workdir: str, budget: str, seeds: int, methods, imbalances, overrides,
              async_phase1_from: str = "") -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"cifar100_lt_{budget}.md")
    rows, note = earlier_rows(path[:-len(".md")] + ".json"), ""
    reused = []
    for imbalance in imbalances:
        for method in methods:
            rows[(method, imbalance)], row_note = _run_seeds(
                method, imbalance, seeds, budget, overrides, os.path.join(workdir, f"{method}_if{imbalance}"), method,
                async_phase1_from)
            note = row_note or note
            reused += [f"{method} IF {imbalance} seed {seed} from {r['phase1_from']}"
                       for seed, r in enumerate(rows[(method, imbalance)]) if r.get("phase1_from")]
    note = f"Measured on: {note}." if note else ""
    if reused:
        note += (" Phase I not trained in this table (phase1_from; the wall time counts the source's phase I): "
                 + "; ".join(reused) + ".")
    return write_table(rows, budget, seeds, path, note.strip())


def ablate(workdir: str, name: str, values, budget: str, seeds: int, imbalance: int, overrides) -> str:
    """Async rows over the values of one ablation; a Markdown table and a JSON of the figures."""
    key, _, label = ABLATIONS[name]
    rows, note = [], ""
    for value in values:
        results, row_note = _run_seeds("async", imbalance, seeds, budget, [*overrides, f"--config.{key}={value}"],
                                       os.path.join(workdir, f"ablation_{name}_{value}"), f"ablation {name} = {value}")
        note = row_note or note
        rows.append({"value": float(value), "seeds": seeds,
                     **{k: [r[k] for r in results] for k in ("overall", "many", "medium", "few")}})
    stem = os.path.join(workdir, f"ablation_{name}_{budget}")
    lines = [f"# Ablation: {label} (async, CIFAR-100-LT IF {imbalance}), budget `{budget}`, {seeds} seed(s)", "",
             f"Top-1 accuracy (%) of the final model on the test split. {note}", "",
             f"| {key} | overall | many | medium | few |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['value']:g} | " + " | ".join(_mean_std(row[k]) for k in ("overall", "many", "medium", "few"))
                     + " |")
    text = "\n".join(lines) + "\n"
    _write_atomically(stem + ".md", text)
    _write_atomically(stem + ".json", json.dumps({"ablation": name, "key": key, "label": label, "budget": budget,
                                                  "imbalance": imbalance, "rows": rows}))
    return text


def variant_config(settings, seed: int, budget: str, overrides, base_dir: str):
    """The study's variant: the defaults with each (key, value) of `settings`, phase II from
    `base_dir`'s phase I."""
    from asyncjax import config_utils

    config = row_config("async", 100, seed, budget, overrides)
    for key, value in settings:
        if key == "phase2.epoch_fraction":
            recipe = config.phase2
            recipe.epochs = max(1, int(round(float(value) * config.phase1.epochs)))
            recipe.warmup_epochs = min(recipe.warmup_epochs, recipe.epochs - 1)
        else:
            config_utils.apply_overrides(config, [f"--config.{key}={value}"])
    config.phase1_from = base_dir
    return config


def parse_grid(grid) -> list[tuple[str, list[str]]]:
    """--grid flags (KEY=V1,V2,...) as [(key, values)], refusing a key the study does not know
    and a key given twice."""
    parsed = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid={item}: expected KEY=V1,V2,... (e.g. phase2.base_lr=0.1,0.03)")
        if key not in STUDY:
            raise ValueError(f"--grid={item}: unknown study factor {key!r}; choose from {list(STUDY)}")
        if key in dict(parsed):
            raise ValueError(f"--grid: {key} is given twice")
        parsed.append((key, [v for v in values.split(",") if v]))
    return parsed


def _is_default(key: str, value: str, base) -> bool:
    if key == "phase2.epoch_fraction":
        return float(value) == base.phase2.epochs / base.phase1.epochs
    probe = base.copy_and_resolve_references()
    from asyncjax import config_utils
    config_utils.apply_overrides(probe, [f"--config.{key}={value}"])
    node, other = probe, base
    for part in key.split("."):
        node, other = node[part], other[part]
    return node == other


def study(workdir: str, budget: str, seeds: int, factors, overrides, grid=()) -> str:
    """Phase II from one phase I per seed: the defaults (`base_seed<s>`, a whole async run) and each
    variant from its seed's phase I, named by the settings it changes (`<key>=<value>[,...]_seed<s>`,
    so a variant two studies share is trained once). Variants: each factor's values alone, or with
    `grid` ([(key, values)]) every combination. Validation figures only: the settings are chosen on
    them, never on the test split."""
    import itertools

    from asyncjax import train
    unknown = [f for f in factors if f not in STUDY]
    if unknown:
        raise ValueError(f"unknown study factors {unknown}; choose from {list(STUDY)}")
    if grid:
        points = [list(zip([key for key, _ in grid], values))
                  for values in itertools.product(*[values for _, values in grid])]
    else:
        points = [[(key, value)] for key in factors for value in STUDY[key]]
    bases = {}
    for seed in range(seeds):
        base_dir = os.path.join(workdir, f"base_seed{seed}")
        print(f"=== study phase2, defaults, seed {seed}: {base_dir}", flush=True)
        bases[seed] = (base_dir, row_config("async", 100, seed, budget, overrides),
                       train.run(row_config("async", 100, seed, budget, overrides), base_dir))
    rows = []
    for settings in points:
        results = []
        for seed, (base_dir, base_config, base_results) in bases.items():
            changed = [(k, v) for k, v in settings if not _is_default(k, v, base_config)]
            if not changed:
                results.append(base_results)
                continue
            directory = os.path.join(workdir, ",".join(f"{k}={v}" for k, v in changed) + f"_seed{seed}")
            print(f"=== study phase2, {', '.join(f'{k} = {v}' for k, v in settings)}, seed {seed}: {directory}",
                  flush=True)
            # A base that itself took its phase I from elsewhere (--config.phase1_from) hands
            # that phase I on: only a workdir that trained phase I holds its checkpoints.
            source = base_config.phase1_from or base_dir
            results.append(train.run(variant_config(changed, seed, budget, overrides, source), directory))
        row = {"settings": dict(settings), "seeds": len(results), "val_classes": results[0]["val"]["classes"],
               **{k: [r["val"][k] for r in results] for k in ("overall", "many", "medium", "few")},
               "phase1_val_head": [r["phase1"].get("val_head", {}).get("overall") for r in results]}
        if not grid:
            row["key"], row["value"] = settings[0]
        rows.append(row)
    stem = os.path.join(workdir, f"study_phase2_{budget}" + ("_grid" if grid else ""))
    keys = [key for key, _ in grid]
    what = ("Every combination of the grid's values" if grid else "Each factor varies alone from the defaults")
    lines = [f"# Phase-II study (async, CIFAR-100-LT IF 100), budget `{budget}`, {seeds} phase I(s)", "",
             f"Top-1 accuracy (%) on the validation split ({rows[0]['val_classes'] if rows else '-'} classes "
             f"with validation images); mean ± std over seeds. {what}; "
             "every variant starts from its seed's phase I. Chosen on these only: each run's results.json "
             "also holds its test figures, not used here.", "",
             "| " + (" | ".join(keys) if grid else "factor | value") + " | overall | many | medium | few |",
             "|" + "---|" * ((len(keys) if grid else 2) + 4)]
    for row in rows:
        names = [row["settings"][k] for k in keys] if grid else [row["key"], row["value"]]
        lines.append("| " + " | ".join(names) + " | " + " | ".join(
            _mean_std(row[k]) for k in ("overall", "many", "medium", "few")) + " |")
    text = "\n".join(lines) + "\n"
    _write_atomically(stem + ".md", text)
    _write_atomically(stem + ".json", json.dumps({"study": "phase2", "budget": budget, "seeds": seeds,
                                                  "grid": keys, "rows": rows}))
    return text


def main(argv, overrides=()):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from asyncjax import train
    FLAGS = flags.FLAGS
    unknown = [m for m in FLAGS.methods if m not in train.METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {train.METHODS}")
    # Errors and interruptions: cli.run's exit codes (2 bad input, 3 interrupted and resumable).
    if FLAGS.grid and FLAGS.study == "none":
        raise app.UsageError("--grid needs --study=phase2")
    if FLAGS.study != "none":
        table = study(FLAGS.workdir, FLAGS.budget, FLAGS.seeds, FLAGS.factors, list(overrides),
                      parse_grid(FLAGS.grid))
    elif FLAGS.ablation != "none":
        values = FLAGS.values or ABLATIONS[FLAGS.ablation][1]
        imbalance = int(FLAGS.imbalance[0]) if FLAGS["imbalance"].present else 100
        table = ablate(FLAGS.workdir, FLAGS.ablation, values, FLAGS.budget, FLAGS.seeds, imbalance,
                       list(overrides))
    else:
        table = reproduce(FLAGS.workdir, FLAGS.budget, FLAGS.seeds, FLAGS.methods,
                          [int(i) for i in FLAGS.imbalance], list(overrides), FLAGS.async_phase1_from)
    print(table)


if __name__ == "__main__":
    define_flags()
    config_overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    from asyncjax import cli
    cli.run(lambda argv: main(argv, config_overrides), __doc__,
            argv=[a for a in sys.argv if not a.startswith("--config.")])
