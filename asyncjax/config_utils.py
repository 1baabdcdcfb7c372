"""Helpers for the Python config files in configs/ (big_vision style).

`get_config(arg)` receives the text after the colon of
`--config=configs/cifar100_lt.py:imbalance=100,smoke=True`; `parse_arg` turns it
into typed values, taking each key's type from its default and rejecting
unknown keys with the list of valid ones.
"""
from __future__ import annotations

import ast
import importlib.util

import ml_collections


def _convert(key: str, text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config argument {key}={text!r}: expected a boolean (True/False)")
    try:
        return type(default)(text)
    except ValueError as e:
        raise ValueError(f"config argument {key}={text!r}: expected {type(default).__name__}") from e


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses 'key=value,key2=value2' against `defaults` (which also fix the types)."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid ones: {sorted(defaults)}")
        values[key] = _convert(key, text.strip(), defaults[key]) if sep else True
    return ml_collections.ConfigDict(values)


def phase_recipe(*, epochs: int, batch_size: int, base_lr: float, base_batch_size: int,
                 schedule: str, **extra) -> ml_collections.ConfigDict:
    """One training phase: the optimiser recipe of METHOD.md's "Recipes" table.

    The learning rate scales linearly with the global batch (lr = base_lr * batch /
    base_batch_size); both numbers stay in the config so the rule is visible.
    """
    recipe = ml_collections.ConfigDict(dict(
        epochs=epochs,
        batch_size=batch_size,          # Global batch, across all devices and hosts.
        base_lr=base_lr,                # At base_batch_size.
        base_batch_size=base_batch_size,
        schedule=schedule,              # "step" or "cosine".
        warmup_epochs=0,
        decay_fractions=(0.8, 0.9),     # "step": at 80% and 90% of the epochs (160, 180 of 200).
        decay_factor=0.1,               # x this at each step (CIFAR-100-LT, Places-LT: 0.01, the paper's).
        head_lr_multiplier=1.0,         # Classifier lr / scaled lr (Places-LT: 0.05 / 5e-4).
        backbone_lr_multiplier=1.0,     # Backbone lr / scaled lr (phase II: a smaller one keeps W_r).
        batch_norm="update",            # Phase II: "update" the running statistics on X2 + M, or
                                        # "freeze": BatchNorm in inference mode with phase I's.
        momentum=0.9,
        weight_decay=5e-4,
        sampler="instance",             # instance | class_balanced | sqrt | progressive.
        max_steps_per_epoch=0,          # 0: whole epochs; > 0 caps them (smoke runs).
    ))
    recipe.update(extra)
    return recipe


# Phase II restarts at this share of phase I's learning rate, and L_dis's tau and lambda_base (in
# common_config): chosen on CIFAR-100-LT's validation split (README "Choosing settings", RESULTS.md).
PHASE2_LR_SHARE = 0.3


def restart_phase2(config: ml_collections.ConfigDict) -> None:
    """Phase II's recipe is phase I's with its learning rate times PHASE2_LR_SHARE (the chosen rule;
    a smaller phase-II step keeps what phase I learned about the head)."""
    config.phase2.base_lr = float(f"{config.phase1.base_lr * PHASE2_LR_SHARE:.6g}")


def shrink_for_smoke(config: ml_collections.ConfigDict, backbone: str = "resnet10") -> None:
    """The `smoke=True` variant of a 224-px config: a small backbone and a few steps per phase."""
    config.model.backbone = backbone
    for name in ("phase1", "phase2", "classifier"):
        config[name].update(dict(epochs=2, batch_size=8, max_steps_per_epoch=4))
    config.log_every_steps = 2
    config.eval_every_epochs = 1
    config.data.workers = 0             # Decode in-process: no worker start-up for a few batches.


