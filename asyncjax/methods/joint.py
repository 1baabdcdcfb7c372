"""One joint phase over all C classes (plain and the baselines), then, for the decoupling
baselines (Kang et al., 2020), the classifier re-trained or adjusted on the frozen joint model.

    plain              cross-entropy (the paper's "Ours (plain)": the same backbone, head, recipe)
    ldam_drw           LDAM loss, deferred re-weighting from drw_start_fraction of the epochs
    balanced_softmax   cross-entropy of logits + log n_j
    logit_adjustment   cross-entropy; argmax of logits - tau log pi_j at prediction (logit_offset)
    crt                a fresh classifier, class-balanced sampling, backbone frozen
    lws                learnable per-class logit scales on the joint classifier
    tau_norm           w_j / ||w_j||^tau, no bias
    ncm                nearest class mean of the training features
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from asyncjax import baselines, calibration, evaluate, loop, programs, sharding, steps
from asyncjax.methods import DECOUPLED


# ---- the joint phase ---------------------------------------------------------------------
def joint_loss(ctx, steps_per_epoch: int):
    """The joint phase's loss(out, labels, step) for each method."""
    loss_config, counts, method = ctx.config.loss, ctx.counts, ctx.config.method
    if method == "ldam_drw":
        margins = baselines.ldam_margins(counts, loss_config.ldam_max_margin)
        weights = baselines.drw_class_weights(counts, loss_config.drw_beta)
        start = int(round(loss_config.drw_start_fraction * ctx.config.phase1.epochs)) * steps_per_epoch

        def ldam_drw(out, labels, step):
            class_weights = jnp.where(step >= start, weights, jnp.ones_like(weights))
            return baselines.ldam_loss(out["cosine"], labels, margins, scale=loss_config.ldam_scale,
                                       class_weights=class_weights)
        return ldam_drw
    if method == "focal":
        return lambda out, labels, step: baselines.focal_loss(out["logits"], labels, gamma=loss_config.focal_gamma)
    if method == "balanced_softmax":
        return lambda out, labels, step: baselines.logit_adjusted_loss(out["logits"], labels, counts)
    return steps.default_loss  # plain, logit_adjustment (adjusted only at prediction) and the decoupled.


def joint_spec(ctx) -> programs.PhaseSpec:
    rows = ctx.all_rows
    steps_per_epoch = ctx.sampler("joint", rows).steps_per_epoch
    # Fig. 1's gradient distortion: grad1 over the head classes' rows (< C1), grad2 the tail's.
    distortion = ctx.split.num_head if ctx.config.diagnostics.gradient_distortion else None
    return programs.PhaseSpec(
        name="joint", num_outputs=ctx.split.num_classes, rows=rows,
        init=ctx.random_state,
        make_step=lambda model, tx, schedule: steps.make_classification_step(
            model, tx, schedule, ctx.train_preprocess, joint_loss(ctx, steps_per_epoch), distortion))


def logit_offset(ctx, tau: float | None = None) -> np.ndarray | None:
    """logit_adjustment's -tau log(pi_j) over the long-tailed training prior, added before the argmax
    (tau: the config's unless given)."""
    if ctx.config.method != "logit_adjustment":
        return None
    tau = ctx.config.loss.logit_adjustment_tau if tau is None else tau
    return calibration.offset("logit_adjustment", tau, ctx.counts, ctx.split.num_head)


def chosen_tau(ctx, evaluator, model, state) -> tuple[float, dict | None]:
    """(tau, its choice) of tau_norm and logit_adjustment: the config's tau, or, where the config
    gives a grid, the grid value of the best overall accuracy on the validation split."""
    config, val = ctx.config, ctx.val
    if config.method == "logit_adjustment" and config.loss.logit_adjustment_grid:
        logits = evaluator.logits(model, state, val.images)
        choice = calibration.choose(logits, val.labels, "logit_adjustment", config.loss.logit_adjustment_grid,
                                    ctx.counts, ctx.split.num_head)
    elif config.method == "tau_norm" and config.decoupling.tau_grid:
        _, features = evaluator.predictions_and_features(model, state, val.images)
        kernel = np.asarray(jax.device_get(state.params["head"]["fc"]["kernel"]))[:, :ctx.split.num_classes]
        values = [float(t) for t in config.decoupling.tau_grid]
        accuracy = [100.0 * float(np.mean(np.argmax(features @ np.asarray(baselines.tau_normalize(kernel, t)), -1)
                                          == val.labels)) for t in values]
        choice = {"kind": "tau_norm", "value": calibration.best_value(values, accuracy), "grid": values,
                  "val_overall": accuracy}
    else:
        tau = config.loss.logit_adjustment_tau if config.method == "logit_adjustment" else config.decoupling.tau
        return tau, None
    ctx.reporter.info(f"{config.method}: tau {choice['value']:g} chosen on validation (overall % per tau: "
                      + ", ".join(f"{v:g} {a:.2f}" for v, a in zip(choice["grid"], choice["val_overall"])) + ")")
    return choice["value"], choice


