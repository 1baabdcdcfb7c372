"""Which method for my data? The methods of asyncjax.main compared on any config, with seeds.

    python -m asyncjax.reproduce --config=configs/custom.py:kind=folder --methods=plain,async,crt \\
        --seeds=3 --budget=medium --workdir=DIR --config.data.root=...

Each (method, seed) is one workdir, DIR/<method>_seed<s>, run (or resumed, or only reported when
finished) by the trainer. The decoupling family (crt, lws, tau_norm, ncm) and logit_adjustment
take the finished joint phase of that seed's `cross_entropy` run (plain with the linear head, a
row of its own) through `joint_from`: one joint phase per seed, trained once. tau-norm's and
logit adjustment's tau are chosen on the validation split from a grid (TAU_GRID). Budgets scale
the config's own epochs (BUDGET_FRACTION); `smoke` is a few steps per phase.

The table (DIR/compare_<budget>.md, and .json beside it for `python -m asyncjax.plot`): per method,
its seeds, mean ± std of overall / Many / Medium / Few on the test split (on validation where the
data has no test split, said in the table), and wall time. A rerun merges its rows into the table.
"""
from __future__ import annotations

import json
import os

import numpy as np

from asyncjax import config_utils, files, train
from asyncjax.experiments import REUSE_JOINT, SHARED_JOINT, TAU_GRID, mean_std

# Epochs of each phase at a budget, as a fraction of the config's own (at least 1).
BUDGET_FRACTION = {"full": 1.0, "medium": 0.15, "short": 0.04}


