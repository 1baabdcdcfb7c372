"""Command line: python -m asyncjax.plot --workdir=DIR [--baseline=PLAIN_DIR] [--output=DIR/plots]

Writes PNGs from a run's metrics.jsonl and results.json (needs matplotlib: the `plot` extra):
- curves.png: every loss term and the training accuracy of each phase, against the step,
  with the monitoring test accuracy;
- shots.png: Many / Medium / Few / overall of this run, beside the baseline run's if given;
- per_class.png: test accuracy of each class against its training count (log axis);
- gradient_distortion.png (runs with diagnostics.gradient_distortion): the paper's Fig. 1,
  s(grad1, grad) and s(grad2, grad) (a, b), and the three gradient norms (c, d).
On the root directory of `python -m asyncjax.reproduce` it writes cifar100_lt_<budget>.png
(the table's rows: overall / Many / Medium / Few, mean and std over seeds, the published overall
marked) and, after `--ablation=...`, ablation_<name>_<budget>.png for each ablation run there
(the paper's Fig. 2 and 3), and after `--config=...` compare_<budget>.png (each method's figures,
and the per-class accuracy of the two best against the training count).
"""
from __future__ import annotations

import collections
import glob
import json
import os

from absl import app, flags


def define_flags():
    """Defined only when run as a program: importing make_plots beside another tool's flags never clashes."""
    flags.DEFINE_string("workdir", None, "Workdir of a finished (or running) asyncjax.main run.")
    flags.DEFINE_string("baseline", None, "Workdir of a baseline run (e.g. method=plain) to compare with.")
    flags.DEFINE_string("output", None, "Directory for the PNGs (default: WORKDIR/plots).")
    flags.mark_flag_as_required("workdir")


TERMS = ("loss", "cls", "intra", "dis", "accuracy")


def read_metrics(workdir: str) -> dict:
    """{phase: {metric: ([steps], [values])}} from metrics.jsonl (nulls and torn lines skipped)."""
    series = collections.defaultdict(lambda: collections.defaultdict(lambda: ([], [])))
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist: is {workdir!r} a workdir of asyncjax.main?")
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # A line torn by a killed run (files.append_lines).
                continue
            for key, value in record.items():
                if key in ("phase", "step", "time") or value is None:
                    continue
                steps, values = series[record["phase"]][key]
                steps.append(record["step"])
                values.append(value)
    return series


