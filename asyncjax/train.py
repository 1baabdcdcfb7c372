"""The dual-phase training loop (Algorithm 1 of the paper; METHOD.md).

    run(config, workdir)
      -> phase I   : cross-entropy on the C1 head classes X1        (Eq. 1)
      -> memory    : K exemplars per head class from phase-I features (Eqs. 2-5)
      -> phase II  : X2 + M with L_cls + L_intra + lambda L_dis      (Eqs. 6-9)
      -> results.json (overall / many / medium / few, final model)

`method=plain` runs one joint phase over all C classes instead. Every phase
resumes from its latest checkpoint; the batch order is a pure function of
(seed, phase, epoch, step), so a resumed run sees the same batches.

Workdir layout: config.json, checkpoints/{phase1,phase2,joint}/,
memory_bank.npz, metrics.jsonl, tensorboard/, results.json.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from asyncjax import (augment, baselines, checkpointing, cli, config_utils, evaluate, losses, memory, optim,
                      pretrained, sharding, speed_choice, steps)
from asyncjax.data import datasets, longtail
from asyncjax.data.pipeline import InMemoryImages
from asyncjax.data.sampling import EpochSampler
from asyncjax.data.sampling import STRATEGIES
from asyncjax.models import BACKBONES, HEADS, make_backbone, make_model
from asyncjax.models.conv import CONV_WEIGHT_GRADS, conv_for
from asyncjax.reporting import Reporter

# Fields that must match to resume a workdir: a different value means other checkpoints.
IDENTITY_KEYS = ("dataset", "method", "data.imbalance", "data.max_count", "data.subsample_seed", "model.backbone",
                 "model.head", "split.num_head_classes", "memory.per_class", "seed", "phase1_from", "mesh.model")
# What a phase I depends on: phase1_from refuses a workdir whose phase I differs in any of them.
PHASE1_KEYS = ("dataset", "data.imbalance", "data.max_count", "data.subsample_seed", "split.num_head_classes",
               "model.backbone", "model.head", "model.dtype", "model.cosine_scale_init", "seed", "init_from",
               "mesh.model")  # mesh.model: the head's padding for the model axis (its checkpoint's shape).
PHASE_IDS = {"phase1": 1, "phase2": 2, "joint": 3, "classifier": 4}
# "async" is the paper's method; the others train one joint phase over all classes, and
# the decoupling baselines then re-train (cRT) or adjust (tau-norm, NCM) the classifier.
DECOUPLED = ("crt", "lws", "tau_norm", "ncm")
METHODS = ("async", "plain", "ldam_drw", "balanced_softmax", "logit_adjustment", *DECOUPLED)
EVAL_BATCH = 500


@jax.jit
def _all_finite(tree) -> jax.Array:
    """1.0 when every entry of every array in `tree` is finite, else NaN."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
    return jnp.where(finite, 1.0, jnp.nan)


def _summary(accuracies: dict) -> str:
    text = lambda v: "n/a" if v is None else f"{v:.2f}"
    return (f"overall {text(accuracies['overall'])}% (many {text(accuracies['many'])}, "
            f"medium {text(accuracies['medium'])}, few {text(accuracies['few'])})")


@dataclasses.dataclass
class PhasePrograms:
    """What one phase trains with (Trainer.phase_programs)."""
    recipe: ml_collections.ConfigDict
    sampler: EpochSampler
    tx: optax.GradientTransformation
    schedule: Callable
    model: Any
    abstract_state: Any                  # The TrainState's shapes and dtypes (jax.eval_shape).
    state_shardings: Any
    init: Callable                       # (*init_inputs) -> the phase's first TrainState, placed.
    train_step: Callable                 # (state, *extra, batch, rng) -> (state, metrics).
    multi_step: Callable | None          # The device-resident scan of steps (steps_per_dispatch > 1).


class Interrupted(cli.Interrupted):
    """Raised after a checkpoint when SIGTERM/SIGINT arrived during training (exit status 3)."""


class TrainingDiverged(FloatingPointError):
    pass


def _get(config, dotted, default=""):
    """config['a']['b'] for 'a.b'; `default` where a workdir written by an older version lacks it."""
    for part in dotted.split("."):
        if part not in config:
            return default
        config = config[part]
    return config


def check_phase1_from(config, workdir: str) -> None:
    """Refuses a phase1_from workdir that is not an async run of the same phase I (naming the
    key), or this run's own workdir. Its finished phase I is checked by the Trainer."""
    source = config.phase1_from
    if not source:
        return
    if config.method != "async":
        raise ValueError(f"phase1_from needs method=async, got {config.method!r}")
    if os.path.abspath(source) == os.path.abspath(workdir):
        raise ValueError("phase1_from is this run's own workdir; give another --workdir")
    path = os.path.join(source, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"phase1_from: {source} holds no config.json (not a workdir of asyncjax.main)")
    with open(path) as f:
        saved = json.load(f)
    if saved.get("method") != "async":
        raise ValueError(f"phase1_from: {source} is a method={saved.get('method')!r} run, not async")
    ours = json.loads(config.to_json())
    differing = [k for k in PHASE1_KEYS if _get(saved, k) != _get(ours, k)]
    differing += [f"phase1.{k}" for k in sorted(ours["phase1"]) if saved["phase1"].get(k) != ours["phase1"][k]]
    if differing:
        raise ValueError(f"phase1_from: {source}'s phase I differs from this run's in "
                         + ", ".join(f"{k} ({_get(saved, k)!r} there, {_get(ours, k)!r} here)" for k in differing))