def common_config() -> ml_collections.ConfigDict:
    """Keys shared by every dataset config; each file fills in its recipe."""
    config = ml_collections.ConfigDict()
    config.dataset = ""
    config.method = "async"             # "async" (dual-phase), or a joint baseline: "plain",
                                        # "ldam_drw", "focal", "balanced_softmax", "logit_adjustment",
                                        # or a decoupling baseline: "crt", "lws", "tau_norm", "ncm"
                                        # (asyncjax/methods/ lists each one's phases).
    config.seed = 0
    config.init_from = ""               # Backbone weights (.npz, export format; asyncjax.convert).

    config.data = ml_collections.ConfigDict(dict(
        cifar100_dir=ml_collections.config_dict.placeholder(str),
        tfds_data_dir=ml_collections.config_dict.placeholder(str),
        # 224-px benchmarks (ImageNet-LT, Places-LT, iNaturalist 2018); see README "Datasets".
        source="tfds",                  # "tfds" (prepared TFDS dataset) or "list" (split lists over a folder).
        list_dir="",                    # source=list: folder of the split lists (e.g. ImageNet_LT_train.txt).
        root="",                        # source=list: folder the lists' image paths are relative to.
        check_files=True,               # source=list: check that every listed image exists, up front.
        allow_outside_root=False,       # Split lists: accept paths outside data.root (absolute, or '..').
        workers=8,                      # grain worker processes that read, decode and crop (0: in-process).
        image_size=224,                 # Training crop and evaluation centre crop.
        resize_size=256,                # Evaluation: shorter side resized to this before the centre crop.
        imbalance=100,                  # IF = n_max / n_min.
        max_count=500,                  # n_max: images of the largest class (CIFAR-100: 500).
        subsample_seed=0,               # (choice) seed of the per-class subsampling.
        # CIFAR-100-LT validation split (METHOD.md): up to this many per class from the training
        # images the long-tailed subset leaves out (0: none; monitoring then reads the test split).
        val_per_class=20,
    ))
    config.model = ml_collections.ConfigDict(dict(
        backbone="resnet32",
        head="auto",                    # "cosine" | "linear" | "auto": the head the method's own
                                        # paper uses (HEAD_BY_METHOD; async needs cosine for L_intra).
        cosine_scale_init=16.0,         # (choice) sigma's initial value.
        dtype="float32",                # "bfloat16": bf16 compute, f32 params and optimiser state.
        # Convolution weight gradients: "taps" (per-tap matrix products, models/conv.py), "xla"
        # (XLA's own), "auto" (on CPU the faster of the two in a timed trial on this machine,
        # cached per CPU model: speed_choice.py; XLA's own on GPU/TPU). Same gradient.
        conv_weight_grad="auto",
    ))
    config.split = ml_collections.ConfigDict(dict(
        num_head_classes=0,             # C1; 0: classes with >= 20 images (Many + Medium).
    ))
    config.memory = ml_collections.ConfigDict(dict(
        per_class=10,                   # K (choice; paper's ablation 2..18).
        max_chunk_bytes=256 << 20,      # Bound on the padded feature block per chunk.
    ))
    config.loss = ml_collections.ConfigDict(dict(
        retention_weight_base=2.0,      # lambda_base; lambda = lambda_base * sqrt(C1 / C2) (chosen on validation).
        retention_temperature=0.01,     # tau (choice, chosen on validation: a_ji picks z_i's nearest new node).
        retention_normalize=True,       # (choice) L2-normalise features before the distance.
        retention_reduction="mean",     # (choice) "mean" over nodes, or "sum" (paper).
        intra_margin=0.5,               # m (choice; LUCIR).
        intra_top_k=2,                  # K_m (choice; LUCIR).
        # Baselines (method=ldam_drw | focal | balanced_softmax | logit_adjustment).
        ldam_max_margin=0.5,            # LDAM's largest margin (Cao et al., 2019).
        ldam_scale=30.0,                # LDAM's fixed logit scale s on cosine scores.
        drw_beta=0.9999,                # Effective-number beta of deferred re-weighting.
        drw_start_fraction=0.8,         # Re-weighting from 80% of the epochs (160 of 200).
        focal_gamma=1.0,                # Focal loss's gamma (LDAM-DRW's code, source of Table 3's focal row).
        logit_adjustment_tau=1.0,       # Post-hoc logit adjustment tau (Menon et al., 2021),
        logit_adjustment_grid=(),       # or, when this is not empty, chosen on the validation split from it.
    ))
    config.phase2_init = "random"       # (choice) W_c2 rows: "random" or "imprint".
    # Phase II remedies for the head's loss (RESULTS.md "Phase II that keeps the head"); the
    # defaults are the paper's method.
    config.phase2_old_rows = "train"    # "train", or "freeze": W_c1 (phase I's classifier rows) fixed in phase II.
    config.phase2_seed = -1             # Phase II's randomness (W_c2's init, batch order, augmentation):
                                        # -1 follows `seed`; >= 0 varies phase II alone, so that several
                                        # phase-II seeds share one phase1_from.
    # A post-hoc offset on the final model's logits, its value chosen on the validation split
    # (asyncjax/calibration.py): "none", "tail_bias" (b on the tail rows) or "logit_adjustment"
    # (-tau log prior). grid: the values tried (empty: calibration.GRIDS). Every run with a
    # validation split also records what each kind would give there (results.json "calibration").
    config.calibration = ml_collections.ConfigDict(dict(kind="none", grid=()))
    # False: validation figures only (studies choosing settings); the test split is not loaded and
    # results.json holds no test figure. Needs a validation split.
    config.read_test = True
    # Phase II from the finished phase I of another workdir (async): its final phase-I checkpoint,
    # and its memory bank when K is the same. That workdir is only read. Phase-II studies train
    # phase I once and each variant from it.
    config.phase1_from = ""
    # The decoupling family and logit_adjustment from the finished joint phase of another workdir
    # (a cross-entropy run with the same settings: plain with the linear head, or one of them):
    # several methods on one joint model, trained once (reproduce's comparison). Only read.
    config.joint_from = ""
    # Decoupling baselines (method=crt | tau_norm | ncm; Kang et al., 2020) after the joint phase.
    config.decoupling = ml_collections.ConfigDict(dict(
        tau=1.0,                        # tau-norm's exponent,
        tau_grid=(),                    # or, when this is not empty, chosen on the validation split from it.
        ncm_metric="cosine",            # NCM's similarity: "cosine" or "euclidean".
    ))
    # cRT's classifier re-training: Kang et al.'s 10 epochs, lr 0.2 at batch 512, cosine,
    # class-balanced sampling (scaled linearly to the batch used here).
    config.classifier = phase_recipe(epochs=10, batch_size=64, base_lr=0.2, base_batch_size=512,
                                     schedule="cosine", sampler="class_balanced")
    config.mesh = ml_collections.ConfigDict(dict(
        model=1,                        # Devices on the `model` axis (shards the classifier's classes).
    ))
    config.diagnostics = ml_collections.ConfigDict(dict(
        # method=plain only: log s(grad1, grad), s(grad2, grad) and the norms of the head-class
        # ('grad1'), tail-class ('grad2') and overall gradients (paper Fig. 1); one extra
        # backward pass per step. For balanced CIFAR-100 (imbalance=1) set split.num_head_classes.
        gradient_distortion=False,
    ))
    # In-memory datasets (CIFAR): > 1 keeps the uint8 images on the devices and runs up to this
    # many steps per dispatch in one lax.scan (a GPU then never waits on Python between steps).
    # For accelerators: on CPU the scan is unrolled (XLA:CPU runs convolutions in loops ~20x
    # slower, jax#12868), which compiles once per distinct count and gains nothing there.
    config.steps_per_dispatch = 1
    # JAX's persistent compilation cache: a resumed run (after preemption) and the seeds of a
    # reproduce row load their train steps instead of compiling them again. "" turns it off;
    # JAX_COMPILATION_CACHE_DIR in the environment takes precedence.
    config.compilation_cache_dir = "~/.cache/asyncjax/xla"
    config.log_every_steps = 50
    config.eval_every_epochs = 10       # Monitoring only; the reported model is the final one.
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 2
    return config


