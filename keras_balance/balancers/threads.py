"""Calls to one balancer from several threads.

A balancer's step reads its state and writes the next one (and Keras'
`Variable.assign_add` is itself a read followed by a write), so two steps
that run at the same time can interleave and lose one another's updates.
In eager mode every public entry point (`__call__`, `combine`, `aggregate`,
`weigh`, `hold`, `end_epoch`) runs under `one_step_at_a_time(balancer)`: a
lock of that balancer, so concurrent calls from several threads run one
whole step after another. The lock is not taken under a `tf.distribute`
strategy, whose replicas synchronize inside a step, nor while a
`tf.function` is traced (a graph runs the ops the trace recorded; TensorFlow
does not serialize two concurrent runs of a graph).
"""

import contextlib
import threading
import weakref

import tensorflow as tf

_LOCKS = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


@contextlib.contextmanager
def one_step_at_a_time(balancer):
    """Hold the lock of `balancer` in eager mode outside a distribution strategy (re-entrant)."""
    if not tf.executing_eagerly() or tf.distribute.has_strategy():
        yield
        return
    with _GUARD:
        lock = _LOCKS.get(balancer)
        if lock is None:
            lock = _LOCKS[balancer] = threading.RLock()
    with lock:
        yield


__all__ = ["one_step_at_a_time"]
