"""The paper's method (async; Algorithm 1, METHOD.md): phase I, the memory bank, phase II.

    phase I   : cross-entropy on the C1 head classes X1                 (Eq. 1)
                (or the finished phase I of another workdir: phase1_from)
    memory    : K exemplars per head class from phase-I features        (Eqs. 2-5)
    phase II  : X2 + M with L_cls + L_intra + lambda L_dis against the  (Eqs. 6-9)
                frozen phase-I backbone; W_c = [W_c1 | W_c2], W_c1 from phase I
"""
from __future__ import annotations

import os
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from asyncjax import calibration, evaluate, files, loop, losses, memory, programs, sharding, steps


# ---- the phases' specs -------------------------------------------------------------------
def phase1_spec(ctx) -> programs.PhaseSpec:
    """Cross-entropy on X1, the head classes' images (Eq. 1)."""
    return programs.PhaseSpec(
        name="phase1", num_outputs=ctx.split.num_head, rows=ctx.head_rows,
        init=ctx.random_state,
        make_step=lambda model, tx, schedule: steps.make_classification_step(model, tx, schedule,
                                                                             ctx.train_preprocess))


def retention_weight(ctx) -> float:
    """lambda = lambda_base * sqrt(C1 / C2)."""
    return losses.retention_weight(ctx.split.num_head, ctx.split.num_tail, ctx.config.loss.retention_weight_base)


def frozen_backbone(state1) -> dict:
    """The phase-I backbone's {'params', 'batch_stats'} (arrays, or their shapes)."""
    return {"params": state1.params["backbone"], "batch_stats": state1.batch_stats["backbone"]}


def phase2_spec(ctx, state1, rows2: np.ndarray, imprint, old_variables, meta_extra=None) -> programs.PhaseSpec:
    """Eq. 9 on X2 + M over all C classes, from phase I's parameters with W_c2 appended
    (random, or `imprint`ed); its step takes the frozen phase-I backbone (`old_variables`).
    `state1`, `imprint` and `old_variables` may be abstract (plan: shapes with shardings)."""
    config, c1, c = ctx.config, ctx.split.num_head, ctx.split.num_classes

    def init(model, tx, params1, batch_stats1, imprint):
        fresh = model.init(jax.random.fold_in(ctx.rng_of("phase2"), 2), jnp.zeros((1, *ctx.data.image_shape)),
                           train=False)["params"]["head"]
        if imprint is not None:
            fresh = {**fresh, "kernel": fresh["kernel"].at[:, c1:c].set(imprint)}
        return steps.new_train_state(steps.extend_classifier(params1, fresh, c1), batch_stats1, tx)

    backbone, weight = ctx.build_backbone(), retention_weight(ctx)
    return programs.PhaseSpec(
        name="phase2", num_outputs=c, rows=rows2, init=init,
        make_step=lambda model, tx, schedule: steps.make_phase2_step(
            model, backbone, tx, schedule, ctx.train_preprocess, num_head=c1, retention_weight=weight,
            loss_config=config.loss, freeze_batch_norm=config.phase2.batch_norm == "freeze"),
        init_inputs=(state1.params, state1.batch_stats, imprint), extra_inputs=(old_variables,),
        extra_shardings=(sharding.state_shardings(frozen_backbone(state1), ctx.mesh),),
        # Phase II's extra batch entry: 1 on exemplars of the memory bank (head-class rows).
        batch_extras=lambda labels: {"is_memory": (labels < c1).astype(np.float32)},
        # phase2_old_rows=freeze: W_c1's columns get no update (nor weight decay, nor momentum's).
        frozen_head_columns=c1 if config.phase2_old_rows == "freeze" else 0,
        meta_extra=meta_extra or {})


