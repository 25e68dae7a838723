"""The one place that reaches into Keras' private modules.

`BalancedModel` works both as a subclassed model and with the functional API
(`BalancedModel(inputs, outputs, ...)`). Keras turns a `Model` subclass called
with `(inputs, outputs)` into a functional model by rewriting the class's
bases in place, which would break every later subclassed use of the same
class. Instead, a functional `BalancedModel` (or subclass) is built from a
separate variant class, `cls` with Keras' `Functional` mixed in, created once
per class and serialized under `cls`'s registered name.

A compiled Keras loss is never told which model it serves; `calling_model`
finds it on the call stack (Keras' trainer calls the loss from the model's
`compute_loss`), so that one loss object cannot train two models unnoticed.

Keras keeps the pieces this needs internal: the class of functional models,
its `from_config`, the trainer's own initializer, the test for functional
constructor arguments and the registry of custom names. When a Keras release
moves them, this module is the one to update.
"""

import sys

import keras
from keras.src.models.functional import Functional, functional_from_config
from keras.src.models.model import functional_init_arguments
from keras.src.saving import object_registration
from keras.src.trainers.trainer import Trainer

_FUNCTIONAL_VARIANTS = {}


def builds_a_graph(args, kwargs):
    """Are these constructor arguments `(inputs, outputs)` of a functional model?"""
    if not functional_init_arguments(args, kwargs):
        return False
    inputs = args[0] if args else kwargs.get("inputs")
    flat = keras.tree.flatten(inputs)
    return bool(flat) and all(isinstance(t, keras.KerasTensor) for t in flat)


def is_functional(model):
    """Is `model` a functional model (built from inputs and outputs)?"""
    return isinstance(model, Functional)


def model_class(cls, args, kwargs):
    """The class to instantiate for `cls(*args, **kwargs)`: its functional variant for a graph."""
    if builds_a_graph(args, kwargs) and not issubclass(cls, Functional):
        return functional_variant(cls)
    return cls


def functional_variant(cls):
    """`cls` with `Functional` mixed in, created once per class."""
    variant = _FUNCTIONAL_VARIANTS.get(cls)
    if variant is None:
        variant = type(cls.__name__, (cls, Functional), {"__module__": cls.__module__})
        variant.__qualname__ = cls.__qualname__
        _FUNCTIONAL_VARIANTS[cls] = variant
    # Serialize the variant under the name its class is registered with, so
    # `keras.models.load_model` rebuilds it through `cls.from_config`.
    registered = object_registration.get_registered_name(cls)
    if registered != cls.__name__:
        object_registration.GLOBAL_CUSTOM_NAMES[variant] = registered
    return variant


def init_functional(model, args, kwargs):
    """Run the initializers of a functional variant (the trainer's, then `Functional`'s)."""
    Trainer.__init__(model)
    Functional.__init__(model, *args, **kwargs)


def is_functional_config(config):
    """Does a model config describe a functional graph (layers, inputs, outputs)?"""
    return all(key in config for key in ("layers", "input_layers", "output_layers"))


def from_functional_config(cls, config, custom_objects=None):
    """Rebuild a functional model of class `cls` from its config."""
    return functional_from_config(cls, config, custom_objects=custom_objects)


__all__ = [
    "builds_a_graph",
    "from_functional_config",
    "functional_variant",
    "init_functional",
    "is_functional",
    "is_functional_config",
    "model_class",
]


def calling_model():
    """The Keras model whose method is (directly or indirectly) calling the current function, or None.

    Walks the Python stack outwards to the first frame whose `self` is a
    `keras.Model`. Called while a compiled loss runs (eagerly, or while its
    `tf.function` is traced), this is the model that compiled it.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.Model):
            return owner
        frame = frame.f_back
    return None


def step_function(model, step):
    """Keras' train function (iterator -> logs) around `step(data)`, as `make_train_function` builds it.

    The same wrapping (distribution, XLA, steps per execution, the iterator's
    end) that Keras' TensorFlow trainer gives `model.train_step`.
    """
    return model._make_function(step)
