"""Balancing under tf.distribute: 2 replicas give the 1-replica run on the same global batch.

Each scenario runs in its own interpreter (tests/distributed/scenarios.py),
because logical devices and multi-worker clusters must be configured before
TensorFlow starts. Every subprocess is bounded in time and killed on failure.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_balance import balancers

SCRIPT = Path(__file__).resolve().parent / "distributed" / "scenarios.py"
TIMEOUT_S = 420

# One of each mechanism: the plain Keras loss route (ReLoBRaLo's random
# draws, stop-gradient weights), trainable balancer parameters, a
# differentiable total, per-term Jacobians (parameters and representation),
# an update-every-n schedule, and pointwise (RBA) and causal weights inside
# the terms. GradNorm's own optimizer runs in the multi-worker test and with
# `-m slow`.
DEFAULT = ["relobralo:loss", "uncertainty", "generalized_mean", "mgda", "upgrad:features", "lr_annealing",
           "pcgrad:weighted"]
EVERY = [name for name in balancers.available()] + [
    f"{name}:loss" for name, cls in balancers.available().items() if cls.kind == balancers.LOSS_LEVEL
    and name not in ("uncertainty", "imtl_l", "ntk")  # trainable parameters, NTK traces: BalancedModel only
] + [f"{name}:features" for name, cls in balancers.available().items() if cls.kind == balancers.GRADIENT_LEVEL]


def _env():
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _run(args, env, timeout=TIMEOUT_S):
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, completed.stderr[-4000:]


def _assert_same_run(one, two, where, rtol=2e-5):
    """The 2-replica run equals the 1-replica run, and every replica holds the same balancer state."""
    assert set(one["history"]) == set(two["history"])
    for key, values in one["history"].items():
        np.testing.assert_allclose(two["history"][key], values, rtol=rtol, atol=1e-6, err_msg=f"{where}: {key}")
    for path, replicas in two["balancer"].items():
        for replica in replicas[1:]:
            np.testing.assert_array_equal(replica, replicas[0], err_msg=f"{where}: replicas differ in {path}")
        np.testing.assert_allclose(
            np.asarray(replicas[0], dtype="float64"), np.asarray(one["balancer"][path][0], dtype="float64"),
            rtol=rtol, atol=1e-6, err_msg=f"{where}: {path}",
        )
    for a, b in zip(one["parameters"], two["parameters"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=f"{where}: parameters")


def _mirrored(names, tmp_path, rtol=2e-5):
    out = tmp_path / "mirrored.json"
    _run(["mirrored", str(out), ",".join(names)], _env())
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(names)
    for name, pair in results.items():
        assert pair["one"]["replicas"] == 1 and pair["two"]["replicas"] == 2
        _assert_same_run(pair["one"], pair["two"], name, rtol=rtol)


def test_mirrored_two_devices_match_one(tmp_path):
    _mirrored(DEFAULT, tmp_path)


@pytest.mark.slow
def test_mirrored_pointwise_and_causal_weights_match_one(tmp_path):
    # RBA on every term and causal weights with a schedule, under a loss-level balancer (the default
    # test runs them under a gradient-level one).
    _mirrored(["relobralo:weighted", "sum:weighted"], tmp_path)


@pytest.mark.slow
def test_mirrored_every_balancer(tmp_path):
    # SoftAdapt weighs differences of consecutive losses, which turns the
    # 1e-7 round-off of a two-device mean into about 5e-5 in its weights.
    _mirrored(EVERY, tmp_path, rtol=1e-4)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.multiworker
def test_multi_worker_two_processes_match_one(tmp_path):
    """Two worker processes on 127.0.0.1 (TF_CONFIG), MultiWorkerMirroredStrategy, one CPU each."""
    names = ["relobralo", "mgda", "upgrad:features", "gradnorm", "lr_annealing"]
    reference = tmp_path / "reference.json"
    _run(["worker", str(reference), ",".join(names)], _env())
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    try:
        for index, out in enumerate(outs):
            env = _env()
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            processes.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), "worker", str(out), ",".join(names)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))
        errors = []
        for process in processes:
            _, stderr = process.communicate(timeout=TIMEOUT_S)
            if process.returncode != 0:
                errors.append(stderr[-4000:])
        assert not errors, "\n\n".join(errors)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    one = json.loads(reference.read_text())
    for out in outs:
        run = json.loads(out.read_text())
        for name in names:
            assert run[name]["replicas"] == 2
            _assert_same_run(one[name], run[name], f"{out.name} {name}")