def plan(ctx) -> list[tuple[programs.PhaseSpec, programs.PhasePrograms]]:
    """Both phases' specs and programs, built without running: phase II's from phase I's abstract
    state, over the tail rows and a bank of min(K, n_j) rows per head class."""
    spec1 = phase1_spec(ctx)
    built1 = programs.build(ctx, spec1)
    state1 = sharding.abstract(built1.abstract_state, built1.state_shardings)
    # The first min(K, n_j) rows of each head class: a bank's count and labels (all that sizes phase II).
    head = ctx.head_rows
    labels = ctx.train_labels[head]
    order = np.argsort(labels, kind="stable")
    rank = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])  # Position within its class.
    rows2 = np.sort(np.concatenate([ctx.tail_rows, head[order[rank < ctx.config.memory.per_class]]]))
    imprint = None
    if ctx.config.phase2_init == "imprint":
        imprint = jax.ShapeDtypeStruct((state1.params["head"]["kernel"].shape[0], ctx.split.num_tail), jnp.float32)
    spec2 = phase2_spec(ctx, state1, rows2, imprint, frozen_backbone(state1))
    return [(spec1, built1), (spec2, programs.build(ctx, spec2))]


# ---- between the phases ------------------------------------------------------------------
def memory_bank(ctx, evaluator, model1, state1) -> np.ndarray:
    """Exemplar indices (into the LT training set) per head class, [C1, K] (-1: none); saved to
    memory_bank.npz. This workdir's saved bank is reused, else phase1_from's when K is the same."""
    path = os.path.join(ctx.workdir, "memory_bank.npz")
    source = os.path.join(ctx.config.phase1_from, "memory_bank.npz") if ctx.config.phase1_from else ""
    save = lambda bank: files.save_npz(path, bank=bank, rank_to_class=ctx.split.rank_to_class)
    for candidate in (path, source):
        if candidate and os.path.exists(candidate):
            try:
                with np.load(candidate, allow_pickle=False) as saved:
                    bank = saved["bank"]
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:  # Cut short, say.
                ctx.reporter.info(f"memory bank: {candidate} is damaged ({type(e).__name__}: {e}); "
                                  "selecting the exemplars again from the phase-I model")
                continue
            if bank.ndim == 2 and bank.shape[1] == ctx.config.memory.per_class:
                if candidate == source and jax.process_index() == 0:
                    save(bank)
                return bank
    head_rows = ctx.head_rows
    _, features = evaluator.predictions_and_features(model1, state1, ctx.data.train_images, head_rows)
    local = memory.build_memory_bank(features, ctx.train_labels[head_rows], np.arange(ctx.split.num_head),
                                     ctx.config.memory.per_class, max_chunk_bytes=ctx.config.memory.max_chunk_bytes)
    bank = np.where(local >= 0, head_rows[np.maximum(local, 0)], -1)
    if jax.process_index() == 0:
        save(bank)
    return bank


def imprinted_rows(ctx, evaluator, model1, state1) -> np.ndarray:
    """(choice) W_c2 rows = normalised mean phase-I feature of each tail class: [d, C2]."""
    tail_rows = ctx.tail_rows
    _, features = evaluator.predictions_and_features(model1, state1, ctx.data.train_images, tail_rows)
    labels = ctx.train_labels[tail_rows] - ctx.split.num_head
    means = np.stack([features[labels == k].mean(axis=0) for k in range(ctx.split.num_tail)])
    means /= np.linalg.norm(means, axis=1, keepdims=True) + 1e-12
    return np.asarray(means.T, np.float32)  # Host data: every process passes the same to the init.


def phase1_figures(ctx, evaluator, model1, state1) -> dict:
    """The phase-I model on the test split (its head classes, and all; not where read_test=False),
    and on validation."""
    c1, result = ctx.split.num_head, {}
    if ctx.test is not None:
        head, everything = evaluator.shot_fractions(model1, state1, ctx.test, (c1, None))
        result = {"head": evaluate.percent(head), "all": evaluate.percent(everything)}
        ctx.reporter.info(f"phase1 final test accuracy: head classes {result['head']['overall']:.2f}%, "
                          f"all classes {result['all']['overall']:.2f}%")
    val1 = evaluator.val_percent(model1, state1, c1)
    if val1:  # The phase-I model on the validation images of its own (head) classes.
        result["val_head"] = val1
        if ctx.test is None:
            ctx.reporter.info(f"phase1 final validation accuracy (head classes): {val1['overall']:.2f}% "
                              "(test split not read)")
    return result