# ---- the classifier after it (crt, lws) --------------------------------------------------
def classifier_spec(ctx, joint_state) -> programs.PhaseSpec:
    """cRT: a fresh classifier; LWS: per-class scales on the joint classifier. Both train on
    class-balanced batches with the joint backbone frozen (the `classifier` recipe)."""
    method, num_classes = ctx.config.method, ctx.split.num_classes

    def init(model, tx, joint_params, joint_batch_stats):
        if method == "crt":
            head = model.init(jax.random.fold_in(ctx.rng, 4), jnp.zeros((1, *ctx.data.image_shape)),
                              train=False)["params"]["head"]
        else:
            head = {**joint_params["head"], "class_scale": jnp.ones((num_classes,), jnp.float32)}
        return steps.new_train_state({**joint_params, "head": head}, joint_batch_stats, tx)

    return programs.PhaseSpec(
        name="classifier", num_outputs=num_classes, rows=ctx.all_rows, init=init,
        make_step=lambda model, tx, schedule: steps.make_classifier_retraining_step(model, tx, schedule,
                                                                                    ctx.train_preprocess),
        init_inputs=(joint_state.params, joint_state.batch_stats),
        trainable="head" if method == "crt" else "class_scale", model_options={"class_scale": method == "lws"})


def plan(ctx) -> list[tuple[programs.PhaseSpec, programs.PhasePrograms]]:
    """The joint phase's spec and programs (and the classifier's, from its abstract state)."""
    spec = joint_spec(ctx)
    built = programs.build(ctx, spec)
    planned = [(spec, built)]
    if ctx.config.method in ("crt", "lws"):
        state = sharding.abstract(built.abstract_state, built.state_shardings)
        classifier = classifier_spec(ctx, state)
        planned.append((classifier, programs.build(ctx, classifier)))
    return planned


# ---- the runs ----------------------------------------------------------------------------
def decoupled(ctx, evaluator, stop, joint_model, joint_state) -> dict:
    """The final figures of a decoupling method on the trained joint model."""
    method = ctx.config.method
    if method == "tau_norm":
        tau, choice = chosen_tau(ctx, evaluator, joint_model, joint_state)
        head = joint_state.params["head"]["fc"]
        fc = {"kernel": baselines.tau_normalize(head["kernel"], tau),
              "bias": jnp.zeros_like(head["bias"])}
        state = joint_state.replace(params={**joint_state.params, "head": {"fc": fc}})
        return {**evaluator.final(joint_model, state), "tau": tau, **({"tau_choice": choice} if choice else {})}
    if method == "ncm":
        _, train_features = evaluator.predictions_and_features(joint_model, joint_state, ctx.data.train_images)
        means = baselines.class_means(train_features, ctx.train_labels, ctx.split.num_classes)
        figures = {}
        for split in (ctx.test, ctx.val):  # The final figures on test, and on validation (`val`).
            if split is not None:
                _, features = evaluator.predictions_and_features(joint_model, joint_state, split.images)
                predictions = np.asarray(baselines.ncm_predict(features, means, metric=ctx.config.decoupling.ncm_metric))
                if split is ctx.test:
                    figures.update(evaluator.test_percent(predictions))
                else:
                    figures["val"] = {**evaluate.percent(evaluate.shot_accuracy(predictions, split.labels, ctx.counts)),
                                      "classes": int(len(np.unique(split.labels)))}
        return figures
    model, state, _ = loop.train_phase(ctx, classifier_spec(ctx, joint_state), evaluator, stop)
    return evaluator.final(model, state)


def run(ctx, evaluator, stop) -> dict:
    config, method = ctx.config, ctx.config.method
    if config.joint_from:  # Another workdir's finished cross-entropy joint phase, only read.
        model, state, seconds = loop.restore_finished(ctx, joint_spec(ctx), config.joint_from)
    else:
        model, state, seconds = loop.train_phase(ctx, joint_spec(ctx), evaluator, stop)
    shared = {"joint_from": config.joint_from or None}
    if method == "logit_adjustment":
        tau, choice = chosen_tau(ctx, evaluator, model, state)
        offset = logit_offset(ctx, tau)
        if jax.process_index() == 0:  # For export and predict, as async's calibration.
            calibration.save(ctx.workdir, "logit_adjustment", tau, offset)
        final = (evaluator if choice is None else evaluate.Evaluator(ctx, offset)).final(model, state)
        return {**final, "tau": tau, **({"tau_choice": choice} if choice else {}), **shared,
                "wall_time_s": {"joint": seconds}}
    if method not in DECOUPLED:
        return {**evaluator.final(model, state), **shared, "wall_time_s": {"joint": seconds}}
    # The joint model's own figures: on test, or on validation where the test split is not read.
    own = evaluate.percent(evaluator.shot_fractions(model, state, ctx.test or ctx.val)[0])
    joint = {"joint": own} if ctx.test is not None else {"joint_val": own}
    started = time.time()
    result = decoupled(ctx, evaluator, stop, model, state)
    return {**result, **joint, **shared, "wall_time_s": {"joint": seconds, method: time.time() - started}}
