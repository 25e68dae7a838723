"""Look balancers up by name; serialize and deserialize them."""

import inspect

import keras

from keras_balance.balancers.base import Balancer

_REGISTRY = {}


def register(name, cls=None):
    """Register a `Balancer` subclass under a string identifier.

    Usable as a decorator (`@register("mine")`) or a call
    (`register("mine", MyBalancer)`). Names are case-insensitive and
    ignore separators when looked up (see `canonical`), so two names that
    differ only in case or separators cannot name two balancers.
    """

    def add(cls):
        if not (inspect.isclass(cls) and issubclass(cls, Balancer)):
            raise TypeError(f"Only Balancer subclasses can be registered; received {cls!r}.")
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"A balancer named {name!r} is already registered.")
        clash = [k for k, c in _REGISTRY.items() if c is not cls and canonical(k) == canonical(key)]
        if clash:
            raise ValueError(f"The name {name!r} would be read as the registered {clash[0]!r}; choose another.")
        _REGISTRY[key] = cls
        return cls

    return add if cls is None else add(cls)


def canonical(name):
    """`name` in lower case without separators: `"Nash-MTL"`, `"nash_mtl"` and `"NashMTL"` read alike."""
    return "".join(c for c in name.lower() if c.isalnum())


def _lookup(name):
    """The class registered under `name`; a `ValueError` names the known ones.

    Names are case-insensitive and ignore separators (`-`, `_`, spaces), and
    a registered class's own name works too: `"nash-mtl"`, `"NashMTL"` and
    `"nash_mtl"` are one balancer.
    """
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    spellings = {canonical(k): c for k, c in _REGISTRY.items()}
    for cls in _REGISTRY.values():
        spellings.setdefault(canonical(cls.__name__), cls)
    if canonical(key) in spellings:
        return spellings[canonical(key)]
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown balancer: balancer={name!r}. Known balancers: {', '.join(sorted(_REGISTRY))}."
        )
    return _REGISTRY[key]


def available():
    """Return `{name: class}` of every registered balancer, sorted by name."""
    return dict(sorted(_REGISTRY.items()))


def example(name, num_terms, /, **options):
    """A new registered balancer, with the required arguments for `num_terms` terms filled in.

    The one table of required constructor arguments is each class's
    `required_arguments(num_terms)`; `options` override or add to it. The
    test suites and the benchmark harness build every balancer this way, so a
    new method is covered by registering it. The state is created on first
    use (or pass `num_terms=` in `options`).

    Example:

    >>> example("prior_loss", 2).prior_losses
    [1.0, 1.0]
    """
    cls = _REGISTRY[name.lower()] if isinstance(name, str) else name
    return cls(**constructor_arguments(cls, num_terms, **options))


def constructor_arguments(name, num_terms, /, **options):
    """The constructor arguments of a registered balancer for `num_terms` terms.

    The balancer's `required_arguments(num_terms)` (what it cannot be built
    without), with `options` overriding or adding to them.

    Args:
        name: a registered name (case-insensitive) or a `Balancer` subclass.
        num_terms: K, the number of loss terms.
        **options: more constructor arguments.

    Example:

    >>> constructor_arguments("prior_loss", 2, epsilon=0.0)
    {'prior_losses': [1.0, 1.0], 'epsilon': 0.0}
    """
    cls = _lookup(name) if isinstance(name, str) else name
    return {**cls.required_arguments(num_terms), **options}


def resolve(identifier, num_terms=None, options=None, seed=None):
    """A new balancer from a name and its options, as the command line and the harness give them.

    The one place where a name on its way to a training step becomes a
    balancer: the required arguments are filled in (with `num_terms`), a
    random balancer is seeded (with `seed`), and the constructor checks the
    options against its signature and their values.

    Args:
        identifier: a registered name (case-insensitive); anything else `get`
            accepts (an instance, a class, a config dict) is passed to `get`
            as is, without `options`.
        num_terms: K; when given, the arguments the balancer cannot be built
            without (`required_arguments(num_terms)`) are filled in where
            `options` does not give them. None: `options` must hold them.
        options: a dict of constructor arguments, or None.
        seed: the seed of a balancer that takes one, unless `options` holds
            one; ignored by the others (and when None).

    Returns:
        A `Balancer` instance.

    Raises:
        ValueError: for an unknown name, listing the known ones; or from the
            constructor, for an unusable option value.
        TypeError: from the constructor, for an unknown or missing argument.

    Example:

    >>> resolve("prior_loss", num_terms=3).prior_losses
    [1.0, 1.0, 1.0]
    >>> resolve("rlw", options={"name": "random"}, seed=7).name
    'random'
    """
    if not isinstance(identifier, str):
        return get(identifier)
    cls = _lookup(identifier)
    options = dict(options or {})
    if num_terms is not None:
        options = constructor_arguments(cls, num_terms, **options)
    if seed is not None and "seed" in inspect.signature(cls.__init__).parameters:
        options.setdefault("seed", seed)
    return cls(**options)


def serialize(balancer):
    """Return the Keras serialization dict of a balancer."""
    return keras.saving.serialize_keras_object(balancer)


def deserialize(config):
    """Rebuild a balancer from `serialize`'s dict (or a plain get_config dict
    with a `class_name` that names a registered balancer)."""
    class_name = config.get("class_name")
    if isinstance(class_name, str) and "config" in config:
        # A registered name ("relobralo") or a registered class's name ("ReLoBRaLo", "PriorLoss").
        by_class = {cls.__name__: cls for cls in _REGISTRY.values()}
        cls = _REGISTRY.get(class_name.lower()) or by_class.get(class_name)
        if cls is not None:
            return cls.from_config(config["config"])
    return keras.saving.deserialize_keras_object(config)


def get(identifier, **kwargs):
    """Return a balancer from a name, a config dict, a class or an instance.

    Args:
        identifier: a registered name such as `"relobralo"` (case-insensitive),
            a dict produced by `serialize`, a `Balancer` subclass, or an
            instance (returned as is).
        **kwargs: constructor arguments used with a name or a class.

    Raises:
        ValueError: for an unknown name, listing the known ones.
        TypeError: for anything else.
    """
    if isinstance(identifier, Balancer):
        if kwargs:
            raise ValueError(
                "Constructor arguments cannot be applied to a balancer instance; "
                f"received {sorted(kwargs)} with {identifier!r}."
            )
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)(**kwargs)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if inspect.isclass(identifier) and issubclass(identifier, Balancer):
        return identifier(**kwargs)
    raise TypeError(
        "Argument `balancer` must be a name, a config dict, a Balancer class or "
        f"instance; received balancer={identifier!r} (of type {type(identifier).__name__})."
    )
