"""The installed package: dependencies, entry point, public names."""

import importlib.metadata
import os
import subprocess
import sys

import keras
import tensorflow as tf

import keras_balance


def test_dependencies_import_together():
    import tensorflow_probability as tfp  # needs tf-keras at import time

    assert keras.__version__.split(".")[0] == "3"
    assert tuple(int(v) for v in tf.__version__.split(".")[:2]) >= (2, 16)
    assert tfp.distributions.Normal(0.0, 1.0).mean().numpy() == 0.0


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("keras-balance") == "keras_balance_cli:main"


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_package_changes_no_process_setting():
    code = ("import os; before = dict(os.environ); import keras_balance; "
            "print(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)))")
    assert _run(code) == "[]"


def test_the_command_quiets_tensorflow_for_itself():
    code = ("import os, keras_balance_cli; keras_balance_cli.main(['list']); "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    assert _run(code) == "2"


def test_public_names():
    for name in keras_balance.__all__:
        assert getattr(keras_balance, name) is not None
    assert keras_balance.__version__ == importlib.metadata.version("keras-balance")
