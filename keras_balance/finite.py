"""Apply an optimizer update only when the step is finite.

A step whose loss terms are NaN or infinite must not reach the parameters:
`apply_if_finite` applies the gradients when the terms are finite and leaves
the parameters, the optimizer's state and its `iterations` untouched
otherwise (applying zero gradients instead would still move the parameters
through Adam's momentum). Graph-safe, XLA-compatible, and correct under
`tf.distribute`, where every replica sees the same (global) terms and so
all replicas skip together.
"""

import tensorflow as tf


def apply_if_finite(optimizer, grads, variables, terms):
    """Apply `grads` to `variables` with `optimizer`, or skip the step when `terms` are not all finite.

    Args:
        optimizer: a Keras optimizer.
        grads: the gradients, one per variable (None for none).
        variables: the trainable variables.
        terms: the step's loss terms; the decision is `all(isfinite(terms))`.
    """
    finite = tf.reduce_all(tf.math.is_finite(terms))
    # Decide once the gradients exist. A predicate that is ready before them
    # (it needs only the forward pass) lets XLA on CPU start the conditional
    # early, and the backward pass then runs about half as fast: on the
    # Kirchhoff plate a Sum step took 2x as long.
    computed = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
    with tf.control_dependencies(computed):
        finite = tf.identity(finite)
    grads = [None if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in grads]

    def apply():
        optimizer.apply(grads, variables)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, apply, lambda: None)
        return

    def cross_replica(distribution, finite, grads):
        # The optimizer's update calls `merge_call`, which a `tf.cond` in a
        # replica context cannot hold: decide in the cross-replica context,
        # as Keras' LossScaleOptimizer does.
        def apply_on_replicas():
            distribution.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))

        tf.cond(distribution.experimental_local_results(finite)[0], apply_on_replicas, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))


__all__ = ["apply_if_finite"]
