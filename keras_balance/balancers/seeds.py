"""The seeds of the balancers that draw random numbers (ReLoBRaLo, RLW, PCGrad)."""

import random

import keras


def default_seed():
    """A seed for a balancer built without one.

    Drawn from Python's `random` module, which `keras.utils.set_random_seed`
    seeds (as Keras' own unseeded `keras.random.SeedGenerator` does): after
    `keras.utils.set_random_seed(n)` a program builds the same balancers with
    the same seeds in every process, and two balancers built one after the
    other get different seeds. Without a global seed, Python seeds `random`
    from the operating system's entropy, so each process draws its own.
    """
    return random.randrange(2**31)


def add_seed_weight(balancer, seed, name):
    """Create the int64 scalar variable `name` of `balancer`, holding the seed of its draws.

    A draw is a stateless function of this variable and of a step counter, so
    the random sequence is saved and restored with the balancer's variables.
    `seed=None` takes `default_seed()`, once, when the state is built.
    """
    if seed is None:
        seed = default_seed()
    initializer = keras.initializers.Constant(int(seed))
    return balancer.add_weight(shape=(), initializer=initializer, dtype="int64", trainable=False, name=name)


__all__ = ["add_seed_weight", "default_seed"]
