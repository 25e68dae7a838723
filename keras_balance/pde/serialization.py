"""Saving and loading PDE problems with the models and losses that use them.

Every subclass of `keras_balance.pde.PDE` is registered for Keras
serialization when its class statement runs, under the name
`"<module>><qualified class name>"` (`"keras_balance.pde.helmholtz>HelmholtzPDE"`,
`"__main__>PoissonPDE"`): two classes registered under one name are one class
defined twice (a notebook cell run again), and the later definition wins. So a
`PINNModel` or a Keras loss built on a problem of one's own survives
`model.save` and `keras.models.load_model` without `custom_objects`, as long as
the class is defined (or imported) before loading.

`serialize(pde)` gives the standard Keras config,
`{"module": ..., "class_name": ..., "config": pde.get_config(), "registered_name": ...}`;
`deserialize(config)` rebuilds the problem with `cls.from_config(config["config"])`.
Configs saved before registration existed, `{"class_name": "HelmholtzPDE",
"config": {...}}`, still load: a config whose registered name is unknown is
resolved by its class name among the registered PDE classes.
"""

import keras

_PACKAGE = "keras_balance"

# Every registered PDE class, by registered name.
_CLASSES = {}


def registered_name(cls):
    """The name a PDE class is registered under: `"<module>><qualified name>"`."""
    return f"{cls.__module__}>{cls.__qualname__}"


def register(cls):
    """Register a PDE class for Keras serialization (`PDE` calls it for every subclass)."""
    keras.saving.register_keras_serializable(package=cls.__module__, name=cls.__qualname__)(cls)
    _CLASSES[registered_name(cls)] = cls
    return cls


def serialize(pde):
    """The Keras config of a PDE problem, a JSON-compatible dict.

    Example:

    >>> config = serialize(HelmholtzPDE(a2=2.0))
    >>> config["registered_name"], config["config"]["a2"]
    ('keras_balance.pde.helmholtz>HelmholtzPDE', 2.0)
    """
    return keras.saving.serialize_keras_object(pde)


def deserialize(config, custom_objects=None):
    """The PDE problem of a config written by `serialize` (or by an earlier version).

    Args:
        config: `{"class_name": ..., "config": {...}}`, with the
            `"registered_name"` of `serialize` or without it.
        custom_objects: optional `{name: class}`, as for
            `keras.models.load_model`; a class given under its class name is
            used for a config of that name.

    Raises:
        ValueError: when no registered PDE class matches, or when several
            classes of that name do and none is keras_balance's own.
    """
    name = config.get("registered_name")
    if name and keras.saving.get_registered_object(name, custom_objects) is not None:
        return keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)
    cls = _class_named(config["class_name"], custom_objects)
    return cls.from_config(dict(config.get("config") or {}))


def _class_named(class_name, custom_objects):
    """The PDE class for a config that carries only a class name."""
    given = keras.saving.get_registered_object(class_name, custom_objects)
    if isinstance(given, type):
        return given
    candidates = [cls for cls in _CLASSES.values() if cls.__name__ == class_name]
    if len(candidates) > 1:
        # A name the package uses means the package's class (configs written
        # before registration existed only ever loaded those).
        own = [cls for cls in candidates if cls.__module__.split(".")[0] == _PACKAGE]
        candidates = own or candidates
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        places = ", ".join(sorted(registered_name(cls) for cls in candidates))
        raise ValueError(
            f"The saved PDE config names the class {class_name!r}, which several PDE classes "
            f"share ({places}); pass the one to use in `custom_objects={{{class_name!r}: cls}}`."
        )
    raise ValueError(
        f"Unknown PDE class {class_name!r} in a saved config. Define or import the class "
        "(a subclass of `keras_balance.pde.PDE`) before loading; subclasses register themselves "
        "for Keras serialization when they are defined."
    )
