"""Skip a training step that is not finite, whole.

A step whose loss terms or gradients hold a NaN or an infinity must reach
neither the parameters nor the balancer's state. Gradients can be non-finite
behind finite terms (a saturated `tanh` on an infinite input gives
`inf * 0 = NaN` in the backward pass; so does `sqrt(0)` inside a term), so the
decision covers both.

`balancer_snapshot` records the balancer's state when the step begins;
`apply_if_finite` applies the gradients when the step is finite and otherwise
leaves the parameters, the optimizer's state and its `iterations` untouched
(applying zero gradients instead would still move the parameters through
Adam's momentum) and puts the balancer's state back as it was. Graph-safe,
XLA-compatible, and correct under `tf.distribute`, where the replicas agree
on the decision so all of them skip together.
"""

import keras
import tensorflow as tf

from keras_balance import distribute


def _restorable(balancer):
    # The latest losses stay as received, for logging (a skipped step shows them).
    return [v for v in balancer.non_trainable_variables if v is not balancer.term_losses]


def balancer_snapshot(balancer):
    """The values of the balancer's state at the start of a step (to restore if it is skipped)."""
    return _Snapshot((v, tf.identity(v.value)) for v in _restorable(balancer))


class _Snapshot(list):
    """The values of a snapshot, in order; `variables` names the variables they belong to."""

    def __init__(self, pairs):
        pairs = list(pairs)
        super().__init__(value for _, value in pairs)
        self.variables = [variable for variable, _ in pairs]


def _restorable_at_snapshot(balancer, snapshot):
    variables = getattr(snapshot, "variables", None)
    return _restorable(balancer)[: len(snapshot)] if variables is None else variables


def _all_finite(grads):
    flags = [tf.constant(True)]
    for g in grads:
        if g is not None:
            values = g.values if isinstance(g, tf.IndexedSlices) else g
            flags.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(tf.stack(flags))


def step_is_finite(terms, grads):
    """Two boolean scalars, agreed by every replica: are the terms finite, and are the gradients?"""
    terms_finite = distribute.all_replicas(tf.reduce_all(tf.math.is_finite(terms)))
    return terms_finite, distribute.all_replicas(_all_finite(grads))


def apply_if_finite(optimizer, grads, variables, terms, balancer=None, snapshot=None):
    """Apply `grads` to `variables` with `optimizer`, or skip the step when it is not finite.

    Args:
        optimizer: a Keras optimizer.
        grads: the gradients, one per variable (None for none).
        variables: the trainable variables.
        terms: the step's loss terms.
        balancer: optional; its state is put back to `snapshot` when the step
            is skipped.
        snapshot: `balancer_snapshot(balancer)`, taken when the step began.

    Under mixed precision (a `keras.optimizers.LossScaleOptimizer`),
    gradients that overflow are the optimizer's business: it skips those
    updates itself while it lowers its loss scale, so they reach it, and they
    are not counted as skipped steps; the balancer's state is still put back.

    Returns:
        `(applied, skipped)`, boolean scalars: did the step change anything
        (terms and gradients finite), and was it skipped as not finite (what
        `BalancedModel` counts)? The decision depends on the gradients, so
        XLA cannot start the conditional before the backward pass, which on
        CPU would slow the backward pass down by half.
    """
    terms_finite, grads_finite = step_is_finite(terms, grads)
    applied = tf.logical_and(terms_finite, grads_finite)
    if balancer is not None:
        # Per-column state created within this step (its first trace) is not
        # in `snapshot`: the balancer kept its value from when the step began.
        started = getattr(balancer, "step_start", {})
        taken = {id(v): old for v, old in zip(_restorable_at_snapshot(balancer, snapshot), snapshot)}
        for variable in _restorable(balancer):
            old = taken.get(id(variable), started.get(id(variable)))
            if old is not None:
                variable.assign(tf.where(applied, variable.value, old))
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        finite, skipped = terms_finite, tf.logical_not(terms_finite)
    else:
        finite, skipped = applied, tf.logical_not(applied)
    grads = [None if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in grads]

    def apply():
        optimizer.apply(grads, variables)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, apply, lambda: None)
        return applied, skipped

    def cross_replica(distribution, finite, grads):
        # The optimizer's update calls `merge_call`, which a `tf.cond` in a
        # replica context cannot hold: decide in the cross-replica context,
        # as Keras' LossScaleOptimizer does.
        def apply_on_replicas():
            distribution.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))

        tf.cond(distribution.experimental_local_results(finite)[0], apply_on_replicas, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))
    return applied, skipped


def state_snapshot(variables):
    """`(variable, value)` pairs: the values of further step state (weightings inside the terms) at a step's start."""
    return [(variable, tf.identity(variable.value)) for variable in variables]


def restore_unless(applied, snapshot):
    """Put the variables of a `state_snapshot` back unless the step was `applied`."""
    for variable, old in snapshot:
        variable.assign(tf.where(applied, variable.value, old))


__all__ = ["apply_if_finite", "balancer_snapshot", "restore_unless", "state_snapshot", "step_is_finite"]
