"""Command line: python -m asyncjax.compile_check --config=configs/inat.py --topology=v5e:8x8 [--config.* overrides]

Compiles, for a TPU topology that is not here, every program that `asyncjax.main` would run
for the config, without running any: the phase-I (or joint) train step, the feature pass and
the exemplar selection of the memory bank, phase II's first state (phase I's parameters with
W_c2 appended) and its train step with the frozen phase-I backbone, cRT / LWS's classifier
re-training (its first state and step), and the evaluation step. The phases come from the
method's runner (asyncjax/methods/: plan) over a mesh of the topology's devices, as the run builds
them: the check and a pod compile the same programs.
It needs libtpu (`pip install -e ".[tpu]"`), which compiles for any TPU topology on a CPU host
(jax.experimental.topologies; MaxText's train_compile does the same).

Prints a table: per program, the compile time, XLA's per-chip argument / output / temporary /
code bytes against the chip's HBM, whether it fits, and XLA's FLOPs per chip per step with the
step time they imply at --peak_share of the chip's bf16 peak (a projection, not a measurement).
The last line is one JSON object with the same figures.

No data is read: the dataset's class counts are synthesised with the benchmark's number of
classes, head classes (C1), largest and smallest class (KNOWN_SHAPES), which is all the
programs' shapes depend on. Exit status as every command here (asyncjax.cli): 2 on bad input.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import numpy as np
from absl import flags

# The host only compiles: no TPU backend is started here (JAX_PLATFORMS), and libtpu, which
# looks for the host's own TPU when it loads, is told it has none to find (otherwise it warns).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# libtpu locks /tmp/libtpu_lockfile so that two processes never share a TPU; a check holds no
# TPU, so several may run at once (and beside a process that has loaded libtpu for the same).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")



def define_flags():
    """Defined only when run as a program (the tests import this module beside other tools)."""
    flags.DEFINE_string("config", None, "Config file, e.g. configs/inat.py or configs/cifar100_lt.py:smoke=True.")
    flags.DEFINE_string("topology", None, "TPU topology, GENERATION:SHAPE: v4:2x2x2, v5e:8x8, v5p:2x2x4, v6e:4x4, ...")
    flags.DEFINE_float("peak_share", 0.4, "Share of the chip's bf16 peak FLOP/s assumed for the projected step time.")
    flags.DEFINE_list("programs", None, "Only these programs (default: all the method runs).")


# Per chip: HBM (GiB) and dense bf16 peak (TFLOP/s), from Google Cloud's TPU pages; the
# accelerator type tells libtpu which chip this host pretends to be (it has none).
CHIPS = {
    "v4": dict(hbm_gib=32, bf16_tflops=275, accelerator="v4-8"),
    "v5e": dict(hbm_gib=16, bf16_tflops=197, accelerator="v5litepod-4"),
    "v5p": dict(hbm_gib=95, bf16_tflops=459, accelerator="v5p-8"),
    "v6e": dict(hbm_gib=32, bf16_tflops=918, accelerator="v6e-4"),
}

# (classes C, head classes C1, largest class, smallest class) of the training splits.
# ImageNet-LT and Places-LT: C1 from METHOD.md (Many + Medium); iNaturalist 2018: Many 842 +
# Medium 4,076 as the long-tailed literature reports its shot groups. CIFAR-100-LT is computed.
KNOWN_SHAPES = {
    "imagenet_lt": (1000, 864, 1280, 5),
    "places_lt": (365, 294, 4980, 5),
    "inat2018": (8142, 4918, 1000, 2),
}

GIB = 1 << 30


def synthetic_counts(num_classes: int, num_head: int, largest: int, smallest: int) -> np.ndarray:
    """Images per class, descending: geometric from `largest` to 20 over the head classes and
    from 19 to `smallest` over the tail, so that the default split (n_j >= 20) gives C1."""
    head = np.geomspace(largest, 20, num_head)
    tail = np.geomspace(19, smallest, num_classes - num_head) if num_classes > num_head else np.zeros(0)
    return np.round(np.concatenate([head, tail])).astype(np.int64)


def shape_only_data(config):
    """A LongTailData with the dataset's labels (class counts) and image shape and no images."""
    from asyncjax.data import cifar, longtail
    from asyncjax.data.longtail import LongTailData
    from asyncjax.data.pipeline import InMemoryImages
    if config.dataset == "cifar100_lt":
        counts = longtail.lt_counts(cifar.NUM_CLASSES, config.data.max_count, config.data.imbalance)
        size = 32
    elif config.dataset in KNOWN_SHAPES:
        counts = synthetic_counts(*KNOWN_SHAPES[config.dataset])
        size = config.data.image_size
    else:
        raise ValueError(f"compile_check knows the shapes of {['cifar100_lt', *KNOWN_SHAPES]}, "
                         f"not {config.dataset!r}")

    class Shapes:  # The 224-px benchmarks stream their images: only the shape is needed.
        image_shape = (size, size, 3)
    # CIFAR's images live in memory in training (and may take the device-resident path).
    table = lambda: InMemoryImages(np.zeros((1, size, size, 3), np.uint8)) if config.dataset == "cifar100_lt" else Shapes()
    images = table()
    labels = np.repeat(np.arange(len(counts)), counts)
    # A validation split where the dataset has one (CIFAR-100-LT's carved one, ImageNet-LT's and
    # Places-LT's lists): the programs that choose on it (calibration) are compiled too.
    has_val = config.data.get("val_per_class", 0) > 0 if config.dataset == "cifar100_lt" else config.dataset != "inat2018"
    return LongTailData(images, labels, images, np.arange(len(counts)), len(counts),
                        note="class counts synthesised by asyncjax.compile_check",
                        val_images=table() if has_val else None, val_labels=np.arange(len(counts)) if has_val else None)


