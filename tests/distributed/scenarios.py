"""Training runs under tf.distribute, started as separate processes by the tests.

A process configures its devices before TensorFlow starts, so each scenario
runs in a fresh interpreter:

    python scenarios.py mirrored OUT.json NAME[,NAME...]
        For every balancer NAME: the same PINN trained on the same global
        batch with one replica and with MirroredStrategy on two logical CPU
        devices. Writes both histories, the balancer variables of every
        replica and the trained parameters.
    python scenarios.py worker OUT.json NAME[,NAME...]
        One worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by
        the caller), or with no TF_CONFIG, the one-replica reference run.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

STEPS = 4
GLOBAL_BATCH = 96


def _logical_cpus(count):
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)


def _balancer(name, num_terms):
    """The registered balancer `name` for `num_terms` terms, seeded where it draws random numbers."""
    import inspect

    from keras_balance import balancers

    # LR annealing and NTK weighting hold their weights between updates: update within the run.
    options = {"update_every": 2} if name in ("lr_annealing", "ntk") else {}
    if "seed" in inspect.signature(balancers.available()[name].__init__).parameters:
        options["seed"] = 0
    return balancers.example(name, num_terms, **options)


def _train(strategy, name, route):
    import keras

    import keras_balance as kb

    # "weighted": pointwise (RBA on every term) and causal weights inside a time-dependent problem's terms.
    pde = kb.pde.BurgersPDE() if route == "weighted" else kb.HelmholtzPDE()
    points = pde.sample(64, 32, seed=0)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        network = kb.build_pinn(pde, width=8, depth=2, seed=0)
        if route == "loss":
            # The plain Keras route: compile(loss=...) on the network itself.
            loss = kb.BalancedLoss(pde, _balancer(name, pde.num_terms))
            network.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
            model, balancer = network, loss.balancer
        else:
            mode = "features" if route == "features" else "loop"
            balancer = _balancer(name, pde.num_terms)
            weightings = {}
            if route == "weighted":
                weightings = {"pointwise": kb.pinn.RBA(eta=0.01, gamma=0.9, terms=None),
                              "causal": kb.pinn.CausalWeighting(chunks=3, epsilon=[0.01, 1.0])}
            model = kb.PINNModel(pde, network, balancer=balancer, **weightings)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), jacobian_mode=mode)
    history = model.fit(points, points, batch_size=GLOBAL_BATCH, epochs=STEPS, verbose=0, shuffle=False)
    state = list(balancer.variables) + (model.step_state_variables() if route == "weighted" else [])
    replicas = [
        [np.asarray(r).tolist() for r in strategy.experimental_local_results(v.value)]
        for v in state
    ]
    return {
        "history": {k: [float(x) for x in v] for k, v in history.history.items()},
        "balancer": {v.path: r for v, r in zip(state, replicas)},
        "parameters": [np.asarray(v.numpy()).tolist() for v in network.trainable_variables],
        "replicas": strategy.num_replicas_in_sync,
    }


def _runs(names):
    for item in names.split(","):
        name, _, route = item.partition(":")
        yield item, name, route or "model"


def mirrored(out, names):
    _logical_cpus(2)
    results = {}
    # One strategy object for all runs: collective instances of a second
    # MirroredStrategy in the same process would collide with the first's.
    single = tf.distribute.OneDeviceStrategy("/cpu:0")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for item, name, route in _runs(names):
        one = _train(single, name, route)
        two = _train(mirrored, name, route)
        results[item] = {"one": one, "two": two}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


def worker(out, names):
    if os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    results = {item: _train(strategy, name, route) for item, name, route in _runs(names)}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    command, out, names = sys.argv[1:4]
    {"mirrored": mirrored, "worker": worker}[command](out, names)
