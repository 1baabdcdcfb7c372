"""iNaturalist 2018 with ResNet-50 (or 152) (paper Table 4).

Recipe (METHOD.md): lr 0.05 with a cosine schedule to 0, 200 epochs; SGD
momentum 0.9, weight decay 5e-4. (choice) batch 512 on 8 devices. With 8,142
classes, --config.mesh.model=N shards the classifier's class axis over N devices.
"""
from asyncjax import config_utils


def get_config(arg=None):
    arg = config_utils.parse_arg(arg, backbone="resnet50", smoke=False)
    config = config_utils.common_config()
    config.dataset = "inat2018"
    config.model.backbone = arg.backbone
    for name in ("phase1", "phase2"):
        config[name] = config_utils.phase_recipe(
            epochs=200, batch_size=512, base_lr=0.05, base_batch_size=512, schedule="cosine")
    config_utils.restart_phase2(config)   # Phase II at 0.3x phase I's lr (chosen on validation).
    if arg.smoke:
        config_utils.shrink_for_smoke(config)
    return config
