"""Ablations (the paper's Fig. 2 and 3) and the phase-II study: async runs over one setting at a
time, or a grid of them, each variant's phase II from its seed's phase I. The phase-II study reports
the validation split only: settings are chosen on it, never on the test split.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil

from asyncjax import config_utils, files, train
from asyncjax.experiments import mean_std, row_config, run_seeds

# Ablation name -> (config key, default values, label); values parse as the key's type.
ABLATIONS = {
    "memory_size": ("memory.per_class", ["2", "6", "10", "14", "18"], "exemplars per head class K"),
    "lambda": ("loss.retention_weight_base", ["0", "0.5", "1", "2", "4"], "lambda_base (lambda = lambda_base sqrt(C1/C2))"),
    "split": ("split.num_head_classes", ["50", "60", "70", "80", "90"], "head classes C1"),
}

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
    "memory.per_class": ["5", "10", "20", "40"],
    "phase2_old_rows": ["train", "freeze"],
    "phase2.sampler": ["instance", "class_balanced"],
    "phase2.epoch_fraction": ["1", "0.5", "0.25"],
}


def ablate(workdir: str, name: str, values, budget: str, seeds: int, imbalance: int, overrides) -> str:
    """Async rows over the values of one ablation; a Markdown table and a JSON of the figures."""
    key, _, label = ABLATIONS[name]
    rows, note = [], ""
    for value in values:
        results, row_note = run_seeds("async", imbalance, seeds, budget, [*overrides, f"--config.{key}={value}"],
                                       os.path.join(workdir, f"ablation_{name}_{value}"), f"ablation {name} = {value}")
        note = row_note or note
        rows.append({"value": float(value), "seeds": seeds,
                     **{k: [r[k] for r in results] for k in ("overall", "many", "medium", "few")}})
    stem = os.path.join(workdir, f"ablation_{name}_{budget}")
    lines = [f"# Ablation: {label} (async, CIFAR-100-LT IF {imbalance}), budget `{budget}`, {seeds} seed(s)", "",
             f"Top-1 accuracy (%) of the final model on the test split. {note}", "",
             f"| {key} | overall | many | medium | few |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['value']:g} | " + " | ".join(mean_std(row[k]) for k in ("overall", "many", "medium", "few"))
                     + " |")
    text = "\n".join(lines) + "\n"
    files.write_text(stem + ".md", text)
    files.write_text(stem + ".json", json.dumps({"ablation": name, "key": key, "label": label, "budget": budget,
                                                  "imbalance": imbalance, "rows": rows}))
    return text


def study_config(seed: int, budget: str, overrides, phase2_seeds: bool):
    """A study run's defaults: validation figures only (read_test=False). `seed` is the run's seed,
    or with `phase2_seeds` phase II's alone (phase2_seed; phase I is seed 0's, from phase1_from)."""
    config = row_config("async", 100, 0 if phase2_seeds else seed, budget, overrides)
    if phase2_seeds:
        config.phase2_seed = seed
    config.read_test = False
    return config


def variant_config(settings, seed: int, budget: str, overrides, base_dir: str, phase2_seeds: bool = False):
    """The study's variant: the defaults with each (key, value) of `settings`, phase II from
    `base_dir`'s phase I."""
    config = study_config(seed, budget, overrides, phase2_seeds)
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
    config_utils.apply_overrides(probe, [f"--config.{key}={value}"])
    node, other = probe, base
    for part in key.split("."):
        node, other = node[part], other[part]
    return node == other


def calibrated(results) -> dict:
    """{kind: {'value', 'overall', 'many', 'medium', 'few'}} of each post-hoc correction on
    validation (results.json's "calibration" record), for the kinds other than "none"."""
    options = (results.get("calibration") or {}).get("options", {})
    return {kind: {"value": o["value"], **{k: o["val"][k] for k in ("overall", "many", "medium", "few")}}
            for kind, o in options.items() if kind != "none"}