# The classifier each method's own paper trains (METHOD.md "Recipes"), for model.head="auto":
# the paper's method and its plain variant use the cosine head (L_intra needs cosine scores),
# LDAM its normalised (cosine) classifier; the others a linear one.
HEAD_BY_METHOD = {"async": "cosine", "plain": "cosine", "ldam_drw": "cosine", "focal": "linear", "balanced_softmax": "linear",
                  "logit_adjustment": "linear", "crt": "linear", "lws": "linear", "tau_norm": "linear",
                  "ncm": "linear"}


def resolve_head(config: ml_collections.ConfigDict) -> None:
    """model.head="auto" -> the head of HEAD_BY_METHOD (in place; an explicit head is kept)."""
    if config.model.head == "auto":
        config.model.head = HEAD_BY_METHOD.get(config.method, "cosine")


# LDAM-DRW's own published recipe on CIFAR (Cao et al., 2019, their code): batch 128, lr 0.1 at
# batch 128, weight decay 2e-4, the same warm-up and x0.01 / x0.0001 steps at 160 / 180.
LDAM_DRW_CIFAR = dict(batch_size=128, base_batch_size=128, base_lr=0.1, weight_decay=2e-4)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Applies `--config.a.b=value` strings in place, typed by the existing field;
    unknown keys are refused with the valid ones (as `python -m asyncjax.main` does)."""
    for item in overrides:
        dotted, sep, text = item[len("--config."):].partition("=")
        parts = dotted.split(".")
        node = config
        for i, part in enumerate(parts):
            if not hasattr(node, "keys") or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                valid = sorted(node.keys()) if hasattr(node, "keys") else []
                raise ValueError(f"unknown config key {dotted!r}; valid keys at {where}: {valid}")
            if i < len(parts) - 1:
                node = node[part]
        key = parts[-1]
        kind = node.get_type(key)
        if not sep:
            raise ValueError(f"--config.{dotted} needs a value (--config.{dotted}=VALUE)")
        if kind is bool:
            value = _convert(dotted, text, False)
        elif kind in (tuple, list):
            try:
                value = kind(ast.literal_eval(text))
            except (ValueError, SyntaxError, TypeError) as e:
                raise ValueError(f"--config.{dotted}={text!r}: expected a {kind.__name__} such as (0.8, 0.9)") from e
        else:
            try:
                value = kind(text)
            except ValueError as e:
                raise ValueError(f"--config.{dotted}={text!r}: expected {kind.__name__}") from e
        node[key] = value


def load_config_file(spec: str):
    """`path.py[:arg]` -> the ConfigDict that path's get_config(arg) returns."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("asyncjax_config", path)
    if module_spec is None:
        raise FileNotFoundError(f"config file {path!r} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
