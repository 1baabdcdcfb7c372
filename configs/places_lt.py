"""Places-LT (Liu et al., 2019) with an ImageNet-pretrained ResNet-152 (paper Table 1).

Recipe (METHOD.md): lr 5e-4 for the backbone and 0.05 for the classifier, 60
epochs, x0.01 at epoch 20 and again at 40 (the paper: "by 0.01"); SGD momentum 0.9, weight decay 5e-4.
(choice) batch 128 on 8 devices. Start from ImageNet weights with
--config.init_from=PATH.npz. lambda_base: the paper's Places-LT ablation's best is
sqrt(294/71) = 2.03 as lambda, i.e. lambda_base = 1 (the other configs take CIFAR-100-LT's
validation choice, 2). Phase II: 0.3x phase I's lr for backbone and classifier alike, tau 0.01.
"""
from asyncjax import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(arg, smoke=False)
    config = config_utils.common_config()
    config.dataset = "places_lt"
    config.model.backbone = "resnet152"
    for name in ("phase1", "phase2"):
        config[name] = config_utils.phase_recipe(
            epochs=60, batch_size=128, base_lr=5e-4, base_batch_size=128, schedule="step",
            decay_fractions=(1 / 3, 2 / 3), decay_factor=0.01, head_lr_multiplier=100.0)
    config_utils.restart_phase2(config)   # Phase II at 0.3x phase I's lr (chosen on validation).
    config.loss.retention_weight_base = 1.0  # The paper's Places-LT ablation (docstring).
    if arg.smoke:
        config_utils.shrink_for_smoke(config)
    return config
