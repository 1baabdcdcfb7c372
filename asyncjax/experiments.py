"""Runs of a comparison (reproduce.py's table, studies.py's ablations and phase-II studies): one
CIFAR-100-LT config per (method, imbalance, seed) at a budget, its seeds run (each resumes, or only
reports when finished), and the mean ± std that the tables print.

Budgets (epochs per phase): smoke = a few steps on ResNet-8 (for CI), short = 8, medium = 30,
full = 200 (the paper's). The warm-up keeps the recipe's share of the epochs (5 of 200, at least
1); the lr steps and DRW's start are fractions already.
"""
from __future__ import annotations

import os

import numpy as np

from asyncjax import checks, config_utils, files, train

EPOCHS = {"short": 8, "medium": 30, "full": 200}
# Methods that take their seed's cross-entropy joint phase (joint_from) instead of training one,
# the row whose joint phase they take, and the grid their tau (tau-norm, logit adjustment) is
# chosen from on the validation split.
REUSE_JOINT = ("logit_adjustment", "crt", "lws", "tau_norm", "ncm")
SHARED_JOINT = "cross_entropy"
# The recipes the cross-entropy row and its post-hoc family train on, by the suffix of the row's
# name: this project's (the paper's for async), and LDAM-DRW's (batch 128, weight decay 2e-4), the
# code Table 3's CE figures come from, so that a gap to them can be told apart from the recipe
# (issue 30): `logit_adjustment_ldam_recipe` takes the joint phase of `cross_entropy_ldam_recipe`.
RECIPES = {"": [], "_ldam_recipe": [f"--config.phase1.{key}={value}" for key, value in config_utils.LDAM_DRW_CIFAR.items()]}
# Table rows that are a method with settings of their own: the field's cross-entropy row is plain
# training with a linear classifier (plain's default head is the cosine one); then the rows above
# on the other recipes.
ROWS = {f"{SHARED_JOINT}{suffix}": ("plain", ["--config.model.head=linear", *overrides])
        for suffix, overrides in RECIPES.items()}
ROWS.update({f"{method}{suffix}": (method, overrides)
             for suffix, overrides in RECIPES.items() if suffix for method in REUSE_JOINT})


def joint_row(row: str) -> str | None:
    """The cross-entropy row whose joint phase `row` takes (on the same recipe), or None where the
    row trains its own."""
    method = ROWS.get(row, (row, []))[0]
    return SHARED_JOINT + row[len(method):] if method in REUSE_JOINT else None


TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def row_config(method: str, imbalance: int, seed: int, budget: str, overrides: list[str]):
    """configs/cifar100_lt.py with the method's preset, at `budget`, for one seed and imbalance.
    `method` is a method of asyncjax.main or a row of ROWS."""
    method, row_overrides = ROWS.get(method, (method, []))
    overrides = [*row_overrides, *overrides]
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


def mean_std(values) -> str:
    """'38.72 ± 0.90' (sample std) over the values that exist; one value alone; 'n/a' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def run_seeds(method: str, imbalance: int, seeds: int, budget: str, overrides, row_dir: str, title: str,
              async_phase1_from: str = "", skip_running: bool = False):
    """One row: the seeds' results.json dicts (each run resumes or just reports; "seed" added), and
    the data note.
    `skip_running`: a seed that another process is training (its workdir's lock is held) is left
    to that process and missing from the results, so that several workers of one queue share its
    seeds; without it, such a seed raises checks.WorkdirBusy.
    An async seed whose `async_phase1_from` directory ({seed} replaced) exists starts phase II from
    that directory's phase I; the trainer refuses it unless it was trained with this row's phase-I
    settings. The decoupling family and logit_adjustment take the joint phase of the same seed's
    cross_entropy row (on their recipe: joint_row) beside `row_dir` (joint_from; it must have run first) and choose tau on
    validation."""
    results = []
    for seed in range(seeds):
        config = row_config(method, imbalance, seed, budget, overrides)
        source = async_phase1_from.replace("{seed}", str(seed))
        directory = f"{row_dir}_seed{seed}"
        # A finished seed trained from `source` is reported even where `source` is gone since.
        if method == "async" and source and (
                os.path.isdir(source) or trained_from(directory) == os.path.abspath(source)):
            config.phase1_from = os.path.abspath(source)
        joint = joint_row(method)
        if joint:  # The seed's cross-entropy joint phase (that row's), tau on validation.
            config.joint_from = os.path.abspath(os.path.join(os.path.dirname(row_dir), f"{joint}_if{imbalance}_seed{seed}"))
            config.decoupling.tau_grid = config.loss.logit_adjustment_grid = TAU_GRID
            if skip_running and not os.path.exists(os.path.join(config.joint_from, "results.json")):
                print(f"=== {title}, IF {imbalance}, seed {seed}: waits for {config.joint_from}, which another "
                      "process is training", flush=True)
                continue
        print(f"=== {title}, IF {imbalance}, seed {seed}: {directory}", flush=True)
        try:
            results.append({**train.run(config, directory), "seed": seed})
        except checks.WorkdirBusy as busy:
            if not skip_running:
                raise
            print(f"=== {title}, IF {imbalance}, seed {seed}: left to the process training it ({busy})", flush=True)
    return results, next((r["data_note"] for r in reversed(results) if r.get("data_note")), "")


def finished_seeds(row_dir: str, seeds: int) -> tuple[list[dict], list[str]]:
    """(results of the finished seeds, workdirs of the missing ones) of one row, from its files
    alone: `{row_dir}_seed{seed}/results.json`. Nothing is run."""
    results, missing = [], []
    for seed in range(seeds):
        path = os.path.join(f"{row_dir}_seed{seed}", "results.json")
        if os.path.exists(path):
            results.append(files.read_json(path))
        else:
            missing.append(f"{row_dir}_seed{seed}")
    return results, missing


def trained_from(directory: str) -> str | None:
    """The phase1_from of a finished run in `directory` (None when unfinished or trained here)."""
    path = os.path.join(directory, "results.json")
    return files.read_json(path).get("phase1_from") if os.path.exists(path) else None