def phases_of(method: str) -> tuple[str, ...]:
    """The recipes (config keys) that `method` trains with, in order."""
    if method == "async":
        return ("phase1", "phase2")
    return ("phase1", "classifier") if method in ("crt", "lws") else ("phase1",)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Every choice of every phase the method will run, checked before anything is read or
    written: a typo fails in seconds, with the key named, not hours in when its phase starts."""
    def one_of(key: str, allowed) -> None:
        value = _get(config, key)
        if value not in allowed:
            raise ValueError(f"{key} must be one of {tuple(allowed)}, got {value!r}")

    one_of("method", METHODS)
    one_of("model.backbone", ("auto", *BACKBONES))  # auto: by the images' size, once they are loaded.
    one_of("model.head", ("auto", *HEADS))
    one_of("model.dtype", ("float32", "bfloat16"))
    one_of("model.conv_weight_grad", CONV_WEIGHT_GRADS)
    one_of("phase2_init", ("random", "imprint"))
    one_of("loss.retention_reduction", ("mean", "sum"))
    one_of("decoupling.ncm_metric", ("cosine", "euclidean"))
    one_of("data.source", ("tfds", "list"))
    if config.method in ("async", "ldam_drw") and config.model.head != "cosine":
        raise ValueError(f"method={config.method} needs model.head='cosine' (it uses cosine scores)")
    if config.diagnostics.gradient_distortion and config.method != "plain":
        raise ValueError("diagnostics.gradient_distortion needs method=plain (the joint cross-entropy "
                         "whose head- and tail-class gradients Fig. 1 compares)")
    if config.method in ("tau_norm", "lws") and config.model.head != "linear":
        raise ValueError(f"method={config.method} needs model.head='linear' (it rescales the linear classifier)")
    if config.memory.per_class < 1:
        raise ValueError(f"memory.per_class must be >= 1, got {config.memory.per_class}")
    if config.loss.retention_temperature <= 0:
        raise ValueError(f"loss.retention_temperature must be > 0, got {config.loss.retention_temperature}")
    if config.steps_per_dispatch < 1:
        raise ValueError(f"steps_per_dispatch must be >= 1, got {config.steps_per_dispatch}")
    for name in phases_of(config.method):
        one_of(f"{name}.schedule", ("step", "cosine"))
        one_of(f"{name}.sampler", STRATEGIES)
        one_of(f"{name}.batch_norm", ("update", "freeze") if name == "phase2" else ("update",))
        recipe = config[name]
        for key in ("epochs", "batch_size", "base_batch_size"):
            if recipe[key] < 1:
                raise ValueError(f"{name}.{key} must be >= 1, got {recipe[key]}")
        if not 0 <= recipe.warmup_epochs <= recipe.epochs:
            raise ValueError(f"{name}.warmup_epochs must be in [0, {name}.epochs], got {recipe.warmup_epochs}")
        if recipe.schedule == "step" and not all(0 < f <= 1 for f in recipe.decay_fractions):
            raise ValueError(f"{name}.decay_fractions must lie in (0, 1], got {tuple(recipe.decay_fractions)}")


def _atomic_write_json(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def holds_progress(workdir: str) -> bool:
    """A checkpoint, a memory bank or results: what a run of another configuration must not touch."""
    checkpoints = os.path.join(workdir, "checkpoints")
    saved = os.path.isdir(checkpoints) and any(
        entry.isdigit() for phase in os.listdir(checkpoints) if os.path.isdir(os.path.join(checkpoints, phase))
        for entry in os.listdir(os.path.join(checkpoints, phase)))
    return saved or any(os.path.exists(os.path.join(workdir, f)) for f in ("memory_bank.npz", "results.json"))


def _saved_config(workdir: str) -> dict | None:
    """workdir's config.json (None: there is none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _identity_differences(config, saved: dict) -> list[str]:
    """IDENTITY_KEYS on which the saved config differs from `config`."""
    saved = ml_collections.ConfigDict(saved)
    return [f"{k}: workdir has {_get(saved, k)!r}, this run {_get(config, k)!r}" for k in IDENTITY_KEYS
            if _get(saved, k) != _get(config, k)]