def topology_devices(name: str):
    generation = name.split(":")[0]
    if ":" not in name or generation not in CHIPS:
        raise ValueError(f"--topology must be GENERATION:SHAPE with GENERATION one of {list(CHIPS)}, got {name!r}")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", CHIPS[generation]["accelerator"])
    from jax.experimental import topologies
    try:
        return generation, topologies.get_topology_desc(platform="tpu", topology_name=name).devices
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"cannot describe TPU topology {name!r}: {str(e).splitlines()[0]} "
                         "(a shape this generation has? libtpu installed: pip install -e \".[tpu]\"?)") from e


def head_bytes_per_chip(state_shardings, abstract_state) -> int:
    """Bytes of the classifier's parameters and optimiser moments that each chip holds."""
    import jax
    total = 0
    for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(abstract_state),
                               jax.tree_util.tree_leaves(state_shardings)):
        names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
        if "head" in names and leaf.shape:
            total += int(np.prod(s.shard_shape(leaf.shape))) * leaf.dtype.itemsize
    return total


def build_programs(config, devices, wanted=None):
    """{name: (jitted function, abstract arguments, static keyword arguments)} of the programs
    asyncjax.main would run for `config` on `devices`, and facts for the report. The phases come
    from the method's runner (methods/: plan), as the run and the dry run build them."""
    import jax
    import jax.numpy as jnp

    from asyncjax import evaluate, memory, setup, sharding, train
    from asyncjax.methods import joint
    config = config.copy_and_resolve_references()
    config.phase1_from = ""  # Phase I is compiled here, never read from a workdir.
    ctx = setup.build(config, None, dry_run=True, data=shape_only_data(config), devices=devices)
    mesh, split, image = ctx.mesh, ctx.split, ctx.data.image_shape
    batch_sh, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=replicated)

    def train_batch(size, extra=()):
        batch = {"images": jax.ShapeDtypeStruct((size, *image), jnp.uint8, sharding=batch_sh),
                 "labels": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=batch_sh)}
        batch.update({k: jax.ShapeDtypeStruct((size,), jnp.float32, sharding=batch_sh) for k in extra})
        return batch

    def variables_of(built):
        state = sharding.abstract(built.abstract_state, built.state_shardings)
        return {"params": state.params, "batch_stats": state.batch_stats}

    def inference(built, rows):
        variables = variables_of(built)
        fn = evaluate.jit_predict(built.model, ctx.eval_preprocess, joint.logit_offset(ctx),
                                  jax.tree.map(lambda x: x.sharding, variables), mesh)
        size = evaluate.eval_batch(rows, mesh)
        return fn, (variables, jax.ShapeDtypeStruct((size, *image), jnp.uint8, sharding=batch_sh)), {}

    out, facts = {}, {"mesh": dict(mesh.shape), "hosts": sharding.process_count(mesh),
                      "num_classes": split.num_classes, "num_head": split.num_head,
                      "conv_weight_grad": ctx.conv_weight_grad, "head_state_bytes_per_chip": {}}
    planned = train.runner_of(config.method).plan(ctx)
    for index, (spec, built) in enumerate(planned):
        facts["head_state_bytes_per_chip"][spec.name] = head_bytes_per_chip(built.state_shardings,
                                                                             built.abstract_state)
        if index > 0:  # Made from the previous phase's state (phase II, the classifier): its own program.
            out[f"{spec.name}_init"] = (built.init, spec.init_inputs, {})
        state = sharding.abstract(built.abstract_state, built.state_shardings)
        extras = tuple(spec.batch_extras(np.zeros(1, np.int32))) if spec.batch_extras else ()
        out[f"{spec.name}_step"] = (built.train_step, (state, *spec.extra_inputs,
                                                       train_batch(built.recipe.batch_size, extras), rng), {})
        if built.multi_step is not None:
            facts["note"] = "steps_per_dispatch > 1: the device-resident scan is not compiled here"
        if spec.name == "phase1":  # The memory bank: phase I's features of X1, then the selection.
            out["feature_pass"] = inference(built, len(spec.rows))
            # The exemplar selection's first (largest) chunk, on one chip, as build_memory_bank runs it.
            feature_dim = jax.eval_shape(lambda v, x: built.model.apply(v, x, train=False), variables_of(built),
                                         jax.ShapeDtypeStruct((1, *image), jnp.float32))["features"].shape[-1]
            chunk, length, group = memory.chunk_shape(int(ctx.counts.max()), split.num_head, feature_dim,
                                                      config.memory.max_chunk_bytes)
            one_chip = jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
            out["exemplar_selection"] = (memory.select_chunk, (
                jax.ShapeDtypeStruct((chunk, length, feature_dim), jnp.float32, sharding=one_chip),
                jax.ShapeDtypeStruct((chunk, length), jnp.bool_, sharding=one_chip)),
                {"num": config.memory.per_class, "group": group})
    out["evaluation"] = inference(planned[-1][1], evaluate.EVAL_BATCH)  # The test split holds more rows.
    if ctx.val is not None and (config.method == "async" or (config.method == "logit_adjustment"
                                                              and config.loss.logit_adjustment_grid)):
        # The validation logits that async's calibration and logit adjustment's tau are chosen on.
        variables = variables_of(planned[-1][1])
        size = evaluate.eval_batch(evaluate.EVAL_BATCH, mesh)
        out["validation_logits"] = (
            evaluate.jit_logits(planned[-1][1].model, ctx.eval_preprocess, jax.tree.map(lambda x: x.sharding, variables),
                                mesh), (variables, jax.ShapeDtypeStruct((size, *image), jnp.uint8, sharding=batch_sh)), {})
    if wanted:
        unknown = [w for w in wanted if w not in out]
        if unknown:
            raise ValueError(f"--programs: unknown {unknown}; this method runs {list(out)}")
        out = {k: v for k, v in out.items() if k in wanted}
    return ctx, out, facts


