"""keras_balance: balance the terms of a multi-part loss in Keras 3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_balance import balancers  # noqa: E402

__version__ = "0.1.0"

__all__ = ["balancers", "__version__"]
