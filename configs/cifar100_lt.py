"""CIFAR-100-LT with ResNet-32 (paper Table 3; METHOD.md "Recipes").

    python -m asyncjax.main --config=configs/cifar100_lt.py:imbalance=100 --workdir=DIR \
        --config.data.cifar100_dir=PATH   # official binary layout; omit to use TFDS

Arguments after the colon: imbalance=50|100|200 (1: balanced), smoke=True (a few dozen steps
per phase on ResNet-8, for CPU smoke runs and tests), method=NAME (sets config.method, and for
ldam_drw and focal LDAM-DRW's published recipe: batch 128, weight decay 2e-4; plain --config.method=ldam_drw
keeps this file's recipe and says so in the log).
Recipe: batch 64 on 1 device, lr 0.1 (scaled linearly with the global batch),
200 epochs, 5-epoch linear warm-up, x0.01 at epoch 160 and again at 180 (the paper: "by 0.01";
LDAM-DRW's code: lr x0.01 after 160, x0.0001 after 180); SGD momentum 0.9, weight decay 5e-4 on
every weight but the cosine scale sigma. Phase II uses the same recipe over X2 + M at 0.3x the lr
(0.03), with L_dis at tau 0.01 and lambda_base 2: chosen on the validation split (RESULTS.md).
"""
from asyncjax import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(arg, imbalance=100, smoke=False, method="async")
    if arg.imbalance not in (1, 50, 100, 200):  # 1: balanced CIFAR-100 (the paper's Fig. 1 b, d).
        raise ValueError(f"imbalance must be 1, 50, 100 or 200, got {arg.imbalance}")
    config = config_utils.common_config()
    config.dataset = "cifar100_lt"
    config.data.imbalance = arg.imbalance
    config.model.backbone = "resnet32"
    # Assumes 1 device; the lr follows the global batch if it changes.
    config.phase1 = config_utils.phase_recipe(
        epochs=200, batch_size=64, base_lr=0.1, base_batch_size=64, schedule="step", warmup_epochs=5,
        decay_factor=0.01)
    config.phase2 = config_utils.phase_recipe(
        epochs=200, batch_size=64, base_lr=0.1, base_batch_size=64, schedule="step", warmup_epochs=5,
        decay_factor=0.01)
    config.method = arg.method
    if arg.method in ("ldam_drw", "focal"):  # Table 3's focal row comes from LDAM-DRW's code and recipe.
        config.phase1.update(config_utils.LDAM_DRW_CIFAR)
    config_utils.restart_phase2(config)   # Phase II at 0.3x phase I's lr (chosen on validation).
    if arg.smoke:
        config.model.backbone = "resnet8"
        for phase in (config.phase1, config.phase2):
            phase.epochs = 3
            phase.warmup_epochs = 1
            phase.max_steps_per_epoch = 8
        # cRT / LWS re-train the classifier afterwards: shrunk as well (it was 1,690 steps).
        config.classifier.epochs = 2
        config.classifier.max_steps_per_epoch = 8
        config.log_every_steps = 4
        config.eval_every_epochs = 2
        config.checkpoint_every_steps = 10
    return config
