"""Full-batch training at the speed of a hand-written loop.

A PINN usually trains on one fixed batch: every collocation point, every
step. The first thing a Keras user writes for that,
`fit(xy, batch_size=len(xy), epochs=N)`, is one step per epoch, and Keras
spends several milliseconds per epoch (a new iterator over the arrays, the
shuffle, callbacks, metric resets, the logs copied to the host): on the
default Helmholtz PINN that is several times the step itself.
`full_batch(xy)` is the same batch as an endless dataset, so that
`fit(full_batch(xy), steps_per_epoch=N)` runs N steps in one epoch:

```python
model.fit(keras_balance.full_batch(xy), steps_per_epoch=5000)
```

During `BalancedModel.fit` on a `full_batch` dataset the compiled training
step takes the batch directly, without Keras' iterator (every element is the
same batch): the step then costs what a hand-written `tf.function` step
costs. `keras-balance bench paths` measures every form against a
hand-written loop.
"""

import weakref

import numpy as np
import tensorflow as tf

# dataset -> its one element (tensors): what `BalancedModel.fit` trains on
# directly, without an iterator.
_ELEMENTS = weakref.WeakKeyDictionary()


def _check_rows(name, value, rows):
    count = None if value is None else int(np.shape(value)[0]) if np.ndim(value) else None
    if value is not None and count != rows:
        raise ValueError(
            f"Argument `{name}` must have one row per row of `x` ({rows}); received shape {tuple(np.shape(value))}."
        )


def full_batch(x, y=None, sample_weight=None):
    """One batch of all the data, repeated forever: a `tf.data.Dataset` for `fit(..., steps_per_epoch=N)`.

    Every element is the whole of `x` (with `y` and `sample_weight` when
    given, as Keras' `(x, y, sample_weight)` tuple), converted to tensors once.
    Keras keeps the iterator of a dataset with `steps_per_epoch` across epochs,
    so `fit(full_batch(xy), steps_per_epoch=100, epochs=50)` is 5000
    full-batch steps with a History entry every 100.

    Keras' `fit` warns that `shuffle=True` (its default) is ignored for a
    dataset; `BalancedModel.fit` passes `shuffle=False` itself, and with a
    plain Keras model `fit(full_batch(xy, xy), steps_per_epoch=N,
    shuffle=False)` keeps the warning away.

    Args:
        x: the inputs: an array or tensor (N, ...), or a dict or list of them.
        y: optional targets with N rows.
        sample_weight: optional (N,) weights.

    Returns:
        An infinite `tf.data.Dataset`; pass `steps_per_epoch` to `fit`.

    Example:

    >>> import keras_balance as kb
    >>> pde = kb.HelmholtzPDE()
    >>> xy = pde.sample(seed=0)
    >>> model = kb.PINNModel(pde, kb.build_pinn(pde, seed=0), balancer="relobralo")
    >>> model.compile(optimizer="adam", jit_compile=True)
    >>> history = model.fit(kb.full_batch(xy), steps_per_epoch=100, epochs=10, verbose=0)
    """
    if x is None:
        raise TypeError("Argument `x` must be the training inputs (an array, a tensor, or a dict or list of them); "
                        "received x=None.")
    if isinstance(x, tf.data.Dataset):
        raise TypeError("Argument `x` must be arrays or tensors, not a `tf.data.Dataset`: repeat the dataset "
                        "itself (`dataset.repeat()`).")
    first = tf.nest.flatten(x)[0]
    rows = int(np.shape(first)[0]) if np.ndim(first) else None
    if rows is None or rows == 0:
        raise ValueError(f"Argument `x` must have at least one row; received shape {tuple(np.shape(first))}.")
    _check_rows("y", None if y is None else tf.nest.flatten(y)[0], rows)
    _check_rows("sample_weight", sample_weight, rows)
    if sample_weight is not None and y is None:
        raise ValueError("Argument `sample_weight` needs `y`: Keras reads a pair `(x, w)` as inputs and "
                         "targets. Pass the targets as well.")
    element = tuple(part for part in (x, y, sample_weight) if part is not None)
    element = tf.nest.map_structure(tf.convert_to_tensor, element[0] if len(element) == 1 else element)
    # tf.data's default optimizations and autotuning add a prefetch thread,
    # whose hand-off costs some 5 % of a full-batch PINN step on CPU; one
    # repeated element has nothing to prefetch.
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    dataset = tf.data.Dataset.from_tensors(element).repeat().with_options(options)
    _ELEMENTS[dataset] = element
    return dataset


def full_batch_element(dataset):
    """The batch of a dataset made by `full_batch` (tensors), or None for any other dataset."""
    try:
        return _ELEMENTS.get(dataset)
    except TypeError:  # not weakly referenceable: not ours
        return None


def full_batch_fit_arguments(x, y, kwargs):
    """The arguments of `fit(full_batch(x, y, w), steps_per_epoch=1, ...)` for a full-batch array `fit`, or None.

    `BalancedModel.fit` trains a call such as `fit(xy, batch_size=len(xy),
    epochs=N)` this way: one step per epoch on the whole of the arrays, as
    Keras would, without building a new iterator (and shuffling) every epoch.
    Only the rows' order differs: Keras shuffles the rows of the one batch,
    which changes nothing but the rounding of the batch means. Returns None
    (Keras' own path) for anything else: datasets and generators, batches
    smaller than the data, `steps_per_epoch`, `validation_split` or
    `class_weight`.
    """
    batch_size = kwargs.get("batch_size")
    if isinstance(x, tf.data.Dataset) or x is None or batch_size is None or isinstance(batch_size, bool):
        return None
    if kwargs.get("steps_per_epoch") is not None or kwargs.get("validation_split") or kwargs.get("class_weight"):
        return None
    leaves = tf.nest.flatten(x) + tf.nest.flatten(y) + tf.nest.flatten(kwargs.get("sample_weight"))
    if not all(isinstance(leaf, (np.ndarray, tf.Tensor)) for leaf in leaves if leaf is not None):
        return None
    rows = int(np.shape(tf.nest.flatten(x)[0])[0]) if np.ndim(tf.nest.flatten(x)[0]) else 0
    if rows == 0 or batch_size < rows:
        return None
    arguments = {key: value for key, value in kwargs.items() if key not in ("batch_size", "shuffle", "sample_weight")}
    arguments["steps_per_epoch"] = 1
    arguments["shuffle"] = False  # one batch: nothing to shuffle
    return full_batch(x, y, kwargs.get("sample_weight")), arguments


__all__ = ["full_batch", "full_batch_element", "full_batch_fit_arguments"]