def study(workdir: str, budget: str, seeds: int, factors, overrides, grid=(), phase2_seeds: bool = False,
          read_test: str = "") -> str:
    """Phase II from one phase I per seed: the defaults (`base_seed<s>`, a whole async run) and each
    variant from its seed's phase I, named by the settings it changes (`<key>=<value>[,...]_seed<s>`,
    so a variant two studies share is trained once). Variants: each factor's values alone, or with
    `grid` ([(key, values)]) every combination. Validation figures only (the runs do not read the
    test split): the settings are chosen on them. `phase2_seeds`: the seeds are phase II's alone
    (phase2_seed), every base from the one phase I of --config.phase1_from (`base_p2seed<s>`).
    `read_test` (a calibration kind, "" for none of this): after the settings were chosen, each
    point's finished runs are read once on the test split (test_once), that kind's correction
    applied at its value chosen on validation; the figures go into the table's test section."""
    if phase2_seeds and not any(o.startswith("--config.phase1_from=") for o in overrides):
        raise ValueError("--phase2_seeds needs --config.phase1_from (the one phase I the seeds share)")
    tag = "p2seed" if phase2_seeds else "seed"
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
        base_dir = os.path.join(workdir, f"base_{tag}{seed}")
        print(f"=== study phase2, defaults, {tag} {seed}: {base_dir}", flush=True)
        bases[seed] = (base_dir, study_config(seed, budget, overrides, phase2_seeds),
                       train.run(study_config(seed, budget, overrides, phase2_seeds), base_dir))
    rows = []
    for settings in points:
        results, tested = [], []
        for seed, (base_dir, base_config, base_results) in bases.items():
            changed = [(k, v) for k, v in settings if not _is_default(k, v, base_config)]
            if not changed:
                directory, config = base_dir, base_config
                results.append(base_results)
            else:
                directory = os.path.join(workdir, ",".join(f"{k}={v}" for k, v in changed) + f"_{tag}{seed}")
                print(f"=== study phase2, {', '.join(f'{k} = {v}' for k, v in settings)}, {tag} {seed}: "
                      f"{directory}", flush=True)
                # A base that itself took its phase I from elsewhere (--config.phase1_from) hands
                # that phase I on: only a workdir that trained phase I holds its checkpoints.
                source = base_config.phase1_from or base_dir
                config = variant_config(changed, seed, budget, overrides, source, phase2_seeds)
                results.append(train.run(config, directory))
            if read_test:
                tested.append(test_once(directory, config, workdir, read_test))
        row = {"settings": dict(settings), "seeds": len(results), "val_classes": results[0]["val"]["classes"],
               **{k: [r["val"][k] for r in results] for k in ("overall", "many", "medium", "few")},
               "phase1_val_head": [r["phase1"].get("val_head", {}).get("overall") for r in results]}
        options = [calibrated(r) for r in results]
        if all(options):  # Each post-hoc correction at its value chosen on validation, per seed.
            row["calibrated"] = {kind: {k: [o[kind][k] for o in options] for k in options[0][kind]}
                                 for kind in options[0]}
        if tested:
            row["test"] = {"calibration": read_test, "value": [r["calibration"]["value"] for r in tested],
                           "workdirs": [r["workdir"] for r in tested],
                           **{k: [r[k] for r in tested] for k in ("overall", "many", "medium", "few")}}
        if not grid:
            row["key"], row["value"] = settings[0]
        rows.append(row)
    return write_study_table(workdir, budget, seeds, phase2_seeds, [key for key, _ in grid] if grid else None, rows)


def test_once(directory: str, config, workdir: str, kind: str) -> dict:
    """The finished study run in `directory` read on the test split, once: a copy of it under
    `workdir`/test/ (its checkpoints and bank; nothing is trained again) run with read_test=True and
    `kind`'s correction (calibration.py) at its value chosen on validation. A copy that already
    has its results.json is only reported, so the test split is read once per run and kind."""
    if not os.path.exists(os.path.join(directory, "results.json")):
        raise FileNotFoundError(f"{directory} has not finished: the test split is read only after training")
    name = os.path.basename(os.path.normpath(directory)) + ("" if kind == "none" else f",calibration={kind}")
    target = os.path.join(workdir, "test", name)
    if not os.path.exists(target):
        partial = target + ".copying"
        shutil.rmtree(partial, ignore_errors=True)
        # Without results.json (the run would only be reported) and the applied offset (rewritten).
        shutil.copytree(directory, partial, ignore=shutil.ignore_patterns("results.json", "logit_offset.json"))
        os.replace(partial, target)
    config = config.copy_and_resolve_references()
    config.read_test, config.calibration.kind = True, kind
    print(f"=== study phase2, read on test once ({kind}): {target}", flush=True)
    return {**train.run(config, target), "workdir": target}


