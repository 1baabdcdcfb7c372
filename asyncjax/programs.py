"""A phase's spec -> its jitted programs, with their shardings: built, not run.

A `PhaseSpec` says what one phase trains (its outputs, rows, first state and step); `build`
turns it into `PhasePrograms` (model, optimiser, the jitted init, train step and device-resident
scan). The training loop runs them, `--dry_run` times them, and compile_check compiles them for a
TPU topology: one set of programs for all three. `jit_train_step` is the only place a train step
gets its shardings (benchmarks/train_step.py uses it too).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax

from asyncjax import optim, sharding, steps
from asyncjax.data.pipeline import InMemoryImages
from asyncjax.data.sampling import EpochSampler


@dataclasses.dataclass
class PhaseSpec:
    """One phase of a method (methods/): what it trains and from what.

    init(model, tx, *init_inputs) -> its first TrainState; make_step(model, tx, schedule) -> its
    train step (state, *extra_inputs, batch, rng) -> (state, metrics). Arrays the first state is
    made from (phase I's, for phase II) are `init_inputs`, arguments of the jitted init: a program
    may not close over an array that spans other processes' devices (a classifier sharded across
    hosts). They may be ShapeDtypeStructs where the programs are only compiled (compile_check)."""
    name: str                            # "phase1", "phase2", "joint" or "classifier" (its checkpoints' folder).
    num_outputs: int
    rows: np.ndarray                     # Training rows it samples from.
    init: Callable
    make_step: Callable
    init_inputs: tuple = ()
    extra_inputs: tuple = ()             # Phase II: the frozen phase-I backbone's variables.
    extra_shardings: tuple = ()
    batch_extras: Callable | None = None  # labels -> extra batch entries (phase II: is_memory).
    trainable: str = "all"               # optim.make_optimizer: "all", "head" or "class_scale".
    frozen_head_columns: int = 0         # optim.make_optimizer: the head's first classes held fixed.
    model_options: dict = dataclasses.field(default_factory=dict)
    meta_extra: dict = dataclasses.field(default_factory=dict)  # Saved with each checkpoint.


@dataclasses.dataclass
class PhasePrograms:
    """What one phase trains with."""
    recipe: Any                          # The config's recipe (config_utils.phase_recipe).
    sampler: EpochSampler
    tx: optax.GradientTransformation
    schedule: Callable
    model: Any
    abstract_state: Any                  # The TrainState's shapes and dtypes (jax.eval_shape).
    state_shardings: Any
    init: Callable                       # (*init_inputs) -> the phase's first TrainState, placed.
    train_step: Callable                 # (state, *extra, batch, rng) -> (state, metrics).
    multi_step: Callable | None          # The device-resident scan of steps (steps_per_dispatch > 1).

    @property
    def total_steps(self) -> int:
        return self.recipe.epochs * self.sampler.steps_per_epoch


def jit_train_step(step: Callable, state_shardings, extra_shardings: tuple, mesh):
    """A train step with its shardings: the state as `state_shardings` (donated: updated in
    place), extra inputs as given, the batch split over `data`, the rng and metrics replicated."""
    replicated = sharding.replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, *extra_shardings, sharding.batch_sharding(mesh), replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def jit_scanned_steps(step: Callable, batch_extras, state_shardings, extra_shardings: tuple, mesh,
                      unroll: bool | None = None):
    """steps.scanned_steps(step) with its shardings: the device-resident images, labels, batch
    positions and rng replicated. `unroll` (default: on CPU only) lays the steps out one by one."""
    replicated = sharding.replicated(mesh)
    if unroll is None:
        unroll = sharding.platform(mesh) == "cpu"  # See steps.scanned_steps: XLA:CPU loops are slow.
    return jax.jit(steps.scanned_steps(step, batch_extras, sharding.batch_sharding(mesh), unroll=unroll),
                   in_shardings=(state_shardings, *extra_shardings, replicated, replicated, replicated, replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def build(ctx, spec: PhaseSpec) -> PhasePrograms:
    """The model, optimiser and jitted programs of `spec` over its training rows."""
    recipe, sampler = ctx.recipe(spec.name), ctx.sampler(spec.name, spec.rows)
    tx, schedule = optim.make_optimizer(recipe, sampler.steps_per_epoch, trainable=spec.trainable,
                                        frozen_head_columns=spec.frozen_head_columns)
    model = ctx.build_model(spec.num_outputs, **spec.model_options)
    init = lambda *inputs: spec.init(model, tx, *inputs)
    abstract = jax.eval_shape(init, *spec.init_inputs)
    state_shardings = sharding.state_shardings(abstract, ctx.mesh)
    step = spec.make_step(model, tx, schedule)
    multi_step = None
    if ctx.config.steps_per_dispatch > 1 and isinstance(ctx.data.train_images, InMemoryImages):
        # Device-resident path: the phase's uint8 images and labels live on the devices, each
        # dispatch gathers its batches there and runs several steps in one lax.scan.
        multi_step = jit_scanned_steps(step, spec.batch_extras, state_shardings, spec.extra_shardings, ctx.mesh)
    return PhasePrograms(recipe=recipe, sampler=sampler, tx=tx, schedule=schedule, model=model,
                         abstract_state=abstract, state_shardings=state_shardings,
                         init=jax.jit(init, out_shardings=state_shardings),
                         train_step=jit_train_step(step, state_shardings, spec.extra_shardings, ctx.mesh),
                         multi_step=multi_step)
