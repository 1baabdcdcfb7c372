"""Everything that refuses a run, in one place, done before anything is written.

    resolve(config)             model.head=auto -> the method's head; every choice of every phase
                                the method runs checked (a typo fails in seconds, not hours in)
    freeze(config)              the config after the data chose `auto` backbones: read-only from here
    check_phase1_from(...)      phase1_from (joint_from) names a finished phase I (joint phase) of the same settings
    check_devices(config, n)    mesh.model and every phase's global batch fit the devices
    check_workdir(config, dir)  a workdir of another configuration (its identity) is refused
    lock_workdir(dir)           one run per workdir: a second is refused, naming the first
    write_config(config, dir)   config.json on a workdir that holds nothing yet

Data problems (a missing file, a bad list line) are refused by the loaders in asyncjax/data, which
name the file; an init_from archive that does not fit, by asyncjax/pretrained.py. setup.build runs
all of them in this order, so a refused run leaves the disk as it was.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time

import ml_collections

from asyncjax import calibration, config_utils, files, methods
from asyncjax.data.sampling import STRATEGIES
from asyncjax.models import BACKBONES, HEADS
from asyncjax.models.conv import CONV_WEIGHT_GRADS

# Fields that must match to resume a workdir: a different value means other checkpoints.
IDENTITY_KEYS = ("dataset", "method", "data.imbalance", "data.max_count", "data.subsample_seed", "model.backbone",
                 "model.head", "split.num_head_classes", "memory.per_class", "seed", "phase1_from", "joint_from",
                 "mesh.model",
                 # Your own data (configs/custom.py): which kind and which TFDS dataset. Paths are not
                 # identity (a carried run reads its data from another root); the classes are, and
                 # the checkpoints' own record of them is checked (check_workdir's data_identity).
                 "data.kind", "data.name",
                 # Phase II's own choices (a phase II trained with other ones is another run).
                 "phase2_old_rows", "phase2_seed")
# What a phase I depends on: phase1_from refuses a workdir whose phase I differs in any of them.
PHASE1_KEYS = ("dataset", "data.imbalance", "data.max_count", "data.subsample_seed", "split.num_head_classes",
               "model.backbone", "model.head", "model.dtype", "model.cosine_scale_init", "seed", "init_from",
               "mesh.model")  # mesh.model: the head's padding for the model axis (its checkpoint's shape).


# Keys added since the first workdirs: what a config written before them meant.
ADDED_KEYS = {"phase2_old_rows": "train", "phase2_seed": -1, "joint_from": ""}


def get(config, dotted: str, default=""):
    """config['a']['b'] for 'a.b'; where a workdir written by an older version lacks it, its
    ADDED_KEYS value, else `default`."""
    for part in dotted.split("."):
        if part not in config:
            return ADDED_KEYS.get(dotted, default)
        config = config[part]
    return config


# ---- the configuration -------------------------------------------------------------------
def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with model.head=auto resolved, checked: every choice of every phase the
    method will run (ValueError naming the key)."""
    config = config.copy_and_resolve_references()
    config_utils.resolve_head(config)
    validate_config(config)
    return config