def write_study_table(workdir: str, budget: str, seeds: int, phase2_seeds: bool, keys, rows) -> str:
    """The study's Markdown table (and the corrections' one) and its JSON; `keys`: the grid's keys,
    or None for a one-factor study."""
    grid = keys is not None
    keys = keys or []
    os.makedirs(workdir, exist_ok=True)
    stem = os.path.join(workdir, f"study_phase2_{budget}" + ("_grid" if grid else ""))
    what = ("Every combination of the grid's values" if grid else "Each factor varies alone from the defaults")
    seeds_are = (f"{seeds} phase-II seed(s) from one phase I" if phase2_seeds else f"{seeds} phase I(s)")
    lines = [f"# Phase-II study (async, CIFAR-100-LT IF 100), budget `{budget}`, {seeds_are}", "",
             f"Top-1 accuracy (%) on the validation split ({rows[0]['val_classes'] if rows else '-'} classes "
             f"with validation images); mean ± std over seeds. {what}; "
             "every variant starts from its seed's phase I. The runs do not read the test split "
             "(read_test=False).", "",
             "| " + (" | ".join(keys) if grid else "factor | value") + " | overall | many | medium | few |",
             "|" + "---|" * ((len(keys) if grid else 2) + 4)]
    for row in rows:
        names = [row["settings"][k] for k in keys] if grid else [row["key"], row["value"]]
        lines.append("| " + " | ".join(names) + " | " + " | ".join(
            mean_std(row[k]) for k in ("overall", "many", "medium", "few")) + " |")
    if any("calibrated" in row for row in rows):
        lines += ["", "With a post-hoc correction of the final logits (calibration.py), its value chosen on the "
                  "same validation split per run (so these figures are optimistic by that choice):", "",
                  "| " + (" | ".join(keys) if grid else "factor | value")
                  + " | correction | value | overall | many | medium | few |",
                  "|" + "---|" * ((len(keys) if grid else 2) + 6)]
        for row in rows:
            names = [row["settings"][k] for k in keys] if grid else [row["key"], row["value"]]
            for kind, figures in row.get("calibrated", {}).items():
                lines.append("| " + " | ".join([*names, kind, " / ".join(f"{v:g}" for v in figures["value"])])
                             + " | " + " | ".join(mean_std(figures[k]) for k in ("overall", "many", "medium", "few"))
                             + " |")
    tested = [row for row in rows if "test" in row]
    if tested:
        kind = tested[0]["test"]["calibration"]
        lines += ["", f"Read once on the test split after the choice (--read_test={kind}: "
                  + ("no correction" if kind == "none" else f"{kind} at its value chosen on validation per run")
                  + "); each run's files under test/:", "",
                  "| " + (" | ".join(keys) if grid else "factor | value") + " | seeds | overall | many | medium | few |",
                  "|" + "---|" * ((len(keys) if grid else 2) + 5)]
        for row in tested:
            names = [row["settings"][k] for k in keys] if grid else [row["key"], row["value"]]
            lines.append("| " + " | ".join([*names, str(len(row["test"]["overall"]))]) + " | " + " | ".join(
                mean_std(row["test"][k]) for k in ("overall", "many", "medium", "few")) + " |")
    text = "\n".join(lines) + "\n"
    if tested:  # Its own files: the validation-only table of the same points stays as it was.
        stem += f"_test_{kind}"
    files.write_text(stem + ".md", text)
    files.write_text(stem + ".json", json.dumps({"study": "phase2", "budget": budget, "seeds": seeds,
                                                  "phase2_seeds": phase2_seeds, "grid": keys, "rows": rows}))
    return text
