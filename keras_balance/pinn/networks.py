"""Networks for physics-informed training."""

import keras


def mlp(input_dim=2, output_dim=1, width=50, depth=4, activation="tanh", seed=None, name="mlp"):
    """A fully connected network: `depth` hidden layers of `width` units.

    Glorot-normal initialization (seeded) and zero biases, the usual choice for
    tanh PINNs. Returns a functional `keras.Model`.
    """
    for arg, value in (("input_dim", input_dim), ("output_dim", output_dim), ("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Argument `{arg}` must be a positive integer; received {arg}={value!r}.")
    inputs = keras.Input(shape=(input_dim,), name="coordinates")
    hidden = inputs
    for i in range(depth):
        init_seed = None if seed is None else seed + i
        hidden = keras.layers.Dense(
            width,
            activation=activation,
            kernel_initializer=keras.initializers.GlorotNormal(seed=init_seed),
            name=f"hidden_{i}",
        )(hidden)
    out_seed = None if seed is None else seed + depth
    outputs = keras.layers.Dense(
        output_dim,
        kernel_initializer=keras.initializers.GlorotNormal(seed=out_seed),
        name="output",
    )(hidden)
    return keras.Model(inputs, outputs, name=name)