def _changed_settings(config, saved: dict) -> list[str]:
    """Every leaf of the config that differs from the saved one, as `key: saved -> now`."""
    def leaves(tree, prefix=""):
        if isinstance(tree, dict):
            for key, value in tree.items():
                yield from leaves(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], tree
    before, after = dict(leaves(saved)), dict(leaves(json.loads(config.to_json())))
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def check_workdir(config, workdir: str, write: bool = True) -> str | None:
    """Writes config.json on a new workdir; refuses a workdir that holds checkpoints of another
    configuration. A workdir with a config.json but nothing saved (a run stopped before its first
    checkpoint) is taken over; returns a note saying so. A resume with other settings outside the
    identity keys is allowed; returns a note naming them. `write=False` (dry runs) only checks."""
    saved = _saved_config(workdir)
    differing = None if saved is None else _identity_differences(config, saved)
    progress = saved is not None and holds_progress(workdir)
    if differing and progress:
        raise ValueError(f"workdir {workdir!r} holds checkpoints of a different configuration "
                         f"({', '.join(differing)}); use another --workdir")
    if write and jax.process_index() == 0 and not progress:
        os.makedirs(workdir, exist_ok=True)
        _atomic_write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    if differing:
        return f"workdir {workdir} held the configuration of a run that saved nothing ({'; '.join(differing)}): " \
               "taken over by this run"
    changed = _changed_settings(config, saved) if progress else []
    if changed:  # Allowed (a path, a log interval), but a recipe change mid-run must be visible.
        return (f"resuming {workdir} with {len(changed)} setting(s) other than its config.json "
                f"(which keeps the first run's): {'; '.join(changed)}")
    return None


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop checkpoints after the current step and stops."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Holds what the phases share: data in rank space, mesh, reporter."""

    def __init__(self, config, workdir: str | None, dry_run: bool = False, data=None, devices=None):
        """`data` (default: datasets.load(config)) and `devices` (default: this job's) are given
        by compile_check: the shapes of a dataset that is not here, the devices of a TPU topology
        that is not here, and no workdir (None), so that it builds the programs training would."""
        config_utils.resolve_head(config)  # model.head=auto -> the method's own head.
        validate_config(config)
        self.config = config
        self.workdir = workdir
        notes = []  # Said once the reporter exists.
        self.data = datasets.load(config, log=notes.append) if data is None else data
        if config.model.backbone == "auto":  # Custom data: by the images' size.
            config.model.backbone = "resnet32" if max(self.data.image_shape[:2]) <= 64 else "resnet50"
        # A finished run is only reported: the phase I it started from may be gone since.
        finished = workdir is not None and os.path.exists(os.path.join(workdir, "results.json"))
        if workdir is not None and not finished:
            check_phase1_from(config, workdir)
        counts = self.data.train_counts
        split_arg = config.split.num_head_classes or None
        self.split = longtail.make_class_split(counts, split_arg)
        self.train_labels = self.split.to_rank(self.data.train_labels)   # Output rows.
        self.test_labels = self.split.to_rank(self.data.test_labels)
        # Monitoring split: validation where the benchmark has one, so the test split is
        # only looked at for the final figures.
        if self.data.val_images is not None:
            self.monitor = (self.data.val_images, self.split.to_rank(self.data.val_labels), "val")
        else:
            self.monitor = (self.data.test_images, self.test_labels, "test")
        self.counts = counts[self.split.rank_to_class]                    # n_j by rank.
        if config.phase1_from and not finished:  # Before any disk work: the source must hold a finished phase I.
            head_rows = np.flatnonzero(self.train_labels < self.split.num_head)
            total, latest = self.phase_total("phase1", head_rows), None
            if os.path.isdir(os.path.join(config.phase1_from, "checkpoints", "phase1")):
                source = self._source_phase1()
                latest = source.latest_step()
                source.close()
            if latest != total:
                raise ValueError(f"phase1_from: {config.phase1_from} has no finished phase I "
                                 f"(latest phase-I checkpoint: {latest}, of {total} steps)")
        self.mesh = sharding.make_mesh(config.mesh.model, devices)
        self.dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
        # The faster weight-gradient form on this machine (a timed trial on CPU, cached per CPU).
        self.conv_weight_grad = speed_choice.resolve_conv_weight_grad(
            config.model.conv_weight_grad, backbone=config.model.backbone, batch_size=config.phase1.batch_size,
            image_size=self.data.image_shape[0], dtype=config.model.dtype, mesh=self.mesh,
            compilation_cache_dir=jax.config.jax_compilation_cache_dir, log=notes.append)
        self.conv = conv_for(self.conv_weight_grad)
        self.train_preprocess, self.eval_preprocess = augment.get_preprocess(config.dataset, self.data.small)
        if config.init_from:  # Names and shapes against this backbone, before any disk work.
            pretrained.check_fits(config.init_from, make_backbone(config.model.backbone), self.data.image_shape)
        # Only now, when the inputs are known good, touch the disk (a dry run only checks).
        taken_over = None if workdir is None else check_workdir(config, workdir, write=not dry_run)
        if taken_over and not dry_run:
            notes.append(taken_over)
        self.reporter = Reporter(None if dry_run or workdir is None else workdir)
        if (config.method == "ldam_drw" and config.dataset == "cifar100_lt"
                and any(config.phase1[k] != v for k, v in config_utils.LDAM_DRW_CIFAR.items())):
            notes.append(f"note: LDAM-DRW's published CIFAR recipe is {config_utils.LDAM_DRW_CIFAR} "
                         "(configs/cifar100_lt.py:method=ldam_drw); this run keeps its own")
        for note in [*notes, *self.data_summary()]:
            self.reporter.info(note)
        self.rng = jax.random.key(config.seed)
        self.stop = None
        self._predict_fns = {}

    # ---- helpers -------------------------------------------------------------------------
    def data_summary(self) -> list[str]:
        """The data as this run sees it, one fact a line."""
        counts, split, data = self.counts, self.split, self.data
        sizes = data.split_sizes or {"train": len(self.train_labels), "test": len(self.test_labels),
                                     **({"val": len(self.monitor[1])} if self.monitor[2] == "val" else {})}
        groups = {name: int(mask.sum()) for name, mask in longtail.shot_groups(counts).items()}
        height, width, channels = data.image_shape
        return [f"data: {self.config.dataset}, {split.num_classes} classes"
                + (f" ({', '.join(data.class_names[:3])}, ...)" if data.class_names else ""),
                "data: images per split: " + ", ".join(f"{k} {v}" for k, v in sizes.items()),
                f"data: {split.num_head} head classes (phase I) + {split.num_tail} tail classes (phase II)",
                f"data: imbalance factor measured {counts.max() / max(counts.min(), 1):.1f} "
                f"(largest class {counts.max()}, smallest {counts.min()})",
                f"data: shot groups (classes) many {groups['many']}, medium {groups['medium']}, few {groups['few']}",
                f"data: images {height}x{width}x{channels}, "
                + ("held in memory" if isinstance(data.train_images, InMemoryImages) else "streamed")
                + (f"; {data.note}" if data.note else "")]

    def class_names_by_row(self) -> list[str] | None:
        names = self.data.class_names
        return None if names is None else [names[c] for c in self.split.rank_to_class]

    def model(self, num_outputs: int, **options):
        return make_model(self.config.model.backbone, self.config.model.head, num_outputs, dtype=self.dtype,
                          cosine_scale_init=self.config.model.cosine_scale_init, conv=self.conv,
                          num_padded=sharding.padded_classes(num_outputs, self.mesh), **options)

    def meta(self, **extra) -> dict:
        return {"rank_to_class": self.split.rank_to_class.tolist(), "num_head": self.split.num_head,
                "class_names": self.data.class_names, "image_shape": list(self.data.image_shape),
                "config": self.config.to_json(), **extra}

    def predict(self, model, state, table, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sharded inference over the rows `indices` (default: all) of an image table:
        (top-1 output rows, features). Each process reads only its share of each batch."""
        indices = np.arange(len(table)) if indices is None else np.asarray(indices)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        batch = self.eval_batch(len(indices))
        if model not in self._predict_fns:  # One compilation per model, not per call.
            self._predict_fns[model] = self.predict_program(model, jax.tree.map(lambda x: x.sharding, variables))
        predict = self._predict_fns[model]
        predictions, features = [], []
        chunks = [indices[start:start + batch] for start in range(0, len(indices), batch)]
        # The last chunk is padded with its first row up to a whole batch (results dropped).
        padded = [np.concatenate([c, np.full(batch - len(c), c[0])]) for c in chunks]
        local_batches = table.batches([sharding.process_slice(p, self.mesh) for p in padded], training=False)
        for chunk, local in zip(chunks, local_batches):
            out = predict(variables, sharding.global_batch({"images": local}, self.mesh, batch)["images"])
            out = multihost_utils.process_allgather(out, tiled=True)
            predictions.append(np.asarray(out["prediction"])[:len(chunk)])
            features.append(np.asarray(out["features"])[:len(chunk)])
        return np.concatenate(predictions), np.concatenate(features)

    def eval_batch(self, rows: int) -> int:
        """The inference batch for `rows` images: EVAL_BATCH, or fewer for small sets (smoke
        runs get a batch of their own size, not a mostly padded one), a multiple of the data axis."""
        unit = sharding.data_size(self.mesh)
        return -(-min(EVAL_BATCH, rows) // unit) * unit

    def predict_program(self, model, variable_shardings):
        """The jitted inference step (features for the memory bank, predictions for evaluation)."""
        offset = None
        if self.config.method == "logit_adjustment":  # argmax_j logits_j - tau log(pi_j).
            prior = self.counts / self.counts.sum()
            offset = -self.config.loss.logit_adjustment_tau * np.log(prior).astype(np.float32)
        return jax.jit(steps.make_predict_step(model, self.eval_preprocess, offset),
                       in_shardings=(variable_shardings, sharding.batch_sharding(self.mesh)),
                       out_shardings=sharding.batch_sharding(self.mesh))

    def accuracy(self, model, state, num_classes_evaluated: tuple = (None,), monitor: bool = False) -> list[dict]:
        """Shot accuracies on the test split (or, `monitor`, the monitoring split); for each
        entry of `num_classes_evaluated`, over all samples (None) or those of the first k output rows (k)."""
        table, labels, _ = self.monitor if monitor else (self.data.test_images, self.test_labels, "test")
        predictions, _ = self.predict(model, state, table)
        results = []
        for k in num_classes_evaluated:
            keep = np.ones(len(predictions), bool) if k is None else labels < k
            results.append(evaluate.shot_accuracy(predictions[keep], labels[keep], self.counts))
        return results

    def recipe_and_sampler(self, name: str, rows: np.ndarray):
        """Phase `name`'s recipe and its batch order over `rows`."""
        config = self.config
        recipe = {"phase2": config.phase2, "classifier": config.classifier}.get(name, config.phase1)
        sampler = EpochSampler(self.train_labels[rows], recipe.batch_size, seed=config.seed, phase=PHASE_IDS[name],
                               strategy=recipe.sampler, total_epochs=recipe.epochs,
                               max_steps_per_epoch=recipe.max_steps_per_epoch)
        return recipe, sampler

    def phase_total(self, name: str, rows: np.ndarray) -> int:
        """Optimiser steps of phase `name` over `rows`."""
        recipe, sampler = self.recipe_and_sampler(name, rows)
        return recipe.epochs * sampler.steps_per_epoch

    def _source_phase1(self) -> checkpointing.PhaseCheckpoints:
        return checkpointing.PhaseCheckpoints(os.path.join(self.config.phase1_from, "checkpoints", "phase1"),
                                              read_only=True)

    def load_phase1(self, num_head: int):
        """(model, state, phase-I seconds) of phase1_from's final phase-I checkpoint, placed as
        this run's phase I would place it. The source workdir is only read."""
        recipe = self.config.phase1
        tx, _ = optim.make_optimizer(recipe, 1)
        model = self.model(num_head)
        abstract = jax.eval_shape(lambda: self.initial_state(model, tx))
        source = self._source_phase1()
        state, meta = source.restore(source.latest_step(), checkpointing.abstract_with_shardings(
            abstract, sharding.state_shardings(abstract, self.mesh)))
        source.close()
        self.reporter.info(f"phase1: from {self.config.phase1_from} (step {int(state.step)}, not trained here)")
        return model, state, float(meta.get("elapsed_s", 0.0))

    # ---- one phase -----------------------------------------------------------------------
    def phase_programs(self, name: str, num_outputs: int, rows: np.ndarray, init_fn, make_step,
                       extra_shardings: tuple = (), batch_extras=None, trainable: str = "all",
                       model_options: dict | None = None, init_inputs: tuple = ()) -> PhasePrograms:
        """Phase `name`'s model, optimiser and jitted programs over the training rows `rows`, with
        their shardings: built, not run (train_phase runs them; compile_check compiles them).

        init_fn(model, tx, *init_inputs) -> TrainState; make_step(model, tx, schedule, steps_per_epoch)
        -> step fn. Arrays the first state is made from (phase I's, for phase II) are `init_inputs`,
        arguments of the jitted init: a program may not close over an array that spans other
        processes' devices (a classifier sharded across hosts)."""
        config = self.config
        recipe, sampler = self.recipe_and_sampler(name, rows)
        if recipe.batch_size % sharding.data_size(self.mesh):  # Each process loads whole data blocks.
            raise ValueError(f"{name}.batch_size={recipe.batch_size} is not divisible by the "
                             f"{sharding.data_size(self.mesh)} data-parallel devices")
        tx, schedule = optim.make_optimizer(recipe, sampler.steps_per_epoch, trainable=trainable)
        model = self.model(num_outputs, **(model_options or {}))
        abstract = jax.eval_shape(lambda *inputs: init_fn(model, tx, *inputs), *init_inputs)
        state_shardings = sharding.state_shardings(abstract, self.mesh)
        batch_sh = sharding.batch_sharding(self.mesh)
        replicated = sharding.replicated(self.mesh)
        step = make_step(model, tx, schedule, sampler.steps_per_epoch)
        train_step = jax.jit(step, in_shardings=(state_shardings, *extra_shardings, batch_sh, replicated),
                             out_shardings=(state_shardings, replicated), donate_argnums=0)
        multi_step = None
        if config.steps_per_dispatch > 1 and isinstance(self.data.train_images, InMemoryImages):
            # Device-resident path: the phase's uint8 images and labels live on the devices, each
            # dispatch gathers its batches there and runs several steps in one lax.scan.
            unroll = sharding.platform(self.mesh) == "cpu"  # See steps.scanned_steps: XLA:CPU loops are slow.
            multi_step = jax.jit(
                steps.scanned_steps(step, batch_extras, batch_sh, unroll=unroll),
                in_shardings=(state_shardings, *extra_shardings, replicated, replicated, replicated, replicated),
                out_shardings=(state_shardings, replicated), donate_argnums=0)
        return PhasePrograms(recipe=recipe, sampler=sampler, tx=tx, schedule=schedule, model=model,
                             abstract_state=abstract, state_shardings=state_shardings,
                             init=jax.jit(lambda *inputs: init_fn(model, tx, *inputs),
                                          out_shardings=state_shardings),
                             train_step=train_step, multi_step=multi_step)

    def train_phase(self, name: str, num_outputs: int, rows: np.ndarray, init_fn, make_step,
                    extra_inputs: tuple = (), extra_shardings: tuple = (), batch_extras=None,
                    meta_extra: dict | None = None, trainable: str = "all", model_options: dict | None = None,
                    init_inputs: tuple = ()):
        """Trains one phase to its last step, resuming from its checkpoints (the programs of
        `phase_programs`, which takes the arguments of the same names).
        Returns (model, state, elapsed seconds over all runs of this phase).
        """
        config = self.config
        programs = self.phase_programs(name, num_outputs, rows, init_fn, make_step, extra_shardings,
                                       batch_extras, trainable, model_options, init_inputs)
        recipe, sampler, model = programs.recipe, programs.sampler, programs.model
        abstract, state_shardings = programs.abstract_state, programs.state_shardings
        labels = self.train_labels[rows]
        ckpt = checkpointing.PhaseCheckpoints(os.path.join(self.workdir, "checkpoints", name),
                                              keep=config.keep_checkpoints)
        total = recipe.epochs * sampler.steps_per_epoch
        latest = ckpt.latest_step()
        elapsed_before = 0.0
        if latest is not None:
            state, meta = ckpt.restore(latest, checkpointing.abstract_with_shardings(abstract, state_shardings))
            elapsed_before = float(meta.get("elapsed_s", 0.0))
            if latest < total:
                self.reporter.info(f"{name}: resuming from step {latest}/{total}")
        else:
            state = programs.init(*init_inputs)
            if config.init_from and name in ("phase1", "joint"):
                # Outside the jitted init, so that the weights are not baked into a program.
                params, batch_stats = pretrained.load_backbone(jax.device_get(state.params),
                                                               jax.device_get(state.batch_stats), config.init_from)
                state = jax.device_put(state.replace(params=params, batch_stats=batch_stats), state_shardings)
                self.reporter.info(f"{name}: backbone initialised from {config.init_from}")
        if int(state.step) >= total:
            ckpt.close()
            return model, state, elapsed_before

        self.reporter.info(f"{name}: {len(rows)} training images, {num_outputs} classes, "
                           f"{sampler.steps_per_epoch} steps/epoch x {recipe.epochs} epochs, "
                           f"global batch {recipe.batch_size}, lr {optim.scaled_learning_rate(recipe):g}, "
                           f"{self.mesh.size} devices")
        train_step, multi_step = programs.train_step, programs.multi_step
        rng = jax.random.fold_in(self.rng, PHASE_IDS[name])
        per_dispatch = config.steps_per_dispatch
        resident = multi_step is not None
        if resident:
            # Every process holds all of the phase's images (CIFAR: tens of MB), so each builds the replicated array.
            replicated = sharding.replicated(self.mesh)
            replicate = lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x))
            device_images, device_labels = replicate(self.data.train_images.images[rows]), replicate(labels)
            unroll = sharding.platform(self.mesh) == "cpu"
            self.reporter.info(f"{name}: {len(rows)} images resident on the devices, up to {per_dispatch} "
                               "steps per dispatch" + (" (unrolled on CPU: one compile per distinct count, "
                                                       "and no faster than 1 step per dispatch there)"
                                                       if unroll else ""))
        started = time.time()
        last_log_time, last_log_step = time.time(), int(state.step)
        summed = None

        def save(step_number):
            ckpt.save(step_number, state, self.meta(elapsed_s=elapsed_before + time.time() - started,
                                                    **(meta_extra or {})))

        def epoch_batches(epoch, first_step):
            """(positions, images) of this process for the rest of an epoch; the images come
            from the input pipeline, which reads ahead (seeded by seed, phase, epoch, step)."""
            positions = [sharding.process_slice(sampler.batch(epoch, s), self.mesh)
                         for s in range(first_step, sampler.steps_per_epoch)]
            images = self.data.train_images.batches([rows[p] for p in positions], training=True,
                                                    key=(config.seed, PHASE_IDS[name], epoch), start=first_step)
            return zip(positions, images)

        batches = None
        step_number = int(state.step)
        try:
            while step_number < total:
                epoch, step_in_epoch = divmod(step_number, sampler.steps_per_epoch)
                if resident:
                    # Up to per_dispatch steps, never across an epoch end, a log line or a checkpoint.
                    steps_now = min(per_dispatch, sampler.steps_per_epoch - step_in_epoch, total - step_number,
                                    *(k - step_number % k for k in (config.log_every_steps,
                                                                    config.checkpoint_every_steps)))
                    positions = np.stack([sampler.batch(epoch, step_in_epoch + i) for i in range(steps_now)])
                    state, metrics = multi_step(state, *extra_inputs, device_images, device_labels,
                                                replicate(positions), rng)
                else:
                    steps_now = 1
                    if batches is None or step_in_epoch == 0:
                        batches = epoch_batches(epoch, step_in_epoch)
                    positions, images = next(batches)
                    local = {"images": images, "labels": labels[positions]}
                    if batch_extras is not None:
                        local.update(batch_extras(rows[positions], labels[positions]))
                    state, metrics = train_step(state, *extra_inputs,
                                                sharding.global_batch(local, self.mesh, recipe.batch_size), rng)
                summed = metrics if summed is None else jax.tree.map(jnp.add, summed, metrics)
                done = step_number + steps_now
                step_number = done
                end_of_epoch = done % sampler.steps_per_epoch == 0
                if done % config.log_every_steps == 0 or done == total or self.stop.signal:
                    count = done - last_log_step
                    means = {k: float(v) / count for k, v in jax.device_get(summed).items()}
                    self._check_finite(name, done, means)
                    now = time.time()
                    rate = count * recipe.batch_size / max(now - last_log_time, 1e-9)
                    self.reporter.train_line(name, epoch, recipe.epochs, done, total, means, rate,
                                             (total - done) * recipe.batch_size / max(rate, 1e-9))
                    self.reporter.write(name, done, {**means, "images_per_second": rate})
                    last_log_time, last_log_step, summed = now, done, None
                if done % config.checkpoint_every_steps == 0 or done == total or self.stop.signal:
                    # Never write a checkpoint of a diverged model: the last good one stays the latest.
                    # A step's loss can be finite while its update overflowed the parameters.
                    self._check_finite(name, done, {**jax.device_get(metrics),
                                                    "parameters": float(_all_finite(state.params))})
                    save(done)
                if self.stop.signal:
                    raise Interrupted(f"{self.stop.signal} received: stopped {name} after step {done}/{total} "
                                      f"with a checkpoint; run the same command again to resume")
                if end_of_epoch and (epoch + 1) % config.eval_every_epochs == 0 and done < total:
                    acc, = self.accuracy(model, state, monitor=True)
                    self.reporter.info(f"{name} epoch {epoch + 1} {self.monitor[2]} (monitoring only): "
                                       + " ".join(f"{k} {100 * v:.2f}" for k, v in acc.items()))
                    self.reporter.write(name, done, {f"{self.monitor[2]}_{k}": v for k, v in acc.items()})
        finally:
            # Let an in-flight (good) checkpoint finish even when the loop stops with an error.
            ckpt.wait()
            ckpt.close()
        return model, state, elapsed_before + time.time() - started

    def _check_finite(self, phase, step, means):
        for term, value in means.items():
            if term != "lr" and not np.isfinite(value):
                what = "parameters" if term == "parameters" else "loss"
                raise TrainingDiverged(f"non-finite {what} in {phase} at step {step}: {term} = {value}; "
                                       "the last good checkpoint is kept")

    # ---- the method ----------------------------------------------------------------------
    def initial_state(self, model, tx) -> steps.TrainState:
        """The first phase's random start (--config.init_from is applied after, in train_phase)."""
        return steps.init_train_state(model, tx, jax.random.fold_in(self.rng, 0), self.data.image_shape)

    def joint_loss(self, steps_per_epoch: int):
        """The joint phase's loss(out, labels, step) for each baseline method."""
        loss_config, counts = self.config.loss, self.counts
        if self.config.method == "ldam_drw":
            margins = baselines.ldam_margins(counts, loss_config.ldam_max_margin)
            weights = baselines.drw_class_weights(counts, loss_config.drw_beta)
            start = int(round(loss_config.drw_start_fraction * self.config.phase1.epochs)) * steps_per_epoch

            def ldam_drw(out, labels, step):
                class_weights = jnp.where(step >= start, weights, jnp.ones_like(weights))
                return baselines.ldam_loss(out["cosine"], labels, margins, scale=loss_config.ldam_scale,
                                           class_weights=class_weights)
            return ldam_drw
        if self.config.method == "balanced_softmax":
            return lambda out, labels, step: baselines.logit_adjusted_loss(out["logits"], labels, counts)
        return steps.default_loss  # plain; logit_adjustment adjusts only at prediction time.

    def joint_step_factory(self):
        """make_step of the joint phase of plain and the baselines (their loss: joint_loss)."""
        distortion = self.split.num_head if self.config.diagnostics.gradient_distortion else None
        return lambda model, tx, schedule, steps_per_epoch: steps.make_classification_step(
            model, tx, schedule, self.train_preprocess, self.joint_loss(steps_per_epoch), distortion)

    def first_phase(self):
        """(name, outputs, training rows, make_step) of the method's first phase."""
        if self.config.method == "async":
            c1 = self.split.num_head
            return "phase1", c1, np.flatnonzero(self.train_labels < c1), self.phase1_step_factory()
        return "joint", self.split.num_classes, np.arange(len(self.train_labels)), self.joint_step_factory()

    def run_plain(self) -> dict:
        num_classes = self.split.num_classes
        rows = np.arange(len(self.train_labels))
        model, state, seconds = self.train_phase("joint", num_classes, rows, self.initial_state,
                                                 self.joint_step_factory())
        if self.config.method in DECOUPLED:
            return self.run_decoupled(model, state, seconds)
        return {**self.final_accuracy(model, state), "wall_time_s": {"joint": seconds}}

    def run_decoupled(self, joint_model, joint_state, joint_seconds) -> dict:
        """Kang et al. (2020) on the joint model: cRT re-trains the classifier with
        class-balanced sampling on the frozen backbone; tau-norm rescales its rows
        w_j / ||w_j||^tau (no bias); NCM predicts the nearest class-mean feature."""
        method, num_classes = self.config.method, self.split.num_classes
        joint = self._percent(self.accuracy(joint_model, joint_state)[0])
        started = time.time()
        if method == "tau_norm":
            head = joint_state.params["head"]["fc"]
            fc = {"kernel": baselines.tau_normalize(head["kernel"], self.config.decoupling.tau),
                  "bias": jnp.zeros_like(head["bias"])}
            state = joint_state.replace(params={**joint_state.params, "head": {"fc": fc}})
            result = self.final_accuracy(joint_model, state)
        elif method == "ncm":
            _, train_features = self.predict(joint_model, joint_state, self.data.train_images)
            means = baselines.class_means(train_features, self.train_labels, num_classes)
            _, test_features = self.predict(joint_model, joint_state, self.data.test_images)
            predictions = np.asarray(baselines.ncm_predict(test_features, means,
                                                           metric=self.config.decoupling.ncm_metric))
            result = self.accuracy_of(predictions)
        else:  # crt: a fresh classifier; lws: per-class scales on the joint classifier.
            def init(model, tx, joint_params, joint_batch_stats):
                if method == "crt":
                    head = model.init(jax.random.fold_in(self.rng, 4), jnp.zeros((1, *self.data.image_shape)),
                                      train=False)["params"]["head"]
                else:
                    head = {**joint_params["head"], "class_scale": jnp.ones((num_classes,), jnp.float32)}
                params = {**joint_params, "head": head}
                return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                        batch_stats=joint_batch_stats, opt_state=tx.init(params))
            make_step = lambda model, tx, schedule, steps_per_epoch: steps.make_classifier_retraining_step(
                model, tx, schedule, self.train_preprocess)
            model, state, _ = self.train_phase(
                "classifier", num_classes, np.arange(len(self.train_labels)), init, make_step,
                trainable="head" if method == "crt" else "class_scale",
                model_options={"class_scale": method == "lws"},
                init_inputs=(joint_state.params, joint_state.batch_stats))
            result = self.final_accuracy(model, state)
        return {**result, "joint": joint,
                "wall_time_s": {"joint": joint_seconds, method: time.time() - started}}

    def run_async(self) -> dict:
        c1, c = self.split.num_head, self.split.num_classes
        head_rows = np.flatnonzero(self.train_labels < c1)
        if self.config.phase1_from:
            model1, state1, seconds1 = self.load_phase1(c1)
        else:
            model1, state1, seconds1 = self.train_phase("phase1", c1, head_rows, self.initial_state,
                                                        self.phase1_step_factory())
        head, everything = self.accuracy(model1, state1, (c1, None))
        phase1_result = {"head": self._percent(head), "all": self._percent(everything)}
        val1 = self.val_accuracy(model1, state1, c1)
        if val1:  # The phase-I model on the validation images of its own (head) classes.
            phase1_result["val_head"] = val1
        self.reporter.info(f"phase1 final test accuracy: head classes {phase1_result['head']['overall']:.2f}%, "
                           f"all classes {phase1_result['all']['overall']:.2f}%")

        started = time.time()
        bank = self.memory_bank(model1, state1, head_rows)
        seconds_bank = time.time() - started
        tail_rows = np.flatnonzero(self.train_labels >= c1)
        rows2 = np.sort(np.concatenate([tail_rows, memory.flatten_bank(bank)]))
        self.reporter.info(f"memory bank: {int((bank >= 0).sum())} exemplars of {c1} head classes "
                           f"({seconds_bank:.1f} s); phase II data: {len(tail_rows)} tail + bank")
        if self.stop.signal:
            raise Interrupted(f"{self.stop.signal} received: stopped after the memory bank (saved to "
                              "memory_bank.npz); run the same command again to resume")

        # The frozen phase-I backbone; copied so that donating phase II's state never frees it.
        old_variables = jax.tree.map(lambda x: jnp.array(x, copy=True), self.frozen_backbone(state1))
        imprint = self.imprinted_rows(model1, state1) if self.config.phase2_init == "imprint" else None

        def init2(model, tx, params1, batch_stats1, imprint):
            fresh = model.init(jax.random.fold_in(self.rng, 2), jnp.zeros((1, *self.data.image_shape)),
                               train=False)["params"]["head"]
            if imprint is not None:
                fresh = {**fresh, "kernel": fresh["kernel"].at[:, c1:c].set(imprint)}
            params = steps.extend_classifier(params1, fresh, c1)
            return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    batch_stats=batch_stats1, opt_state=tx.init(params))

        weight = self.retention_weight()
        model2, state2, seconds2 = self.train_phase(
            "phase2", c, rows2, init2, self.phase2_step_factory(), extra_inputs=(old_variables,),
            extra_shardings=(self.frozen_backbone_shardings(state1),), batch_extras=self.is_memory,
            meta_extra={"memory_bank": bank.tolist()}, init_inputs=(state1.params, state1.batch_stats, imprint))
        return {**self.final_accuracy(model2, state2), "phase1": phase1_result,
                "phase1_from": self.config.phase1_from or None,
                "num_head_classes": c1, "retention_weight": weight,
                "memory_bank_size": int((bank >= 0).sum()), "phase2_rows": int(len(rows2)),
                "wall_time_s": {"phase1": seconds1, "memory_bank": seconds_bank, "phase2": seconds2}}

    # The phases' steps, shared by the training loop and compile_check.
    def phase1_step_factory(self):
        """make_step(model, tx, schedule, steps_per_epoch) of phase I: cross-entropy on X1 (Eq. 1)."""
        return lambda model, tx, schedule, steps_per_epoch: steps.make_classification_step(
            model, tx, schedule, self.train_preprocess)

    def retention_weight(self) -> float:
        """lambda = lambda_base * sqrt(C1 / C2)."""
        return losses.retention_weight(self.split.num_head, self.split.num_tail,
                                       self.config.loss.retention_weight_base)

    def phase2_step_factory(self):
        """make_step of phase II (Eq. 9), whose step takes the frozen phase-I backbone's variables."""
        backbone = make_backbone(self.config.model.backbone, self.dtype, self.conv)
        return lambda model, tx, schedule, steps_per_epoch: steps.make_phase2_step(
            model, backbone, tx, schedule, self.train_preprocess, num_head=self.split.num_head,
            retention_weight=self.retention_weight(), loss_config=self.config.loss,
            freeze_batch_norm=self.config.phase2.batch_norm == "freeze")

    def is_memory(self, rows, labels) -> dict:
        """Phase II's extra batch entry: 1 on exemplars of the memory bank (head-class rows)."""
        return {"is_memory": (labels < self.split.num_head).astype(np.float32)}

    @staticmethod
    def frozen_backbone(state1) -> dict:
        """The phase-I backbone's {'params', 'batch_stats'} (arrays, or their shapes)."""
        return {"params": state1.params["backbone"], "batch_stats": state1.batch_stats["backbone"]}

    def frozen_backbone_shardings(self, state1):
        return sharding.state_shardings(self.frozen_backbone(state1), self.mesh)

    def memory_bank(self, model1, state1, head_rows) -> np.ndarray:
        """Exemplar indices (into the LT training set) per head class; saved to memory_bank.npz."""
        path = os.path.join(self.workdir, "memory_bank.npz")
        source = os.path.join(self.config.phase1_from, "memory_bank.npz") if self.config.phase1_from else ""
        for candidate in (path, source):
            if candidate and os.path.exists(candidate):
                with np.load(candidate, allow_pickle=False) as saved:
                    bank = saved["bank"]
                if bank.shape[1] == self.config.memory.per_class:  # The source's, when K is the same.
                    if candidate == source and jax.process_index() == 0:
                        np.savez(path + ".tmp.npz", bank=bank, rank_to_class=self.split.rank_to_class)
                        os.replace(path + ".tmp.npz", path)
                    return bank
        _, features = self.predict(model1, state1, self.data.train_images, head_rows)
        local = memory.build_memory_bank(features, self.train_labels[head_rows], np.arange(self.split.num_head),
                                         self.config.memory.per_class,
                                         max_chunk_bytes=self.config.memory.max_chunk_bytes)
        bank = np.where(local >= 0, head_rows[np.maximum(local, 0)], -1)
        if jax.process_index() == 0:
            tmp = path + ".tmp.npz"
            np.savez(tmp, bank=bank, rank_to_class=self.split.rank_to_class)
            os.replace(tmp, path)
        return bank

    def imprinted_rows(self, model1, state1) -> np.ndarray:
        """(choice) W_c2 rows = normalised mean phase-I feature of each tail class: [d, C2]."""
        c1 = self.split.num_head
        tail_rows = np.flatnonzero(self.train_labels >= c1)
        _, features = self.predict(model1, state1, self.data.train_images, tail_rows)
        labels = self.train_labels[tail_rows] - c1
        means = np.stack([features[labels == k].mean(axis=0) for k in range(self.split.num_tail)])
        means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
        return np.asarray(means.T, np.float32)  # Host data: every process passes the same to the init.

    @staticmethod
    def _percent(accuracies: dict) -> dict:
        # An empty shot group (NaN) is written as null: results.json stays strict JSON.
        return {k: None if np.isnan(v) else 100.0 * v for k, v in accuracies.items()}

    def final_accuracy(self, model, state) -> dict:
        """Overall / shot accuracies (percent), plus the per-class accuracy by output row, on the
        test split; and `val`, the same on the validation split where there is one."""
        predictions, _ = self.predict(model, state, self.data.test_images)
        result = self.accuracy_of(predictions)
        val = self.val_accuracy(model, state)
        return {**result, "val": val} if val else result

    def val_accuracy(self, model, state, num_classes: int | None = None) -> dict | None:
        """Shot accuracies (percent) on the validation split, over its images of the first
        `num_classes` output rows (all: None), with `classes`: how many classes have images there."""
        if self.monitor[2] != "val":
            return None
        acc, = self.accuracy(model, state, (num_classes,), monitor=True)
        labels = self.monitor[1] if num_classes is None else self.monitor[1][self.monitor[1] < num_classes]
        return {**self._percent(acc), "classes": int(len(np.unique(labels)))}

    def accuracy_of(self, predictions: np.ndarray) -> dict:
        per_class = evaluate.per_class_accuracy(predictions, self.test_labels, self.split.num_classes)
        return {**self._percent(evaluate.shot_accuracy(predictions, self.test_labels, self.counts)),
                "per_class_accuracy": [None if np.isnan(a) else 100.0 * a for a in per_class],
                "train_counts": self.counts.tolist()}

    def run(self) -> dict:
        results_path = os.path.join(self.workdir, "results.json")
        if os.path.exists(results_path):
            with open(results_path) as f:
                results = json.load(f)
            self.reporter.info(f"{self.workdir} is complete: {_summary(results)}")
            return results
        with _StopFlag() as self.stop, jax.set_mesh(self.mesh):
            results = self.run_async() if self.config.method == "async" else self.run_plain()
            results["method"] = self.config.method
        results.update({"config": json.loads(self.config.to_json()), "data_note": self.data.note,
                        "evaluated_on": "val" if self.data.test_images is self.data.val_images else "test",
                        "class_names": self.class_names_by_row(),
                        "num_classes": self.split.num_classes, "devices": jax.device_count(),
                        "rank_to_class": self.split.rank_to_class.tolist()})
        if jax.process_index() == 0:
            _atomic_write_json(results_path, results)
        self.reporter.info(f"final test accuracy: {_summary(results)}"
                           + (f" [{self.data.note}]" if self.data.note else ""))
        self.reporter.close()
        return results