def compile_one(fn, args, static, mesh):
    """XLA's figures of one program, compiled (not run) for the shardings of `args`, under
    `mesh` (None: a single-chip program, such as the exemplar selection)."""
    import jax
    started = time.perf_counter()
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        compiled = fn.trace(*args, **static).lower().compile()
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    figures = {"compile_s": round(seconds, 1),
               "argument_bytes": int(memory.argument_size_in_bytes),
               "output_bytes": int(memory.output_size_in_bytes),
               "alias_bytes": int(memory.alias_size_in_bytes),
               "temp_bytes": int(memory.temp_size_in_bytes),
               "code_bytes": int(memory.generated_code_size_in_bytes),
               "flops_per_chip": float(cost.get("flops", 0.0))}
    # Donated state is written in place: its output shares the argument's buffers.
    figures["peak_bytes"] = (figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
                             + figures["temp_bytes"] + figures["code_bytes"])
    return figures


def check(config, topology: str, peak_share: float = 0.4, wanted=None, log=print) -> dict:
    """Compiles every program for `topology`; returns the report (the JSON line's object)."""
    import jax

    from asyncjax import hardware
    if not 0 < peak_share <= 1:
        raise ValueError(f"--peak_share must be in (0, 1], got {peak_share}")
    generation, devices = topology_devices(topology)
    chip = CHIPS[generation]  # The trainer refuses a mesh.model or a batch the topology does not divide.
    ctx, programs, facts = build_programs(config, devices, wanted)
    log(f"{topology}: {len(devices)} chips on {facts['hosts']} host(s), mesh {facts['mesh']}, "
        f"{config.dataset} {config.model.backbone} {config.model.dtype}, {facts['num_classes']} classes "
        f"({facts['num_head']} head); compiling on {hardware.cpu_model()}")
    report = {"topology": topology, "chips": len(devices), "hosts": facts["hosts"], "chip": generation,
              "hbm_bytes": chip["hbm_gib"] * GIB, "peak_bf16_flops": chip["bf16_tflops"] * 1e12,
              "peak_share": peak_share, "dataset": config.dataset, "method": config.method,
              "backbone": config.model.backbone, "dtype": config.model.dtype, "mesh": facts["mesh"],
              "num_classes": facts["num_classes"], "num_head": facts["num_head"],
              "conv_weight_grad": facts["conv_weight_grad"],
              "head_state_bytes_per_chip": facts["head_state_bytes_per_chip"],
              "host_cpu": hardware.cpu_model(), "programs": {},
              # JAX_OPTIMIZATION_LEVEL (UNKNOWN: XLA's default, what a run gets); a lower level
              # compiles several times faster but its memory figures are not a run's.
              "optimization_level": str(jax.config.jax_optimization_level)}
    if "note" in facts:
        report["note"] = facts["note"]
    for name, (fn, args, static) in programs.items():
        log(f"compiling {name} ...")
        figures = compile_one(fn, args, static, None if name == "exemplar_selection" else ctx.mesh)
        figures["fits"] = figures["peak_bytes"] <= report["hbm_bytes"]
        figures["projected_step_s"] = figures["flops_per_chip"] / (peak_share * report["peak_bf16_flops"])
        batch = args[-2]["images"].shape[0] if name.endswith("_step") else None  # Inits and passes: none.
        if batch:
            figures["global_batch"] = batch
            figures["projected_images_per_s"] = batch / max(figures["projected_step_s"], 1e-12)
        report["programs"][name] = figures
    report["fits"] = all(p["fits"] for p in report["programs"].values())
    return report


