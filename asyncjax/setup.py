"""A run's `Context`, built once by `build`: what every phase shares.

    build(config, workdir)
      -> checks.resolve        the config checked, head resolved (nothing read yet)
      -> datasets.load         images and labels (the loaders refuse bad data, naming the file)
      -> checks.*              phase1_from, devices, init_from, the workdir's identity
      -> Context               frozen config, labels in output rows, splits, mesh, model factory,
                               the CPU's faster convolution form, the reporter

Labels inside a run are output rows ("ranks": row r is the r-th largest class; rows < C1 are the
head, METHOD.md "Notation"); `split.rank_to_class` maps them back to the dataset's class ids.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from asyncjax import augment, checkpointing, checks, config_utils, pretrained, sharding, speed_choice, steps
from asyncjax.data import datasets, longtail
from asyncjax.data.pipeline import InMemoryImages
from asyncjax.data.sampling import EpochSampler
from asyncjax.methods import PHASE_IDS, RECIPE_OF
from asyncjax.models import make_backbone, make_model
from asyncjax.models.conv import conv_for
from asyncjax.reporting import Reporter



@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """Images and their labels in output rows; `name` is 'test' or 'val'."""
    images: object
    labels: np.ndarray
    name: str


@dataclasses.dataclass
class Context:
    config: ml_collections.FrozenConfigDict
    config_json: str                    # The config as written into checkpoints and exports.
    workdir: str | None                 # None: compile_check (nothing is written).
    data: longtail.LongTailData
    split: longtail.ClassSplit          # Rank order of the classes and C1.
    train_labels: np.ndarray            # Output rows of the training images.
    test: EvalSplit | None              # Read once, for the final figures (None: read_test=False).
    monitor: EvalSplit                  # Monitoring while training: validation where there is one, else test.
    counts: np.ndarray                  # n_j by output row.
    mesh: jax.sharding.Mesh
    conv_weight_grad: str               # "xla" or "taps": the form this machine runs faster.
    reporter: Reporter
    rng: jax.Array
    lock: object = None                 # workdir/run.lock, held while the run lives (checks.lock_workdir).
    # Seconds each machine trained, per phase ({phase: {hardware.device_name(): s}}), over every
    # run of the workdir (checkpoint meta `machine_s`): filled by loop.train_phase / restore_finished.
    trained_on: dict = dataclasses.field(default_factory=dict)

    def close(self) -> None:
        """Closes the logs and releases the workdir for the next run."""
        self.reporter.close()
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    # ---- rows of the training set --------------------------------------------------------
    @property
    def head_rows(self) -> np.ndarray:
        """Training rows of the C1 head classes (phase I's data, X1)."""
        return np.flatnonzero(self.train_labels < self.split.num_head)

    @property
    def tail_rows(self) -> np.ndarray:
        """Training rows of the C2 tail classes (X2)."""
        return np.flatnonzero(self.train_labels >= self.split.num_head)

    @property
    def all_rows(self) -> np.ndarray:
        return np.arange(len(self.train_labels))

    # ---- randomness ------------------------------------------------------------------------
    def seed_of(self, phase: str) -> int:
        """The seed of `phase`'s randomness: `seed`, or phase II's own `phase2_seed` (>= 0)."""
        if phase == "phase2" and self.config.phase2_seed >= 0:
            return self.config.phase2_seed
        return self.config.seed

    def rng_of(self, phase: str) -> jax.Array:
        """The key `phase`'s draws fold in from (the run's `rng` unless phase2_seed is set)."""
        seed = self.seed_of(phase)
        return self.rng if seed == self.config.seed else jax.random.key(seed)

    @property
    def val(self) -> EvalSplit | None:
        return self.monitor if self.monitor.name == "val" else None

    # ---- models and recipes ------------------------------------------------------------
    @property
    def dtype(self):
        return jnp.bfloat16 if self.config.model.dtype == "bfloat16" else jnp.float32

    @property
    def conv(self):
        return conv_for(self.conv_weight_grad)

    @property
    def train_preprocess(self):
        """The training augmentation, on the device (the 224-px pipeline crops on the host)."""
        return augment.get_preprocess(self.config.dataset, self.data.small)[0]

    @property
    def eval_preprocess(self):
        return augment.get_preprocess(self.config.dataset, self.data.small)[1]

    def build_model(self, num_outputs: int, **options):
        """The backbone and head of `num_outputs` classes (padded for the mesh's model axis)."""
        config = self.config
        return make_model(config.model.backbone, config.model.head, num_outputs, dtype=self.dtype,
                          cosine_scale_init=config.model.cosine_scale_init, conv=self.conv,
                          num_padded=sharding.padded_classes(num_outputs, self.mesh), **options)

    def random_state(self, model, tx):
        """A first phase's random start (phase I, the joint phase); init_from is applied by the loop."""
        return steps.init_train_state(model, tx, jax.random.fold_in(self.rng, 0), self.data.image_shape)

    def build_backbone(self):
        return make_backbone(self.config.model.backbone, self.dtype, self.conv)

    def recipe(self, phase: str) -> ml_collections.ConfigDict:
        return self.config[RECIPE_OF[phase]]

    def sampler(self, phase: str, rows: np.ndarray) -> EpochSampler:
        """Phase `phase`'s batch order over the training rows `rows`."""
        recipe = self.recipe(phase)
        return EpochSampler(self.train_labels[rows], recipe.batch_size, seed=self.seed_of(phase),
                            phase=PHASE_IDS[phase], strategy=recipe.sampler, total_epochs=recipe.epochs,
                            max_steps_per_epoch=recipe.max_steps_per_epoch)

    def phase_total(self, phase: str, rows: np.ndarray) -> int:
        """Optimiser steps of phase `phase` over `rows`."""
        return self.recipe(phase).epochs * self.sampler(phase, rows).steps_per_epoch

    def checkpoint_dir(self, phase: str, workdir: str | None = None) -> str:
        return os.path.join(workdir or self.workdir, "checkpoints", phase)

    # ---- what is said and saved about the data -----------------------------------------
    def meta(self, **extra) -> dict:
        """What every checkpoint holds beside the state (export and predict read it)."""
        return {"rank_to_class": self.split.rank_to_class.tolist(), "num_head": self.split.num_head,
                "class_names": self.data.class_names, "image_shape": list(self.data.image_shape),
                "config": self.config_json, **extra}

    def class_names_by_row(self) -> list[str] | None:
        names = self.data.class_names
        return None if names is None else [names[c] for c in self.split.rank_to_class]

    def data_summary(self) -> list[str]:
        """The data as this run sees it, one fact a line."""
        counts, split, data = self.counts, self.split, self.data
        sizes = data.split_sizes or {"train": len(self.train_labels), "test": len(data.test_labels),
                                     **({"val": len(self.val.labels)} if self.val else {})}
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


def build(config: ml_collections.ConfigDict, workdir: str | None, dry_run: bool = False,
          data: longtail.LongTailData | None = None, devices=None) -> Context:
    """Checks everything, loads the data and builds the run's Context; only then, when every
    input is known good, touches the workdir (a dry run only checks). `data` (default: the
    config's dataset) and `devices` (default: this job's) are given by compile_check: the shapes
    of a dataset that is not here, the devices of a TPU topology that is not here, no workdir."""
    config = checks.resolve(config)
    notes = []  # Said once the reporter exists.
    data = datasets.load(config, log=notes.append) if data is None else data
    if config.model.backbone == "auto":  # Custom data: by the images' size.
        config.model.backbone = "resnet32" if max(data.image_shape[:2]) <= 64 else "resnet50"
    config_json = config.to_json()
    config = checks.freeze(config)
    finished = checks.is_finished(workdir)  # Only reported: the phase I it started from may be gone since.
    if workdir is not None and not finished:
        checks.check_phase1_from(config, workdir)
    counts = data.train_counts
    split = longtail.make_class_split(counts, config.split.num_head_classes or None)
    train_labels = split.to_rank(data.train_labels)
    test = EvalSplit(data.test_images, split.to_rank(data.test_labels), "test")
    # Monitoring: validation where the benchmark has one, so the test split is only read at the end.
    monitor = (EvalSplit(data.val_images, split.to_rank(data.val_labels), "val") if data.val_images is not None
               else test)
    if not config.read_test:
        if monitor is test or data.test_images is data.val_images:
            raise ValueError("read_test=False needs a validation split apart from the test split "
                             "(CIFAR-100-LT: data.val_per_class > 0)")
        test = None  # Nothing below can read it.
    chosen_on_validation = [key for key, wanted in (
        ("calibration.kind", config.method == "async" and config.calibration.kind != "none"),
        ("decoupling.tau_grid", config.method == "tau_norm" and len(config.decoupling.tau_grid) > 0),
        ("loss.logit_adjustment_grid", config.method == "logit_adjustment" and len(config.loss.logit_adjustment_grid) > 0))
        if wanted]
    if chosen_on_validation and (monitor is test or data.test_images is data.val_images):
        raise ValueError(f"{chosen_on_validation[0]} chooses its value on the validation split, and this data has "
                         "none apart from its test split (CIFAR-100-LT: data.val_per_class > 0)")
    checks.check_devices(config, jax.device_count() if devices is None else len(devices))
    mesh = sharding.make_mesh(config.mesh.model, devices)
    context = Context(config=config, config_json=config_json, workdir=workdir, data=data, split=split,
                      train_labels=train_labels, test=test, monitor=monitor, counts=counts[split.rank_to_class],
                      mesh=mesh, conv_weight_grad="", reporter=None, rng=jax.random.key(config.seed))
    for key, (phase, _, _) in checks.FROM_KEYS.items():  # Before any disk work: the source's phase finished.
        source = config.get(key, "")
        if source and not finished:
            latest = None
            if os.path.isdir(context.checkpoint_dir(phase, source)):
                reader = checkpointing.PhaseCheckpoints(context.checkpoint_dir(phase, source), read_only=True)
                latest = reader.latest_step()
                reader.close()
            rows = context.head_rows if phase == "phase1" else context.all_rows
            checks.check_phase_finished(key, source, latest, context.phase_total(phase, rows))
    # The faster weight-gradient form on this machine (a timed trial on CPU, cached per CPU).
    context.conv_weight_grad = speed_choice.resolve_conv_weight_grad(
        config.model.conv_weight_grad, backbone=config.model.backbone, batch_size=config.phase1.batch_size,
        image_size=data.image_shape[0], dtype=config.model.dtype, mesh=mesh,
        compilation_cache_dir=jax.config.jax_compilation_cache_dir, log=notes.append)
    if config.init_from:  # Names and shapes against this backbone, before any disk work.
        pretrained.check_fits(config.init_from, make_backbone(config.model.backbone), data.image_shape)
    if workdir is not None:
        names = data.class_names
        note, fresh = checks.check_workdir(config, workdir, data_identity={
            "rank_to_class": context.split.rank_to_class.tolist(), "num_head": int(context.split.num_head),
            "class_names": None if names is None else list(names)})
        if not dry_run and jax.process_index() == 0:
            context.lock = checks.lock_workdir(workdir)  # Before anything is written there.
            if context.lock is None:
                notes.append(f"note: {workdir}'s filesystem has no file locks: nothing stops a second run on it")
            if fresh:
                checks.write_config(config, workdir)
        if note and not dry_run:
            notes.append(note)
    context.reporter = Reporter(None if dry_run or workdir is None else workdir)
    if (config.method == "ldam_drw" and config.dataset == "cifar100_lt"
            and any(config.phase1[k] != v for k, v in config_utils.LDAM_DRW_CIFAR.items())):
        notes.append(f"note: LDAM-DRW's published CIFAR recipe is {config_utils.LDAM_DRW_CIFAR} "
                     "(configs/cifar100_lt.py:method=ldam_drw); this run keeps its own")
    for note in [*notes, *context.data_summary()]:
        context.reporter.info(note)
    return context
