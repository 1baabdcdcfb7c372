"""The loop of one training phase: restore or init, batches, the step, periodic events.

    train_phase(ctx, spec, evaluator, stop)
      state <- the phase's latest checkpoint, or its first state (init_from applied)
      for each dispatch until the last step:
          batch(es) of (seed, phase, epoch, step) -> the jitted step
          due(log_every)        -> a log line, metrics.jsonl, TensorBoard (finite, or stop)
          due(checkpoint_every) -> a checkpoint, never of a non-finite model
          SIGTERM / SIGINT      -> a checkpoint after the current step (several processes: after
                                   the step they agree on), then Interrupted (exit 3)
          end of an epoch       -> the monitoring split's accuracy every eval_every_epochs

The batch order is a pure function of (seed, phase, epoch, step), so a resumed run sees the same
batches as an uninterrupted one and ends with the same parameters.
"""
from __future__ import annotations

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from asyncjax import checkpointing, cli, hardware, optim, pretrained, programs, sharding
from asyncjax.methods import PHASE_IDS


class Interrupted(cli.Interrupted):
    """Raised after a checkpoint when SIGTERM/SIGINT arrived during training (exit status 3)."""


class TrainingDiverged(FloatingPointError):
    pass


class StopFlag:
    """SIGTERM / SIGINT ask the run to stop; `requested()`, called once after every step on every
    process, says after which step: the same step on every process.

    One process: a Python handler sets a flag, and the loop stops after the current step.
    Several processes (jax.distributed): the hosts of a pod receive SIGTERM at slightly different
    steps, and a process that stopped alone would leave the others waiting in the next step's
    collective (and the checkpoint's barrier) until a timeout killed the job without a checkpoint.
    There JAX's preemption service, installed by jax.distributed.initialize, notices SIGTERM on any
    process and agrees on a call that every process reaches
    (multihost_utils.reached_preemption_sync_point); SIGINT is passed on to it as SIGTERM.
    """

    def __init__(self):
        self.signal = None
        self._previous = {}
        self._calls = 0  # requested() calls, the same sequence on every process: the sync point's id
        self.agreed = False

    def __enter__(self):
        self.agreed = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
        # Across processes SIGTERM stays with JAX's own handler (a Python one would replace it).
        for sig in (signal.SIGINT,) if self.agreed else (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        if self.agreed:
            os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption notifier.

    def requested(self) -> bool:
        """Whether to checkpoint and stop now (after the step just taken)."""
        if not self.agreed:
            return self.signal is not None
        self._calls += 1
        if multihost_utils.reached_preemption_sync_point(self._calls):
            self.signal = self.signal or "SIGTERM"  # Received here, or on another process.
            return True
        return False

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def due(step: int, every: int, total: int) -> bool:
    """An every-N-steps event at `step`: each multiple of `every`, and the last step."""
    return step % every == 0 or step == total


@jax.jit
def _all_finite(tree) -> jax.Array:
    """1.0 when every entry of every array in `tree` is finite, else NaN."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
    return jnp.where(finite, 1.0, jnp.nan)


def check_finite(phase: str, step: int, values: dict) -> None:
    for term, value in values.items():
        if term != "lr" and not np.isfinite(value):
            what = "parameters" if term == "parameters" else "loss"
            raise TrainingDiverged(f"non-finite {what} in {phase} at step {step}: {term} = {value}; "
                                   "the last good checkpoint is kept")


def machine_seconds(meta: dict) -> dict:
    """{machine: seconds} a checkpoint's phase has trained (its meta `machine_s`); a checkpoint
    written before machines were recorded gives its time as 'not recorded'."""
    if "machine_s" in meta:
        return {name: float(s) for name, s in meta["machine_s"].items()}
    elapsed = float(meta.get("elapsed_s", 0.0))
    return {"not recorded": elapsed} if elapsed else {}


def add_seconds(machines: dict, name: str, seconds: float) -> dict:
    return {**machines, name: machines.get(name, 0.0) + seconds}


def restore_or_init(ctx, spec: programs.PhaseSpec, built: programs.PhasePrograms, ckpt):
    """(state, seconds trained before, {machine: seconds} of them): the latest checkpoint that can
    be read (a damaged one is set aside, said in the log, and the one before tried), or the phase's
    first state."""
    abstract = sharding.abstract(built.abstract_state, built.state_shardings)
    for step in reversed(ckpt.all_steps()):
        try:
            state, meta = ckpt.restore(step, abstract)
        except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, the step is unreadable.
            moved = ckpt.set_aside(step)
            ctx.reporter.info(f"{spec.name}: checkpoint {step} cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); set aside as {moved}, "
                              "resuming from the one before")
            continue
        if step < built.total_steps:
            ctx.reporter.info(f"{spec.name}: resuming from step {step}/{built.total_steps}")
        return state, float(meta.get("elapsed_s", 0.0)), machine_seconds(meta)
    state = built.init(*spec.init_inputs)
    if ctx.config.init_from and spec.name in ("phase1", "joint"):
        # Outside the jitted init, so that the weights are not baked into a program.
        params, batch_stats = pretrained.load_backbone(jax.device_get(state.params),
                                                       jax.device_get(state.batch_stats), ctx.config.init_from)
        state = jax.device_put(state.replace(params=params, batch_stats=batch_stats), built.state_shardings)
        ctx.reporter.info(f"{spec.name}: backbone initialised from {ctx.config.init_from}")
    return state, 0.0, {}


def restore_finished(ctx, spec: programs.PhaseSpec, source: str):
    """(model, state, seconds it trained) of `source`'s final checkpoint of `spec`'s phase
    (phase1_from, joint_from), placed as this run would place it. `source` is only read."""
    built = programs.build(ctx, spec)
    reader = checkpointing.PhaseCheckpoints(ctx.checkpoint_dir(spec.name, source), read_only=True)
    state, meta = reader.restore(reader.latest_step(), sharding.abstract(built.abstract_state, built.state_shardings))
    reader.close()
    ctx.reporter.info(f"{spec.name}: from {source} (step {int(state.step)}, not trained here)")
    ctx.trained_on[spec.name] = machine_seconds(meta)
    return built.model, state, float(meta.get("elapsed_s", 0.0))


class HostBatches:
    """One step per dispatch, the batch assembled on the host by the image table (its input
    pipeline reads ahead), this process's rows only."""

    def __init__(self, ctx, spec, built):
        self.ctx, self.spec, self.sampler = ctx, spec, built.sampler
        self.labels = ctx.train_labels[spec.rows]
        self.batch_size = built.recipe.batch_size
        self.train_step, self.batches = built.train_step, None

    def _epoch(self, epoch: int, first_step: int):
        """(positions, images) for the rest of an epoch, seeded by (seed, phase, epoch, step)."""
        ctx, rows = self.ctx, self.spec.rows
        positions = [sharding.process_slice(self.sampler.batch(epoch, s), ctx.mesh)
                     for s in range(first_step, self.sampler.steps_per_epoch)]
        images = ctx.data.train_images.batches([rows[p] for p in positions], training=True,
                                               key=(ctx.seed_of(self.spec.name), PHASE_IDS[self.spec.name], epoch),
                                               start=first_step)
        return zip(positions, images)

    def __call__(self, state, rng, step_number: int):
        """(state, metrics, steps taken) after one step."""
        epoch, step_in_epoch = divmod(step_number, self.sampler.steps_per_epoch)
        if self.batches is None or step_in_epoch == 0:
            self.batches = self._epoch(epoch, step_in_epoch)
        positions, images = next(self.batches)
        local = {"images": images, "labels": self.labels[positions]}
        if self.spec.batch_extras is not None:
            local.update(self.spec.batch_extras(self.labels[positions]))
        batch = sharding.global_batch(local, self.ctx.mesh, self.batch_size)
        state, metrics = self.train_step(state, *self.spec.extra_inputs, batch, rng)
        return state, metrics, 1


class ResidentBatches:
    """Up to steps_per_dispatch steps in one dispatch: the phase's uint8 images and labels live
    on the devices, and each step gathers its batch there."""

    def __init__(self, ctx, spec, built):
        self.ctx, self.spec, self.sampler, self.multi_step = ctx, spec, built.sampler, built.multi_step
        self.total = built.total_steps
        # Every process holds all of the phase's images (CIFAR: tens of MB), so each builds the replicated array.
        replicated = sharding.replicated(ctx.mesh)
        self.replicate = lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x))
        self.images = self.replicate(ctx.data.train_images.images[spec.rows])
        self.labels = self.replicate(ctx.train_labels[spec.rows])
        ctx.reporter.info(f"{spec.name}: {len(spec.rows)} images resident on the devices, up to "
                          f"{ctx.config.steps_per_dispatch} steps per dispatch"
                          + (" (unrolled on CPU: one compile per distinct count, and no faster than 1 step "
                             "per dispatch there)" if sharding.platform(ctx.mesh) == "cpu" else ""))

    def __call__(self, state, rng, step_number: int):
        config = self.ctx.config
        epoch, step_in_epoch = divmod(step_number, self.sampler.steps_per_epoch)
        # Up to steps_per_dispatch steps, never across an epoch end, a log line or a checkpoint.
        steps_now = min(config.steps_per_dispatch, self.sampler.steps_per_epoch - step_in_epoch,
                        self.total - step_number,
                        *(k - step_number % k for k in (config.log_every_steps, config.checkpoint_every_steps)))
        positions = np.stack([self.sampler.batch(epoch, step_in_epoch + i) for i in range(steps_now)])
        state, metrics = self.multi_step(state, *self.spec.extra_inputs, self.images, self.labels,
                                         self.replicate(positions), rng)
        return state, metrics, steps_now