def table(report: dict) -> str:
    """The report as a Markdown table; bytes and FLOPs are per chip, MiB = 2^20 bytes."""
    mib = lambda b: f"{b / (1 << 20):,.1f}"
    lines = [f"| program | compile s | arguments MiB | outputs MiB | temporaries MiB | code MiB | "
             f"peak MiB (HBM {report['hbm_bytes'] // GIB} GiB) | fits | GFLOP per chip | "
             f"ms at {report['peak_share']:.0%} of peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in report["programs"].items():
        lines.append(f"| {name} | {p['compile_s']:.1f} | {mib(p['argument_bytes'])} | {mib(p['output_bytes'])} | "
                     f"{mib(p['temp_bytes'])} | {mib(p['code_bytes'])} | {mib(p['peak_bytes'])} | "
                     f"{'yes' if p['fits'] else 'NO'} | {p['flops_per_chip'] / 1e9:,.1f} | "
                     f"{1e3 * p['projected_step_s']:,.2f} |")
    heads = ", ".join(f"{k} {v / (1 << 20):,.1f} MiB" for k, v in report["head_state_bytes_per_chip"].items())
    lines.append(f"\nClassifier parameters and optimiser moments per chip: {heads} (mesh.model = "
                 f"{report['mesh']['model']}).")
    if report.get("optimization_level", "UNKNOWN") != "UNKNOWN":
        lines.append(f"Compiled at JAX_OPTIMIZATION_LEVEL={report['optimization_level']}: FLOPs as a run's, memory "
                     "figures not (unset it for those).")
    return "\n".join(lines)


def main(argv, config_overrides=()):
    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.topology:
        raise app.UsageError("--topology is required, e.g. --topology=v5e:8x8")
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from asyncjax import config_utils
    if not FLAGS.config:
        raise app.UsageError("--config=FILE is required, e.g. --config=configs/inat.py")
    config = config_utils.load_config_file(FLAGS.config)
    config_utils.apply_overrides(config, list(config_overrides))
    report = check(config, FLAGS.topology, FLAGS.peak_share, FLAGS.programs)
    print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    from asyncjax import cli
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    arguments = cli.join_spaced_flags(sys.argv, ("config", "topology"))
    define_flags()
    cli.run(lambda argv: main(argv, overrides), __doc__,
            argv=[a for a in arguments if not a.startswith("--config.")])
