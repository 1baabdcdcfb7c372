"""ImageNet-LT (Liu et al., 2019) with ResNet-50 (paper Tables 2 and 5).

Recipe (METHOD.md): SGD momentum 0.9, weight decay 5e-4, lr 0.05 with a cosine
schedule to 0. The paper gives neither batch size nor epochs: (choice) batch
256 on 8 devices (lr 0.05 at batch 256, scaled linearly) and 90 epochs, as in
Kang et al. (2020). backbone=resnet10|resnet50|resnet101|resnet152.
"""
from asyncjax import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(arg, backbone="resnet50", smoke=False)
    config = config_utils.common_config()
    config.dataset = "imagenet_lt"
    config.model.backbone = arg.backbone
    for name in ("phase1", "phase2"):
        config[name] = config_utils.phase_recipe(
            epochs=90, batch_size=256, base_lr=0.05, base_batch_size=256, schedule="cosine")
    config.eval_every_epochs = 10
    config_utils.restart_phase2(config)   # Phase II at 0.3x phase I's lr (chosen on validation).
    if arg.smoke:
        config_utils.shrink_for_smoke(config)
    return config
