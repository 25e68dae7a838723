"""Entry point of the `keras-balance` command.

It lives outside the `keras_balance` package so that it runs before the
package (and with it TensorFlow) is imported: TensorFlow reads its C++ log
level once, at import, and the command line quiets its start-up messages for
itself. Importing `keras_balance` changes no process-wide setting.
"""

import os


def main(argv=None):
    """Run `keras-balance` with TensorFlow's C++ start-up messages quieted (unless already set)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_balance.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
