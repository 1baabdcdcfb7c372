"""Images/s of asyncjax's phase-I and phase-II train steps next to PyTorch's, side by side.

    python benchmarks/train_step.py --model=resnet32 --batch=64 --phase=1 --torch=eager

The JAX step is the package's own (asyncjax.steps, jitted with the trainer's shardings,
on-device augmentation); the PyTorch step is benchmarks/torch_reference.py with the same
model, head, loss and optimiser. Runs alternate JAX / PyTorch (A B A B ...) for --rounds
rounds of --steps steps each, after --warmup steps of each (compilation excluded), same
batch, same threads; medians are reported. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", choices=["resnet32", "resnet50"], default="resnet32")
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--phase", type=int, choices=[1, 2], default=1)
parser.add_argument("--torch", choices=["eager", "channels_last", "compile", "none"], default="eager")
parser.add_argument("--devices", type=int, default=1, help="XLA host devices to shard the batch over (CPU)")
parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
parser.add_argument("--image_size", type=int, default=0, help="default: 32 (resnet32), 224 (resnet50)")
parser.add_argument("--peak_tflops", type=float, default=0.0,
                    help="the device's peak TFLOP/s for --dtype, to report model FLOP utilisation")
parser.add_argument("--also", default="", help="comma-separated JAX variants timed in the same rounds, for "
                    "the levers table: noaug (no on-device augmentation), linear (linear head), bf16, "
                    "phase1 (with --phase=2: the phase-I step, and PyTorch's, to price phase II), "
                    "scan / unrolled (the trainer's device-resident path: --dispatch steps per call in a "
                    "lax.scan loop / unrolled), xlaconv / taps (XLA's own / the per-tap conv weight gradient)")
parser.add_argument("--dispatch", type=int, default=5, help="steps per call of the scan / unrolled variants")
parser.add_argument("--conv_weight_grad", choices=["auto", "taps", "xla"], default="auto",
                    help="the trainer's model.conv_weight_grad; --also=xlaconv / taps times the other in the same rounds")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--warmup", type=int, default=2)
args = parser.parse_args()
if args.devices > 1:  # Must be set before jax is imported.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from asyncjax import augment, config_utils, hardware, optim, programs, sharding, steps  # noqa: E402
from asyncjax.models import make_backbone, make_model  # noqa: E402
from asyncjax.models.conv import conv_for  # noqa: E402

CIFAR = args.model == "resnet32"
NUM_CLASSES, NUM_OLD = (100, 70) if CIFAR else (1000, 864)
SIZE = args.image_size or (32 if CIFAR else 224)
FLOPS = {"per_step": 0.0}
FORMS = {}  # The resolved default conv weight-gradient form.


def default_form() -> str:
    """What the trainer runs for --conv_weight_grad (auto: its timed, cached trial on this machine)."""
    if "form" not in FORMS:
        from asyncjax import speed_choice
        # The trainer's default compilation cache, beside which its verdicts are cached.
        cache = jax.config.jax_compilation_cache_dir or "~/.cache/asyncjax/xla"
        FORMS["form"] = speed_choice.resolve_conv_weight_grad(
            args.conv_weight_grad, backbone=args.model, batch_size=args.batch, image_size=SIZE, dtype=args.dtype,
            mesh=sharding.make_mesh(1), compilation_cache_dir=cache, log=lambda m: print(m, file=sys.stderr))
    return FORMS["form"]


def jax_step(variant: str = ""):
    """The trainer's step for this phase, jitted with its shardings; returns run(n) -> seconds.
    `variant` changes one thing (see --also)."""
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" or variant == "bf16" else jnp.float32
    phase = 1 if variant == "phase1" else args.phase
    conv = conv_for({"xlaconv": "xla", "taps": "taps"}.get(variant) or default_form())
    recipe = config_utils.phase_recipe(epochs=1, batch_size=args.batch, base_lr=0.1,
                                       base_batch_size=args.batch, schedule="step")
    tx, schedule = optim.make_optimizer(recipe, 1000)
    model = make_model(args.model, "linear" if variant == "linear" else "cosine", NUM_CLASSES, dtype=dtype, conv=conv)
    preprocess = augment.cifar_train if CIFAR else augment.get_preprocess("imagenet_lt")[0]
    if variant == "noaug":
        preprocess = augment.get_preprocess("cifar100_lt" if CIFAR else "imagenet_lt")[1]
    mesh = sharding.make_mesh(1)
    rng = np.random.default_rng(0)
    local = {"images": rng.integers(0, 256, (args.batch, SIZE, SIZE, 3)).astype(np.uint8),
             "labels": rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)}
    local["is_memory"] = (local["labels"] < NUM_OLD).astype(np.float32)
    with jax.set_mesh(mesh):
        init = lambda: steps.init_train_state(model, tx, jax.random.key(0), (SIZE, SIZE, 3))
        shardings = sharding.state_shardings(jax.eval_shape(init), mesh)
        state = jax.jit(init, out_shardings=shardings)()
        replicated = sharding.replicated(mesh)
        if phase == 1:
            step = steps.make_classification_step(model, tx, schedule, preprocess)
            extra, extra_shardings = (), ()
        else:
            loss_config = ml_collections.ConfigDict(dict(
                retention_temperature=1.0, retention_normalize=True, retention_reduction="mean",
                intra_margin=0.5, intra_top_k=2))
            old = jax.tree.map(lambda x: jnp.array(x, copy=True),
                               {"params": state.params["backbone"], "batch_stats": state.batch_stats["backbone"]})
            step = steps.make_phase2_step(model, make_backbone(args.model, dtype, conv), tx, schedule, preprocess,
                                          num_head=NUM_OLD, retention_weight=1.5, loss_config=loss_config)
            extra, extra_shardings = (old,), (jax.tree.map(lambda x: x.sharding, old),)
        key = jax.random.key(1)
        holder = {"state": state}
        if variant in ("scan", "unrolled"):
            return resident_runner(step, state, shardings, extra, extra_shardings, mesh, replicated, key,
                                   unroll=variant == "unrolled")
        fn = programs.jit_train_step(step, shardings, extra_shardings, mesh)  # As the trainer jits it.
        # XLA's own count of the step's floating-point operations (forward, backward, update).
        cost = fn.lower(state, *extra, sharding.global_batch(local, mesh, args.batch), key).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        # The count is of one device's program (its share of the batch): scale to the whole step.
        if not variant:
            FLOPS["per_step"] = float(cost.get("flops", 0.0)) * jax.device_count() if cost else 0.0

        def run(n):
            start = time.perf_counter()
            for _ in range(n):  # The host->device copy of each batch is part of the timed step.
                holder["state"], metrics = fn(holder["state"], *extra, sharding.global_batch(local, mesh, args.batch), key)
            jax.block_until_ready((holder["state"], metrics))
            return time.perf_counter() - start

        return run


def resident_runner(step, state, shardings, extra, extra_shardings, mesh, replicated, key, unroll):
    """The trainer's device-resident path (steps.scanned_steps): --dispatch steps per call,
    each gathering its batch from uint8 images held on the devices; run(n) takes n steps."""
    if args.steps % args.dispatch:
        sys.exit("--steps must be a multiple of --dispatch")
    rng = np.random.default_rng(1)
    pool = 8 * args.batch
    images = jax.device_put(rng.integers(0, 256, (pool, SIZE, SIZE, 3)).astype(np.uint8), replicated)
    labels = jax.device_put(rng.integers(0, NUM_CLASSES, pool).astype(np.int32), replicated)
    positions = jax.device_put(rng.integers(0, pool, (args.dispatch, args.batch)).astype(np.int32), replicated)
    extras = None if args.phase == 1 else (lambda y: {"is_memory": (y < NUM_OLD).astype(jnp.float32)})
    fn = programs.jit_scanned_steps(step, extras, shardings, extra_shardings, mesh, unroll=unroll)
    holder = {"state": state}

    def run(n):
        start = time.perf_counter()
        for _ in range(-(-n // args.dispatch)):  # The untimed warm-up rounds up to whole calls.
            holder["state"], metrics = fn(holder["state"], *extra, images, labels, positions, key)
        jax.block_until_ready((holder["state"], metrics))
        return time.perf_counter() - start

    return run


def torch_step(phase=None):
    import torch
    from benchmarks import torch_reference
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step = torch_reference.TrainStep(args.model, NUM_CLASSES, phase or args.phase, args.torch, NUM_OLD, device=device,
                                     amp=args.dtype == "bfloat16")
    images = torch.randint(0, 256, (args.batch, 3, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (args.batch,))
    is_memory = (labels < NUM_OLD).float()

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            loss = step(images, labels, is_memory)
        float(loss.detach())  # Waits for the device.
        return time.perf_counter() - start

    return run


def main():
    runners = {"jax": jax_step()}
    for variant in filter(None, args.also.split(",")):
        runners[f"jax_{variant}"] = jax_step(variant)
    if args.torch != "none":
        runners["torch"] = torch_step()
        if "phase1" in args.also.split(","):
            runners["torch_phase1"] = torch_step(phase=1)
    for run in runners.values():
        run(args.warmup)  # Compilation and allocator warm-up, not timed.
    rates = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            rates[name].append(args.steps * args.batch / run(args.steps))
    result = {"model": args.model, "batch": args.batch, "phase": args.phase, "torch_mode": args.torch,
              "conv_weight_grad": args.conv_weight_grad, "conv_weight_grad_resolved": default_form(),
              "devices": args.devices, "dtype": args.dtype, "rounds": args.rounds, "steps": args.steps,
              "image_size": SIZE, "backend": jax.default_backend(), "cpu": hardware.cpu_model(),
              "device_kind": jax.devices()[0].device_kind,
              "jax_img_s": statistics.median(rates["jax"]), "jax_all": [round(r, 1) for r in rates["jax"]],
              "jax_gflop_per_image": FLOPS["per_step"] / args.batch / 1e9}
    if args.peak_tflops:
        result["jax_mfu"] = result["jax_img_s"] * FLOPS["per_step"] / args.batch / (args.peak_tflops * 1e12)
    for name in rates:
        if name.startswith("jax_"):
            result[f"{name}_img_s"] = statistics.median(rates[name])
    if "jax_phase1" in rates:  # Phase II's step time in units of phase I's (goal: <= 1.5).
        result["jax_phase2_over_phase1_time"] = result["jax_phase1_img_s"] / result["jax_img_s"]
    if "torch_phase1" in rates:
        result["torch_phase1_img_s"] = statistics.median(rates["torch_phase1"])
        result["torch_phase2_over_phase1_time"] = result["torch_phase1_img_s"] / statistics.median(rates["torch"])
    if "torch" in rates:
        result.update(torch_img_s=statistics.median(rates["torch"]),
                      torch_all=[round(r, 1) for r in rates["torch"]],
                      ratio=statistics.median(rates["jax"]) / statistics.median(rates["torch"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
