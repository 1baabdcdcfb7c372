"""Which phases each method trains: the one place that says it (train, the dry run,
compile_check, the checks and export read it here).

    async                  phase1 -> memory bank -> phase2           methods/dual_phase.py
    plain, ldam_drw,       joint                                     methods/joint.py
    focal,
    balanced_softmax,
    logit_adjustment
    tau_norm, ncm          joint -> the classifier adjusted (no training)
    crt, lws               joint -> classifier (re-trained on the frozen backbone)

A phase's name is its checkpoints' folder (checkpoints/<name>/) and seeds its batch order and
randomness (PHASE_IDS); RECIPE_OF says which recipe of the config it trains with. Each runner
module has run(ctx, evaluator, stop) -> results and plan(ctx) -> the phases' specs and programs,
built without running (the dry run times them, compile_check compiles them).
"""
from __future__ import annotations

DECOUPLED = ("crt", "lws", "tau_norm", "ncm")   # Kang et al. (2020), after a joint cross-entropy phase.
METHODS = ("async", "plain", "ldam_drw", "focal", "balanced_softmax", "logit_adjustment", *DECOUPLED)

PHASE_IDS = {"phase1": 1, "phase2": 2, "joint": 3, "classifier": 4}
# The joint phase of plain and the baselines takes phase I's recipe (the same epochs, lr and
# schedule over all classes); cRT / LWS re-train with the `classifier` recipe.
RECIPE_OF = {"phase1": "phase1", "phase2": "phase2", "joint": "phase1", "classifier": "classifier"}
# Export's default: the most final phase that has a checkpoint.
FINAL_FIRST = ("phase2", "classifier", "joint", "phase1")


def phases_of(method: str) -> tuple[str, ...]:
    """The phases `method` trains, in order (checkpoint folder names)."""
    if method == "async":
        return ("phase1", "phase2")
    return ("joint", "classifier") if method in ("crt", "lws") else ("joint",)


def recipes_of(method: str) -> tuple[str, ...]:
    """The config's recipes (keys) that `method` trains with, in order."""
    return tuple(RECIPE_OF[phase] for phase in phases_of(method))