# ---- after phase II ------------------------------------------------------------------------
def calibrate(ctx, evaluator, model2, state2) -> tuple[dict, dict | None]:
    """(final figures, calibration record). On the validation split, each correction of
    calibration.py at its best grid value; the final figures with `calibration.kind`'s applied
    (its offset saved for export and predict). No validation split: no record, no correction."""
    config, c1 = ctx.config, ctx.split.num_head
    if ctx.val is None:
        return evaluator.final(model2, state2), None
    logits = evaluator.logits(model2, state2, ctx.val.images)
    labels = ctx.val.labels
    options = {}
    for kind in calibration.KINDS:
        if kind == "none":
            choice = {"kind": "none", "value": 0.0}
        else:  # The config's grid for the kind it applies, the default grid for the others.
            grid = config.calibration.grid if kind == config.calibration.kind else ()
            choice = calibration.choose(logits, labels, kind, grid, ctx.counts, c1)
            # Every grid value's shot groups: what each size of the correction buys and costs.
            choice["val_groups"] = [evaluate.percent(evaluate.shot_accuracy(
                np.argmax(logits + calibration.offset(kind, v, ctx.counts, c1), -1), labels, ctx.counts))
                for v in choice["grid"]]
        offset = calibration.offset(kind, choice["value"], ctx.counts, c1)
        predictions = np.argmax(logits if offset is None else logits + offset, -1)
        choice["val"] = evaluate.percent(evaluate.shot_accuracy(predictions, labels, ctx.counts))
        options[kind] = choice
    kind = config.calibration.kind
    record = {"applied": kind, "value": options[kind]["value"], "options": options}
    summary = ", ".join(f"{k} {o['value']:g}: {o['val']['overall']:.2f}" for k, o in options.items())
    ctx.reporter.info(f"calibration on validation (overall %, best value of each kind): {summary}; applied: {kind}")
    # The final validation figures are the applied option's, from the same logits: no second pass.
    val = {**options[kind]["val"], "classes": int(len(np.unique(labels)))}
    if kind == "none":
        return evaluator.final(model2, state2, val), record
    offset = calibration.offset(kind, options[kind]["value"], ctx.counts, c1)
    if jax.process_index() == 0:
        calibration.save(ctx.workdir, kind, options[kind]["value"], offset)
    return evaluate.Evaluator(ctx, offset).final(model2, state2, val), record


# ---- the run -----------------------------------------------------------------------------
def run(ctx, evaluator, stop) -> dict:
    config = ctx.config
    if config.phase1_from:
        model1, state1, seconds1 = loop.restore_finished(ctx, phase1_spec(ctx), config.phase1_from)
    else:
        model1, state1, seconds1 = loop.train_phase(ctx, phase1_spec(ctx), evaluator, stop)
    phase1_result = phase1_figures(ctx, evaluator, model1, state1)

    started = time.time()
    bank = memory_bank(ctx, evaluator, model1, state1)
    seconds_bank = time.time() - started
    rows2 = np.sort(np.concatenate([ctx.tail_rows, memory.flatten_bank(bank)]))
    ctx.reporter.info(f"memory bank: {int((bank >= 0).sum())} exemplars of {ctx.split.num_head} head classes "
                      f"({seconds_bank:.1f} s); phase II data: {len(ctx.tail_rows)} tail + bank")
    if stop.requested():
        raise loop.Interrupted(f"{stop.signal} received: stopped after the memory bank (saved to "
                               "memory_bank.npz); run the same command again to resume")

    # The frozen phase-I backbone; copied so that donating phase II's state never frees it.
    old_variables = jax.tree.map(lambda x: jnp.array(x, copy=True), frozen_backbone(state1))
    imprint = imprinted_rows(ctx, evaluator, model1, state1) if config.phase2_init == "imprint" else None
    spec2 = phase2_spec(ctx, state1, rows2, imprint, old_variables, meta_extra={"memory_bank": bank.tolist()})
    model2, state2, seconds2 = loop.train_phase(ctx, spec2, evaluator, stop)
    final, calibrated = calibrate(ctx, evaluator, model2, state2)
    return {**final, "calibration": calibrated, "phase1": phase1_result,
            "phase1_from": config.phase1_from or None,
            "num_head_classes": ctx.split.num_head, "retention_weight": retention_weight(ctx),
            "memory_bank_size": int((bank >= 0).sum()), "phase2_rows": int(len(rows2)),
            "wall_time_s": {"phase1": seconds1, "memory_bank": seconds_bank, "phase2": seconds2}}
