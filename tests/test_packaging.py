"""The installed package: dependencies, entry point, public names."""

import importlib.metadata

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
    assert scripts.get("keras-balance") == "keras_balance.cli:main"


def test_public_names():
    for name in keras_balance.__all__:
        assert getattr(keras_balance, name) is not None
    assert keras_balance.__version__ == importlib.metadata.version("keras-balance")
