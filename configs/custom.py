"""Your own long-tailed data (README, "Your own data"; asyncjax/data/custom.py).

    configs/custom.py:kind=folder            --config.data.root=ROOT  (ROOT/train/CLASS/*.jpg, ROOT/val, ROOT/test)
    configs/custom.py:kind=lists             --config.data.root=ROOT --config.data.train_list=train.txt
                                             [--config.data.val_list=... --config.data.test_list=...
                                              --config.data.class_names=names.txt]
    configs/custom.py:kind=tfds,name=NAME,imbalance=100   (any TFDS image classification dataset)

Arguments: kind, name (kind=tfds), imbalance (kind=tfds; 1 keeps the dataset as it is), smoke.
The backbone follows the images (model.backbone=auto): ResNet-32 for small images (at most
data.small_max_side px, held in memory, CIFAR's augmentation at their own size), ResNet-50 for
larger ones (streamed, random-resized crops at data.image_size). (choice) The recipe is
CIFAR-100-LT's (SGD 0.1 at batch 64, 5 warm-up epochs, x0.01 at 80% and 90%), for 100 epochs per
phase; the phase-II choices are the same as configs/cifar100_lt.py's. Override any of it.
"""
from asyncjax import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(arg, kind="folder", name="", imbalance=1, smoke=False)
    config = config_utils.common_config()
    config.dataset = "custom"
    config.model.backbone = "auto"
    config.data.update(dict(
        kind=arg.kind,              # folder | lists | tfds
        name=arg.name,              # kind=tfds: the TFDS dataset.
        train_list="", val_list="", test_list="",  # kind=lists: `relative/path label` files (under root).
        class_names="",             # kind=lists: one class name per line, by label.
        imbalance=arg.imbalance,    # kind=tfds: IF of the long-tailed subset (1: the dataset as it is).
        max_count=0,                # kind=tfds: n_max; 0: the smallest class's size.
        # Validation carved from the training images when none is given: up to this many per
        # class (0: none, monitoring off). kind=tfds: from the images the long-tailed subset leaves out.
        val_per_class=20 if arg.kind == "tfds" else 0,
        allow_overlap=False,        # Accept the same image in two splits.
        max_image_pixels=0,         # Refuse images of more pixels (0: Pillow's 89,478,485; decompression bombs).
        small_max_side=64,          # Images at most this many px on the longer side: held in memory.
        workers=2,
    ))
    for name in ("phase1", "phase2"):
        config[name] = config_utils.phase_recipe(
            epochs=100, batch_size=64, base_lr=0.1, base_batch_size=64, schedule="step", warmup_epochs=5,
            decay_fractions=(0.8, 0.9), decay_factor=0.01)
    config_utils.restart_phase2(config)   # Phase II at 0.3x phase I's lr (chosen on validation).
    if arg.smoke:
        for name in ("phase1", "phase2"):
            config[name].update(dict(epochs=2, batch_size=16, base_batch_size=16, warmup_epochs=1,
                                     max_steps_per_epoch=3))
        config.model.backbone = "resnet8"
        config.data.image_size, config.data.resize_size = 32, 36
        config.memory.per_class = 2
        config.eval_every_epochs = 1
        config.log_every_steps = 1
    return config
