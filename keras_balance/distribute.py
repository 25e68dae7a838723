"""Helpers that make balancing exact under `tf.distribute`.

Under a distribution strategy each replica computes the loss terms on its
share of the global batch. A balancer must see the terms of the *global*
batch, or every replica would compute different weights from different
losses. Keras, for its part, divides each replica's loss by the number of
replicas and sums the gradients across replicas.

`globalize(terms)` returns terms whose *values* are the means over the
replicas (the global batch's terms, when the replicas hold equal shares) and
whose *gradients* flow to the replica's own terms. A balancer fed these
values computes the same weights on every replica; an objective built from
them, divided by the number of replicas (`scale`), sums across replicas to the
gradient of the global objective. This holds for any differentiable
combination `F(L_1, ..., L_K)`: the gradient on replica r is
`sum_i dF/dL_i(L_mean) grad L_i^(r)`, and the mean over r of `grad L_i^(r)`
is the global `grad L_i`.

With one replica every helper returns its input unchanged.
"""

import tensorflow as tf


def num_replicas():
    """The number of replicas in sync (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _replica_context():
    """The replica context when there are several replicas, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def replica_mean(values):
    """The mean over replicas of `values` (a tensor or a nested structure of tensors)."""
    context = _replica_context()
    if context is None:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, values)


def all_replicas(flag):
    """A boolean scalar that is True on every replica only when `flag` is True on all of them."""
    context = _replica_context()
    if context is None:
        return flag
    failures = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(flag, tf.float32))
    return failures < 0.5


def globalize(terms):
    """Terms with the values of the replica mean and the gradients of the local terms."""
    context = _replica_context()
    if context is None:
        return terms
    local = tf.stop_gradient(terms)
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, local) + (terms - local)


def gather_columns(matrix):
    """Concatenate the replicas' (K, P_r) matrices along axis 1."""
    context = _replica_context()
    if context is None:
        return matrix
    return context.all_gather(matrix, axis=1)


def scale(value):
    """`value / replicas`: the per-replica share of an objective whose gradients are summed."""
    replicas = num_replicas()
    if replicas <= 1:
        return value
    return value * tf.cast(1.0 / replicas, value.dtype)


__all__ = ["num_replicas", "replica_mean", "all_replicas", "globalize", "gather_columns", "scale"]