class Progress:
    """Sums the step metrics between log lines; writes the line and the metrics."""

    def __init__(self, ctx, name: str, recipe, total: int, step: int):
        self.ctx, self.name, self.recipe, self.total = ctx, name, recipe, total
        self.last_time, self.last_step, self.summed = time.time(), step, None

    def add(self, metrics) -> None:
        self.summed = metrics if self.summed is None else jax.tree.map(jnp.add, self.summed, metrics)

    def log(self, epoch: int, done: int) -> None:
        count = done - self.last_step
        means = {k: float(v) / count for k, v in jax.device_get(self.summed).items()}
        check_finite(self.name, done, means)
        now = time.time()
        batch = self.recipe.batch_size
        rate = count * batch / max(now - self.last_time, 1e-9)
        self.ctx.reporter.train_line(self.name, epoch, self.recipe.epochs, done, self.total, means, rate,
                                     (self.total - done) * batch / max(rate, 1e-9))
        self.ctx.reporter.write(self.name, done, {**means, "images_per_second": rate})
        self.last_time, self.last_step, self.summed = now, done, None


def train_phase(ctx, spec: programs.PhaseSpec, evaluator, stop: StopFlag):
    """Trains one phase to its last step, resuming from its checkpoints. Returns (model, state,
    elapsed seconds over all runs of this phase)."""
    config = ctx.config
    built = programs.build(ctx, spec)
    recipe, sampler, model, total = built.recipe, built.sampler, built.model, built.total_steps
    ckpt = checkpointing.PhaseCheckpoints(ctx.checkpoint_dir(spec.name), keep=config.keep_checkpoints)
    state, elapsed_before, machines_before = restore_or_init(ctx, spec, built, ckpt)
    ctx.trained_on[spec.name] = machines_before
    if int(state.step) >= total:
        ckpt.close()
        return model, state, elapsed_before
    here = hardware.device_name()
    ctx.reporter.info(f"{spec.name}: {len(spec.rows)} training images, {spec.num_outputs} classes, "
                      f"{sampler.steps_per_epoch} steps/epoch x {recipe.epochs} epochs, "
                      f"global batch {recipe.batch_size}, lr {optim.scaled_learning_rate(recipe):g}, "
                      f"{ctx.mesh.size} devices")
    dispatch = (ResidentBatches if built.multi_step is not None else HostBatches)(ctx, spec, built)
    rng = jax.random.fold_in(ctx.rng_of(spec.name), PHASE_IDS[spec.name])
    started = time.time()
    step_number = int(state.step)
    progress = Progress(ctx, spec.name, recipe, total, step_number)

    def save(done, state, metrics):
        # Never write a checkpoint of a diverged model: the last good one stays the latest.
        # A step's loss can be finite while its update overflowed the parameters.
        check_finite(spec.name, done, {**jax.device_get(metrics), "parameters": float(_all_finite(state.params))})
        seconds = time.time() - started
        ckpt.save(done, state, ctx.meta(elapsed_s=elapsed_before + seconds,
                                        machine_s=add_seconds(machines_before, here, seconds), **spec.meta_extra))

    try:
        while step_number < total:
            epoch = step_number // sampler.steps_per_epoch
            state, metrics, steps_now = dispatch(state, rng, step_number)
            progress.add(metrics)
            step_number = done = step_number + steps_now
            logged = due(done, config.log_every_steps, total)
            if logged:
                progress.log(epoch, done)
            saved = due(done, config.checkpoint_every_steps, total)
            if saved:
                save(done, state, metrics)
            # After the step's own log line and checkpoint: a signal that came during them still
            # stops the run after this step.
            if stop.requested():
                if not logged:
                    progress.log(epoch, done)
                if not saved:
                    save(done, state, metrics)
                raise Interrupted(f"{stop.signal} received: stopped {spec.name} after step {done}/{total} "
                                  f"with a checkpoint; run the same command again to resume")
            if done % sampler.steps_per_epoch == 0 and (epoch + 1) % config.eval_every_epochs == 0 and done < total:
                monitor = ctx.monitor.name
                fractions, = evaluator.shot_fractions(model, state, ctx.monitor)
                ctx.reporter.info(f"{spec.name} epoch {epoch + 1} {monitor} (monitoring only): "
                                  + " ".join(f"{k} {100 * v:.2f}" for k, v in fractions.items()))
                ctx.reporter.write(spec.name, done, {f"{monitor}_{k}": v for k, v in fractions.items()})
    finally:
        # Let an in-flight (good) checkpoint finish even when the loop stops with an error.
        ckpt.wait()
        ckpt.close()
    seconds = time.time() - started
    ctx.trained_on[spec.name] = add_seconds(machines_before, here, seconds)
    return model, state, elapsed_before + seconds
