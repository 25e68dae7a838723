"""Fixtures shared by the test suites.

Plain helpers (balancers built from the registry, test data) live in
`tests/helpers.py`; this file's folder is on the import path of every test
module, so `from helpers import ...` works from any subfolder.
"""

import keras
import pytest

from keras_balance.balancers import registry


@pytest.fixture
def isolated_registry(monkeypatch):
    """Let a test register names without leaking them into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture
def floatx64():
    """Keras in float64 for one test: floatx and the global dtype policy, restored afterwards.

    A program sets floatx before it builds any layer; a test process has built
    layers already, whose global dtype policy must follow.
    """
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy().name
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)