def method_config(config_spec: str, method: str, seed: int, budget: str, overrides, joint_from: str = ""):
    """The config file's config for one (method, seed) at `budget`: `cross_entropy` is plain with
    the linear head; the REUSE_JOINT methods take `joint_from` and choose tau on validation."""
    config = config_utils.load_config_file(config_spec)
    config.method = "plain" if method == SHARED_JOINT else method
    config.seed = seed
    if method == SHARED_JOINT or method in REUSE_JOINT:
        config.model.head = "linear"
    recipes = [name for name in ("phase1", "phase2", "classifier") if name in config]
    if budget == "smoke":
        for name in recipes:
            config[name].epochs, config[name].max_steps_per_epoch = 2, 3
            config[name].warmup_epochs = min(config[name].warmup_epochs, 1)
        config.eval_every_epochs = 100
    else:
        for name in recipes:
            recipe = config[name]
            epochs = max(1, int(round(BUDGET_FRACTION[budget] * recipe.epochs)))
            recipe.warmup_epochs = min(epochs - 1, int(round(recipe.warmup_epochs * epochs / recipe.epochs)))
            recipe.epochs = epochs
        config.eval_every_epochs = max(1, config.phase1.epochs // 5)
    config.decoupling.tau_grid = TAU_GRID
    config.loss.logit_adjustment_grid = TAU_GRID
    config_utils.apply_overrides(config, list(overrides))
    if method in REUSE_JOINT:
        config.joint_from = joint_from
    return config


def run_all(workdir: str, config_spec: str, methods, seeds: int, budget: str, overrides) -> dict:
    """{method: [results.json of each seed]}: the seeds' cross-entropy joint phases first where a
    method reuses them, then each (method, seed)."""
    runs = {}
    order = ([SHARED_JOINT] if any(m in REUSE_JOINT for m in methods) and SHARED_JOINT not in methods else [])
    for method in [*order, *sorted(methods, key=lambda m: m != SHARED_JOINT)]:
        for seed in range(seeds):
            joint = os.path.join(workdir, f"{SHARED_JOINT}_seed{seed}")
            directory = os.path.join(workdir, f"{method}_seed{seed}")
            print(f"=== compare {config_spec}: {method}, seed {seed}: {directory}", flush=True)
            config = method_config(config_spec, method, seed, budget, overrides, os.path.abspath(joint))
            runs.setdefault(method, []).append(train.run(config, directory))
    return {m: runs[m] for m in methods}


def wall_minutes(results: dict) -> float:
    """A run's own wall time in minutes: a joint phase taken from another run is not counted."""
    seconds = dict(results.get("wall_time_s", {}))
    if results.get("joint_from"):
        seconds.pop("joint", None)
    return sum(seconds.values()) / 60


def figures(results: dict) -> dict:
    """The reported figures of one run: test, or validation where the data has no test split."""
    source = results if "overall" in results else results["val"]
    return {k: source[k] for k in ("overall", "many", "medium", "few")}


def earlier_rows(json_path: str) -> dict:
    """The rows an earlier invocation wrote ({method: row}): reruns merge, never drop rows."""
    if not os.path.exists(json_path):
        return {}
    return {row["method"]: row for row in files.read_json(json_path)["rows"]}


def row_of(method: str, results: list[dict]) -> dict:
    """A table row: per-seed figures and wall times, the split they are on, and the mean
    per-class accuracy (by output row) with the training counts, for the plot."""
    per_class = [r.get("per_class_accuracy") or [] for r in results]
    mean_class = None
    if all(per_class) and per_class:
        stacked = np.array([[np.nan if a is None else a for a in p] for p in per_class], np.float64)
        mean_class = [None if np.isnan(a) else float(a) for a in np.nanmean(stacked, axis=0)] \
            if not np.all(np.isnan(stacked)) else None
    return {"method": method, "seeds": len(results),
            "evaluated_on": "test" if all("overall" in r and r.get("evaluated_on") != "val" for r in results) else "val",
            "joint_shared": any(r.get("joint_from") for r in results),
            "wall_time_min": [wall_minutes(r) for r in results],
            "tau": [r["tau"] for r in results] if all("tau" in r for r in results) else None,
            **{k: [figures(r)[k] for r in results] for k in ("overall", "many", "medium", "few")},
            "per_class_accuracy": mean_class, "train_counts": results[0].get("train_counts")}


def compare(workdir: str, config_spec: str, methods, seeds: int, budget: str, overrides) -> str:
    """Runs every (method, seed) and writes the table (Markdown and JSON) in `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    runs = run_all(workdir, config_spec, methods, seeds, budget, overrides)
    stem = os.path.join(workdir, f"compare_{budget}")
    rows = earlier_rows(stem + ".json")
    rows.update({method: row_of(method, results) for method, results in runs.items()})
    return write_table(stem, config_spec, budget, list(overrides), rows)


def write_table(stem: str, config_spec: str, budget: str, overrides, rows: dict) -> str:
    on_val = sorted(m for m, row in rows.items() if row["evaluated_on"] == "val")
    split = ("the validation split (this data has no test split)" if on_val and len(on_val) == len(rows)
             else "the test split" + (f" (validation for {', '.join(on_val)})" if on_val else ""))
    lines = [f"# Which method for this data? `{config_spec}`, budget `{budget}`", "",
             f"Top-1 accuracy (%) of the final model on {split}; mean ± std over seeds. "
             f"Overrides: {' '.join(overrides) or 'none'}. Methods marked * take their seed's "
             f"`{SHARED_JOINT}` joint phase (trained once); their wall time is their own part alone. "
             "tau (tau_norm, logit_adjustment) chosen on the validation split.", "",
             "| method | seeds | overall | many | medium | few | wall time / seed (min) |",
             "|---|---|---|---|---|---|---|"]
    for method, row in sorted(rows.items(), key=lambda item: -np.mean(item[1]["overall"])):
        name = method + (" *" if row["joint_shared"] else "")
        if row.get("tau"):
            name += f" (tau {' / '.join(f'{t:g}' for t in row['tau'])})"
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(
            mean_std(row[k]) for k in ("overall", "many", "medium", "few"))
            + f" | {np.mean(row['wall_time_min']):.1f} |")
    text = "\n".join(lines) + "\n"
    files.write_text(stem + ".md", text)
    files.write_text(stem + ".json", json.dumps({"compare": config_spec, "budget": budget, "overrides": overrides,
                                                  "split": split, "rows": list(rows.values())}))
    return text
