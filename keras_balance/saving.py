"""What to hand to `tf.train.Checkpoint` so that a run resumes with its balancer.

`model.save` / `keras.models.load_model` and
`keras.callbacks.BackupAndRestore` carry the balancer state on their own, for
a `BalancedModel` (the balancer is one of its layers) and for a plain Keras
model compiled with a `BalancedLoss` (Keras saves the compiled loss's
balancer with the model). A `tf.train.Checkpoint`, however, saves exactly
the objects it is given; `checkpoint_objects(model)` names them all:

    checkpoint = tf.train.Checkpoint(**keras_balance.checkpoint_objects(model))
    checkpoint.save(prefix)                  # ...later, on a model built the same way:
    checkpoint.restore(path)
"""

from keras_balance.losses import BalancedLoss
from keras_balance.models import BalancedModel


def checkpoint_objects(model):
    """The trackable objects of a training run, as keyword arguments of `tf.train.Checkpoint`.

    Args:
        model: a compiled `BalancedModel` (or `PINNModel`), or a Keras model
            compiled with a `keras_balance` loss (`BalancedLoss`, `ReLoBRaLoLoss`, ...).

    Returns:
        `{"model": model, "optimizer": model.optimizer, "balancer": balancer}`;
        the balancer entry is the compiled loss's balancer for a plain model
        (a `BalancedModel` tracks its balancer itself, as a layer), and is
        absent for a plain model without a balanced loss.
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"Argument `model` must be compiled (it has no optimizer); received {type(model).__name__} "
            f"{getattr(model, 'name', model)!r}."
        )
    objects = {"model": model, "optimizer": model.optimizer}
    if not isinstance(model, BalancedModel) and isinstance(getattr(model, "loss", None), BalancedLoss):
        objects["balancer"] = model.loss.balancer
    return objects


__all__ = ["checkpoint_objects"]
