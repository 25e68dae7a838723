"""Workarounds for Keras' handling of `MultiWorkerMirroredStrategy`.

Two places in Keras' trainer (3.15) reduce values in ways that
`MultiWorkerMirroredStrategy` rejects. `MultiWorkerFixes` is a mixin for a
`keras.Model` that replaces those two places under that strategy only; with
any other strategy, or none, the model runs Keras' own code.
"""

import keras
import tensorflow as tf


def _is_multi_worker(model):
    return isinstance(getattr(model, "_distribute_strategy", None), tf.distribute.MultiWorkerMirroredStrategy)


class MultiWorkerFixes:
    """A mixin for `keras.Model` subclasses trained under `MultiWorkerMirroredStrategy`."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras reduces the first batch of a distributed dataset with one
        # `strategy.reduce` over the whole (x, y) structure, which
        # MultiWorkerMirroredStrategy rejects (it reduces single values only).
        # Reduce each tensor on its own there.
        if iterator is None or not _is_multi_worker(self):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        strategy = self._distribute_strategy
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None)
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def _make_function(self, step_function):
        # Keras reduces each logged value with `strategy.reduce("MEAN", value,
        # axis=0)`, which fails on a scalar. Log (1,) tensors there: the
        # reduction then gives back the scalar mean over replicas (equal
        # values: the global terms).
        if not _is_multi_worker(self):
            return super()._make_function(step_function)

        def step_with_vector_logs(data):
            return keras.tree.map_structure(
                lambda value: tf.reshape(value, [1]) if value.shape.rank == 0 else value, step_function(data)
            )

        return super()._make_function(step_with_vector_logs)


__all__ = ["MultiWorkerFixes"]