def freeze(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The run's config, read-only: nothing downstream of the checks may change it."""
    return ml_collections.FrozenConfigDict(config)


def validate_config(config) -> None:
    """Every choice of every phase the method will run, checked before anything is read or
    written: a typo fails in seconds, with the key named, not hours in when its phase starts."""
    def one_of(key: str, allowed) -> None:
        value = get(config, key)
        if value not in allowed:
            raise ValueError(f"{key} must be one of {tuple(allowed)}, got {value!r}")

    one_of("method", methods.METHODS)
    one_of("model.backbone", ("auto", *BACKBONES))  # auto: by the images' size, once they are loaded.
    one_of("model.head", ("auto", *HEADS))
    one_of("model.dtype", ("float32", "bfloat16"))
    one_of("model.conv_weight_grad", CONV_WEIGHT_GRADS)
    one_of("phase2_init", ("random", "imprint"))
    one_of("phase2_old_rows", ("train", "freeze"))
    one_of("calibration.kind", calibration.KINDS)
    if config.calibration.kind != "none" and config.method != "async":
        raise ValueError(f"calibration.kind={config.calibration.kind!r} corrects phase II's logits and needs "
                         f"method=async (method=logit_adjustment is the joint model's own), got {config.method!r}")
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
    for name in methods.recipes_of(config.method):
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


def check_devices(config, device_count: int) -> None:
    """mesh.model divides the devices, and the data axis divides every phase's global batch
    (each process loads whole blocks of it)."""
    model = config.mesh.model
    if model < 1 or device_count % model:
        raise ValueError(f"mesh.model={model} does not divide the {device_count} devices")
    data = device_count // model
    for name in methods.recipes_of(config.method):
        if config[name].batch_size % data:
            raise ValueError(f"{name}.batch_size={config[name].batch_size} is not divisible by the "
                             f"{data} data-parallel devices")


# ---- phase1_from / joint_from: a finished phase of another workdir -----------------------------
# The methods whose joint phase is plain cross-entropy (the same programs, given the same settings).
CROSS_ENTROPY_JOINT = ("plain", "logit_adjustment", *methods.DECOUPLED)
# key -> (the phase it takes, the methods that may take it, the methods it may come from).
FROM_KEYS = {"phase1_from": ("phase1", ("async",), ("async",)),
             "joint_from": ("joint", ("logit_adjustment", *methods.DECOUPLED), CROSS_ENTROPY_JOINT)}


def check_phase1_from(config, workdir: str) -> None:
    """Refuses a phase1_from (joint_from) workdir that is not a run whose phase I (joint phase)
    this run may take, trained with the same settings (naming the key), or this run's own workdir.
    That the phase finished is check_phase_finished's."""
    for key, (phase, takers, givers) in FROM_KEYS.items():
        source = config.get(key, "")
        if not source:
            continue
        if config.method not in takers:
            raise ValueError(f"{key} needs method in {takers}, got {config.method!r}")
        if os.path.abspath(source) == os.path.abspath(workdir):
            raise ValueError(f"{key} is this run's own workdir; give another --workdir")
        saved = saved_config(source)
        if saved is None:
            raise FileNotFoundError(f"{key}: {source} holds no config.json (not a workdir of asyncjax.main)")
        if saved.get("method") not in givers:
            raise ValueError(f"{key}: {source} is a method={saved.get('method')!r} run; its {phase} phase "
                             f"is not one this run can take (from {givers})")
        ours = json.loads(config.to_json())
        differing = [k for k in PHASE1_KEYS if get(saved, k) != get(ours, k)]  # The joint phase's recipe is phase1's.
        differing += [f"phase1.{k}" for k in sorted(ours["phase1"]) if saved["phase1"].get(k) != ours["phase1"][k]]
        if differing:
            raise ValueError(f"{key}: {source}'s {phase} phase differs from this run's in "
                             + ", ".join(f"{k} ({get(saved, k)!r} there, {get(ours, k)!r} here)" for k in differing))


def check_phase_finished(key: str, source: str, latest_step: int | None, total_steps: int) -> None:
    """phase1_from's (joint_from's) latest checkpoint of the phase it gives is that phase's last step."""
    phase = FROM_KEYS[key][0]
    if latest_step != total_steps:
        raise ValueError(f"{key}: {source} has no finished {'phase I' if phase == 'phase1' else 'joint phase'} "
                         f"(latest {phase} checkpoint: {latest_step}, of {total_steps} steps)")


# ---- the workdir: one run at a time, and its identity -----------------------------------------
class WorkdirBusy(ValueError):
    """Another live process holds the workdir's lock (bad input to the CLI: exit 2, as before); a
    queue of several workers (reproduce --skip_running) leaves that run to its holder instead."""


def lock_workdir(workdir: str):
    """An exclusive lock on workdir/run.lock for this process's lifetime: a second run on the same
    workdir (a resubmitted job, a typo in a queue) is refused, naming the holder, before it writes
    anything. The OS drops the lock when its process ends, however it ends, so a killed run leaves
    no stale lock. Returns the open lock file (closing it releases the lock), or None on a
    filesystem without locks (some FUSE mounts), where runs are not guarded."""
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, "run.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise WorkdirBusy(f"workdir {workdir} is in use by {holder}: one run per workdir (wait for it or stop "
                          "it, or give another --workdir)") from None
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


# ---- the workdir: its identity -------------------------------------------------------------
def is_finished(workdir: str | None) -> bool:
    """A workdir with results.json: the run is only reported (its phase1_from may be gone since)."""
    return workdir is not None and os.path.exists(os.path.join(workdir, "results.json"))


def holds_progress(workdir: str) -> bool:
    """A checkpoint, a memory bank or results: what a run of another configuration must not touch."""
    checkpoints = os.path.join(workdir, "checkpoints")
    saved = os.path.isdir(checkpoints) and any(
        entry.isdigit() for phase in os.listdir(checkpoints) if os.path.isdir(os.path.join(checkpoints, phase))
        for entry in os.listdir(os.path.join(checkpoints, phase)))
    return saved or any(os.path.exists(os.path.join(workdir, f)) for f in ("memory_bank.npz", "results.json"))


def saved_config(workdir: str) -> dict | None:
    """workdir's config.json (None: there is none)."""
    path = os.path.join(workdir, "config.json")
    return files.read_json(path) if os.path.exists(path) else None


def _identity_differences(config, saved: dict, keys=IDENTITY_KEYS) -> list[str]:
    """`keys` (IDENTITY_KEYS) on which the saved config differs from `config`."""
    saved = ml_collections.ConfigDict(saved)
    return [f"{k}: workdir has {get(saved, k)!r}, this run {get(config, k)!r}" for k in keys
            if get(saved, k) != get(config, k)]


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


def checkpoint_metas(workdir: str) -> list[tuple[str, int, dict]]:
    """(phase, step, meta) of each phase's latest readable checkpoint in workdir. The identity that
    a run's checkpoints carry with them: config.json can be deleted or edited by hand, the config
    stored in each checkpoint cannot without damaging it. A damaged one is passed over here
    (loop.restore_or_init sets it aside)."""
    from asyncjax import checkpointing  # Orbax: only when there are checkpoints to read.
    root = os.path.join(workdir, "checkpoints")
    found = []
    for phase in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not os.path.isdir(os.path.join(root, phase)):
            continue
        ckpt = checkpointing.PhaseCheckpoints(os.path.join(root, phase), read_only=True)
        try:
            for step in reversed(ckpt.all_steps()):
                try:
                    found.append((phase, step, ckpt.read_meta(step)))
                    break
                except Exception:  # noqa: BLE001 - any damage: the step before may be whole.
                    continue
        finally:
            ckpt.close()
    return found


def _stored_identity(config, workdir: str, data_identity: dict | None) -> dict | None:
    """Refuses checkpoints written by another configuration or on other data, whatever config.json
    says; returns the config stored in the last phase's checkpoint read (every phase of a run stores
    the same config; None: no checkpoint)."""
    stored = None
    for phase, step, meta in checkpoint_metas(workdir):
        stored = json.loads(meta["config"])
        # phase1_from is a path: a run carried to another machine may find its source elsewhere
        # (check_workdir still compares config.json's record of it).
        differing = _identity_differences(config, stored, [k for k in IDENTITY_KEYS if k not in FROM_KEYS])
        if differing:
            raise ValueError(f"workdir {workdir!r} holds {phase} checkpoints (step {step}) of a different "
                             f"configuration ({', '.join(differing)}); use another --workdir")
        for key, value in (data_identity or {}).items():
            if key in meta and meta[key] != value:
                what = {"rank_to_class": "its classes ordered by training count",
                        "class_names": "its class names"}.get(key, key)
                raise ValueError(f"workdir {workdir!r} holds {phase} checkpoints (step {step}) trained on other data "
                                 f"({what} differ from this run's data); use another --workdir")
    return stored


def check_workdir(config, workdir: str, data_identity: dict | None = None) -> tuple[str | None, bool]:
    """(note, fresh): refuses a workdir that holds checkpoints of another configuration, judged by
    config.json and by the config (and, given `data_identity`, the data's classes) stored in the
    checkpoints themselves. `fresh`: config.json is to be (re)written (write_config): nothing is
    saved there yet, or config.json went missing beside checkpoints. A workdir with a config.json
    but nothing saved (a run stopped before its first checkpoint) is taken over; the note says so.
    A resume with other settings outside the identity keys is allowed; the note names them. Reads only."""
    stored = _stored_identity(config, workdir, data_identity)
    saved = saved_config(workdir)
    if saved is None and stored is not None:
        changed = _changed_settings(config, stored)
        return (f"{workdir}/config.json was missing: the run's identity was read from its checkpoints, and "
                f"config.json is written again" + (f"; settings other than theirs: {'; '.join(changed)}"
                                                    if changed else "")), True
    differing = None if saved is None else _identity_differences(config, saved)
    progress = saved is not None and holds_progress(workdir)
    if differing and progress:
        raise ValueError(f"workdir {workdir!r} holds checkpoints of a different configuration "
                         f"({', '.join(differing)}); use another --workdir")
    if differing:
        return (f"workdir {workdir} held the configuration of a run that saved nothing ({'; '.join(differing)}): "
                "taken over by this run"), True
    changed = _changed_settings(config, saved) if progress else []
    if changed:  # Allowed (a path, a log interval), but a recipe change mid-run must be visible.
        return (f"resuming {workdir} with {len(changed)} setting(s) other than its config.json "
                f"(which keeps the first run's): {'; '.join(changed)}"), False
    return None, not progress


def write_config(config, workdir: str) -> None:
    """config.json: the run's identity, kept by every resume (check_workdir compares against it)."""
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