def use_compilation_cache(path: str) -> str | None:
    """Points JAX's persistent compilation cache at `path` (unless the environment already chose
    one, or `path` is ""); returns the directory in use."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if not path:
        return None
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    use_compilation_cache(config.compilation_cache_dir)
    return Trainer(config, workdir).run()


def dry_run(config: ml_collections.ConfigDict, workdir: str, timed_steps: int = 3) -> dict:
    """Validates everything a run would (config, data, workdir identity, init_from, phase1_from),
    prints the resolved configuration, the data, the steps of each phase and an estimate of the
    time from a few timed steps of the first phase on this machine, and writes nothing there."""
    use_compilation_cache(config.compilation_cache_dir)
    trainer = Trainer(config, workdir, dry_run=True)  # Refuses what the run would refuse.
    print(config)
    split, counts = trainer.split, trainer.counts
    groups = {name: int(mask.sum()) for name, mask in longtail.shot_groups(counts).items()}
    print(f"data: {config.dataset}, {len(trainer.train_labels)} training images in {split.num_classes} classes "
          f"(largest {counts.max()}, smallest {counts.min()}; many/medium/few classes {groups}); "
          f"{split.num_head} head + {split.num_tail} tail classes; test {len(trainer.test_labels)} images"
          + (f"; validation {len(trainer.monitor[1])} images" if trainer.monitor[2] == "val" else ""))
    c1 = split.num_head
    rows = {"phase1": np.flatnonzero(trainer.train_labels < c1) if config.method == "async"
            else np.arange(len(trainer.train_labels)), "classifier": np.arange(len(trainer.train_labels))}
    bank = sum(min(config.memory.per_class, int(n)) for n in counts[:c1])  # K per head class at most.
    rows["phase2"] = np.concatenate([np.flatnonzero(trainer.train_labels >= c1), np.arange(bank)])
    plan = {}
    for name in phases_of(config.method):
        plan[name] = {"images": len(rows[name]), "steps": trainer.phase_total(name, rows[name]),
                      "batch": config[name].batch_size}
    # A few timed steps of the first phase's own train step (compilation excluded).
    recipe = config.phase1
    name, outputs, first_rows, make_step = trainer.first_phase()
    with jax.set_mesh(trainer.mesh):
        programs = trainer.phase_programs(name, outputs, first_rows, trainer.initial_state, make_step)
        model, state, step = programs.model, programs.init(), programs.train_step
        local_rows = sharding.process_slice(np.arange(recipe.batch_size) % len(trainer.train_labels), trainer.mesh)
        local = {"images": next(iter(trainer.data.train_images.batches([local_rows], training=True))),
                 "labels": np.minimum(trainer.train_labels[local_rows], model.head.num_classes - 1)}
        batch = sharding.global_batch(local, trainer.mesh, recipe.batch_size)
        state, metrics = step(state, batch, trainer.rng)   # Compiles.
        jax.block_until_ready(metrics)
        started = time.perf_counter()
        for _ in range(timed_steps):
            state, metrics = step(state, batch, trainer.rng)
        jax.block_until_ready(metrics)
    rate = timed_steps * recipe.batch_size / (time.perf_counter() - started)
    total = 0.0
    for name, phase in plan.items():
        phase["estimated_s"] = phase["steps"] * phase["batch"] / rate
        total += phase["estimated_s"]
        print(f"{name}: {phase['images']} images, {phase['steps']} steps of batch {phase['batch']}, "
              f"estimated {datetime.timedelta(seconds=int(phase['estimated_s']))}")
    print(f"estimated total {datetime.timedelta(seconds=int(total))} at {rate:.0f} img/s (phase I's step, "
          f"timed here on {jax.device_count()} {jax.devices()[0].platform} device(s); evaluation and the "
          f"memory bank not included; phase II's step costs about 1.1-1.2x phase I's); nothing was written "
          f"to {workdir}")
    return {"phases": plan, "images_per_second": rate}