def plot_curves(plt, series, path):
    phases = list(series)
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 3.6), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for term in TERMS:
            if term in series[phase] and term != "accuracy":
                ax.plot(*series[phase][term], label=term)
        ax.set_ylabel("loss")
        accuracy_ax = ax.twinx()  # Accuracies in percent on their own axis.
        if "accuracy" in series[phase]:
            steps, values = series[phase]["accuracy"]
            accuracy_ax.plot(steps, [100 * v for v in values], "k:", label="train accuracy")
        for split in ("val", "test"):  # The monitoring split: val where the benchmark has one.
            if f"{split}_overall" in series[phase]:
                steps, values = series[phase][f"{split}_overall"]
                accuracy_ax.plot(steps, [100 * v for v in values], "ko--", label=f"{split} overall (monitoring)")
        accuracy_ax.set_ylabel("accuracy (%)")
        ax.set_title(phase)
        ax.set_xlabel("step")
        lines = ax.get_legend_handles_labels()
        more = accuracy_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_shots(plt, results, baseline, path):
    groups = ("overall", "many", "medium", "few")
    runs = [("this run", results)] + ([("baseline", baseline)] if baseline else [])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / len(runs)
    for i, (name, run) in enumerate(runs):
        label = f"{name} ({run.get('method', run['config']['method'])})"
        values = [run[g] if run[g] is not None else 0.0 for g in groups]
        bars = ax.bar([g + i * width for g in range(len(groups))], values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([g + width * (len(runs) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(plt, results, path):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    pairs = [(n, a) for n, a in zip(results["train_counts"], results["per_class_accuracy"]) if a is not None]
    ax.scatter([n for n, _ in pairs], [a for _, a in pairs], s=10)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy (%)")
    if "num_head_classes" in results:
        boundary = results["train_counts"][results["num_head_classes"] - 1]
        ax.axvline(boundary, color="grey", linestyle=":", label="split point (C1)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gradient_distortion(plt, series, path):
    phase = next(p for p in series if "grad_cos_head" in series[p])
    data = series[phase]
    fig, (cos_ax, norm_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    cos_ax.plot(*data["grad_cos_head"], label="s(grad1, grad)  data-rich")
    cos_ax.plot(*data["grad_cos_tail"], label="s(grad2, grad)  data-poor")
    cos_ax.set_title("cosine similarity to the overall gradient")
    for key, label in (("grad_norm_head", "|grad1|"), ("grad_norm_tail", "|grad2|"), ("grad_norm", "|grad|")):
        norm_ax.plot(*data[key], label=label)
    norm_ax.set_title("gradient norms")
    for ax in (cos_ax, norm_ax):
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ablation(plt, ablation: dict, path):
    """Overall / Many / Medium / Few (mean, std over seeds as error bars) against the ablated value."""
    import numpy as np

    rows = ablation["rows"]
    x = [row["value"] for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, style in (("overall", "ko-"), ("many", "s--"), ("medium", "^--"), ("few", "v--")):
        present = [[v for v in row[key] if v is not None] for row in rows]  # None: an empty shot group.
        means = [np.mean(v) if v else np.nan for v in present]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in present]
        ax.errorbar(x, means, yerr=stds, fmt=style, capsize=3, label=key)
    ax.set_xlabel(ablation["label"])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"ablation: {ablation['ablation']} (IF {ablation['imbalance']}, budget {ablation['budget']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_study(plt, study: dict, path):
    """A phase-II study on validation (mean over seeds, std as error bars). One factor at a time:
    one panel per factor, overall / Many / Medium / Few against its values. A joint grid: one panel
    per group (overall, Many, Few), the first grid key on the x axis, a line per combination of
    the others."""
    import numpy as np

    def mean_std(row, group):
        values = [v for v in row[group] if v is not None]
        return (np.mean(values) if values else np.nan), (np.std(values, ddof=1) if len(values) > 1 else 0.0)

    if study.get("grid"):
        first, others = study["grid"][0], study["grid"][1:]
        xs = list(dict.fromkeys(row["settings"][first] for row in study["rows"]))
        lines = list(dict.fromkeys(tuple(row["settings"][k] for k in others) for row in study["rows"]))
        groups = ("overall", "many", "few")
        fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups), 3.4), squeeze=False)
        for ax, group in zip(axes[0], groups):
            for line in lines:
                rows = {row["settings"][first]: row for row in study["rows"]
                        if tuple(row["settings"][k] for k in others) == line}
                figures = [mean_std(rows[x], group) if x in rows else (np.nan, 0.0) for x in xs]
                label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(others, line)) or "grid"
                ax.errorbar(np.arange(len(xs)), [m for m, _ in figures], yerr=[s for _, s in figures],
                            fmt="o-", capsize=3, label=label)
            ax.set_xticks(np.arange(len(xs)), xs)
            ax.set_xlabel(first, fontsize=8)
            ax.set_title(group, fontsize=9)
        axes[0][0].set_ylabel("validation top-1 (%)")
        axes[0][0].legend(fontsize=7)
    else:
        factors = list(dict.fromkeys(row["key"] for row in study["rows"]))
        fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.4), squeeze=False)
        for ax, factor in zip(axes[0], factors):
            rows = [row for row in study["rows"] if row["key"] == factor]
            x = np.arange(len(rows))
            for group, style in (("overall", "ko-"), ("many", "s--"), ("medium", "^--"), ("few", "v--")):
                figures = [mean_std(row, group) for row in rows]
                ax.errorbar(x, [m for m, _ in figures], yerr=[s for _, s in figures], fmt=style, capsize=3,
                            label=group)
            ax.set_xticks(x, [row["value"] for row in rows])
            ax.set_xlabel(factor, fontsize=8)
        axes[0][0].set_ylabel("validation top-1 (%)")
        axes[0][0].legend(fontsize=7)
    fig.suptitle(f"phase-II study, budget {study['budget']}, {study['seeds']} phase I(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_table(plt, table: dict, path):
    """The reproduction table as bars: per method and imbalance, overall / Many / Medium / Few
    (mean over seeds, std as error bars), and the published overall (the table's `paper`: Table 3
    or the baseline's own source) as a marker."""
    import numpy as np

    groups = ("overall", "many", "medium", "few")
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(groups) * max(1, len(rows)) / 3, 3.8))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        present = [[v for v in row[g] if v is not None] for g in groups]
        means = [np.mean(v) if v else 0.0 for v in present]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in present]
        x = [g + i * width for g in range(len(groups))]
        bars = ax.bar(x, means, width, yerr=stds, capsize=3, label=f"{row['method']} (IF {row['imbalance']}, {len(row['overall'])} seed(s))")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        if row.get("paper"):
            ax.plot([x[0]], [row["paper"]], "k_", markersize=14, markeredgewidth=2)
    ax.plot([], [], "k_", markersize=14, markeredgewidth=2, label="published, 200 epochs")
    ax.set_xticks([g + width * (len(rows) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"CIFAR-100-LT, budget {table['budget']}; mean ± std over each row's seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(plt, table: dict, path):
    """reproduce --config's comparison: (a) overall / Many / Medium / Few per method (mean, std
    over seeds), (b) the per-class accuracy of the two best methods (by mean overall) against the
    class's training count."""
    import numpy as np

    groups = ("overall", "many", "medium", "few")
    rows = sorted(table["rows"], key=lambda row: -np.mean(row["overall"]))
    fig, (bars_ax, class_ax) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        present = [[v for v in row[g] if v is not None] for g in groups]
        means = [np.mean(v) if v else 0.0 for v in present]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in present]
        bars_ax.bar([g + i * width for g in range(len(groups))], means, width, yerr=stds, capsize=2,
                    label=f"{row['method']} ({row['seeds']} seed(s))")
    bars_ax.set_xticks([g + width * (len(rows) - 1) / 2 for g in range(len(groups))], groups)
    bars_ax.set_ylabel("top-1 accuracy (%)")
    bars_ax.set_ylim(0, 105)
    bars_ax.set_title(f"(a) {table['compare']}, budget {table['budget']}, on {table['split'].split(' (')[0]}", fontsize=8)
    bars_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)  # Below: bars reach 100.
    for row, marker in zip([r for r in rows if r.get("per_class_accuracy")][:2], ("o", "x")):
        pairs = [(n, a) for n, a in zip(row["train_counts"], row["per_class_accuracy"]) if a is not None]
        class_ax.scatter([n for n, _ in pairs], [a for _, a in pairs], s=14, marker=marker, label=row["method"])
    class_ax.set_xscale("log")
    class_ax.set_xlabel("training images of the class")
    class_ax.set_ylabel("accuracy (%), mean over seeds")
    class_ax.set_title("(b) per class: the two best methods", fontsize=8)
    class_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(workdir: str, output: str | None = None, baseline: str | None = None) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = output or os.path.join(workdir, "plots")
    ablations = sorted(glob.glob(os.path.join(workdir, "ablation_*.json")))
    tables = sorted(glob.glob(os.path.join(workdir, "cifar100_lt_*.json")))
    studies = sorted(glob.glob(os.path.join(workdir, "study_phase2_*.json")))
    comparisons = sorted(glob.glob(os.path.join(workdir, "compare_*.json")))
    if (ablations or tables or studies or comparisons) and not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        os.makedirs(output, exist_ok=True)
        written = []
        for path in ablations + tables + studies + comparisons:
            with open(path) as f:
                figures = json.load(f)
            name = os.path.basename(path)[:-len(".json")] + ".png"
            draw = (plot_table if path in tables else plot_study if path in studies
                    else plot_compare if path in comparisons else plot_ablation)
            draw(plt, figures, os.path.join(output, name))
            written.append(os.path.join(output, name))
        return written
    series = read_metrics(workdir)
    os.makedirs(output, exist_ok=True)
    written = []
    plot_curves(plt, series, os.path.join(output, "curves.png"))
    written.append("curves.png")
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
        other = None
        if baseline:
            with open(os.path.join(baseline, "results.json")) as f:
                other = json.load(f)
        plot_shots(plt, results, other, os.path.join(output, "shots.png"))
        written.append("shots.png")
        if "per_class_accuracy" in results:
            plot_per_class(plt, results, os.path.join(output, "per_class.png"))
            written.append("per_class.png")
    if any("grad_cos_head" in s for s in series.values()):
        plot_gradient_distortion(plt, series, os.path.join(output, "gradient_distortion.png"))
        written.append("gradient_distortion.png")
    return [os.path.join(output, name) for name in written]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    paths = make_plots(flags.FLAGS.workdir, flags.FLAGS.output, flags.FLAGS.baseline)  # Errors: cli.run.
    print("\n".join(paths))


if __name__ == "__main__":
    from asyncjax import cli
    define_flags()
    cli.run(main, __doc__)
