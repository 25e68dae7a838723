"""The seeds of the balancers that draw random numbers (ReLoBRaLo, RLW, PCGrad, GradDrop)."""

import random

import keras
import tensorflow as tf


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


def visiting_orders(order_seed, step, num_terms):
    """K random permutations of 0..K-1, a stateless function of `(order_seed, step)`.

    Row i is the order in which term i visits the others (PCGrad, GradVac);
    the same seed and step give the same orders, so a restored run continues
    the sequence.
    """
    noise = tf.random.stateless_uniform((num_terms, num_terms), seed=tf.stack([order_seed, step]))
    return tf.argsort(noise, axis=1)


def _mix(x):
    """An integer hash of uint32 values (Wellons' "lowbias32"): each output bit depends on every input bit."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _words(value):
    """The low and high 32 bits of an int64 scalar, as uint32."""
    value = tf.cast(value, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(value, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(value, 32), 0xFFFFFFFF), tf.uint32)
    return low, high


def counter_uniform(seed, step, size, dtype):
    """`size` uniform numbers in (0, 1), a pure function of `(seed, step)` (int64 scalars).

    Counter-based: draw j hashes `(seed, step, j)` with integer arithmetic
    alone, so eager execution, `tf.function` and XLA give the same numbers
    bit for bit (TensorFlow's stateless random ops draw another stream under
    XLA). 24 random bits per draw: the values are `(n + 0.5) / 2**24`.
    """
    key = tf.constant(0x9E3779B9, tf.uint32)
    for word in (*_words(seed), *_words(step)):
        key = _mix(tf.bitwise.bitwise_xor(key, word) + tf.constant(0x632BE5AB, tf.uint32))
    counter = tf.range(size, dtype=tf.int64)
    bits = _mix(tf.bitwise.bitwise_xor(_mix(tf.cast(counter, tf.uint32) + key), key))
    top = tf.cast(tf.bitwise.right_shift(bits, 8), dtype)
    return (top + tf.constant(0.5, dtype)) * tf.constant(2.0**-24, dtype)


__all__ = ["add_seed_weight", "counter_uniform", "default_seed"]
