"""Checks that `keras-balance` makes before any training starts.

Each check either returns or exits with a `keras-balance: error: ...` message
that names the option, what it expects and what it received: an unusable
balancer (unknown name, bad options, a number of terms that is not the
problem's) and an output path that cannot be written.
"""

import os


def _error(message):
    """The exit of a failed check: `raise _error(...)` prints `keras-balance: error: ...`, status 1."""
    return SystemExit(f"keras-balance: error: {message}")


def check_balancer(name, options=None, pde=None):
    """Exit with a clear message for an unknown name or unusable options.

    Builds the balancer as the harness will (`keras_balance.balancers.registry.resolve`);
    with `pde` (a problem name), also for that problem's number of terms.
    """
    from keras_balance import balancers
    from keras_balance.balancers.registry import resolve

    if name.lower() not in balancers.available():
        raise _error(f"unknown balancer {name!r}; known balancers: {', '.join(balancers.available())}")
    problem = None
    if pde is not None:
        from keras_balance import pde as pde_lib

        problem = pde_lib.get(pde)
        given = (options or {}).get("num_terms", problem.num_terms)
        if given != problem.num_terms:
            raise _error(f"--options: num_terms must be the number of loss terms of {pde}, "
                         f"{problem.num_terms} ({', '.join(problem.term_names)}), or be left out; "
                         f"received num_terms={given!r}")
    try:
        balancer = resolve(name, options=options)
    except (TypeError, ValueError) as error:
        raise _error(f"balancer {name!r} with --options {options or {}}: {error}") from None
    if problem is not None:
        try:
            balancer.build_for(problem.num_terms)
        except ValueError:
            raise _error(f"balancer {name!r} with --options {options or {}} is set up for "
                         f"{balancer.num_terms} loss terms; expected the {problem.num_terms} of {pde} "
                         f"({', '.join(problem.term_names)})") from None


def balancer_list(spec, pde=None, options=None):
    """The names of `--balancers` ("all" or a comma-separated list), each checked as `check_balancer` does.

    With `pde`, each balancer is checked with the options a comparison on that
    problem gives it (`keras_balance.bench.options_for`).
    """
    from keras_balance import bench
    from keras_balance import pde as pde_lib

    try:
        names = bench.balancer_names(spec)
    except ValueError as error:
        raise _error(f"--balancers: {error}") from None
    num_terms = None if pde is None else pde_lib.get(pde).num_terms
    for name in names:
        check_balancer(name, None if pde is None else bench.options_for(name, num_terms, options), pde)
    return names


def _nearest_existing(path):
    """`path` itself or its closest ancestor that exists."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_creatable(option, path, directory):
    """Exit unless `directory` exists as a writable folder or can be created."""
    if os.path.isdir(directory):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise _error(f"{option}: expected a writable location; received {path!r}, "
                         f"whose folder {directory!r} is not writable")
        return
    ancestor = _nearest_existing(directory)
    if not os.path.isdir(ancestor):
        raise _error(f"{option}: expected a path whose folders can be created; received {path!r}, "
                     f"but {ancestor!r} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise _error(f"{option}: expected a path whose folders can be created; received {path!r}, "
                     f"but {ancestor!r} is not writable")


def check_output_file(option, path):
    """Exit unless a file can be written at `path` (an existing writable file, or a new one in a
    folder that exists and is writable or can be created)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise _error(f"{option}: expected a file path; received {path!r}, which is a folder")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise _error(f"{option}: expected a writable file; received {path!r}, which is read-only")
        return
    _check_creatable(option, path, os.path.dirname(os.path.abspath(path)))


def check_output_dir(option, path):
    """Exit unless `path` is a writable folder or a folder that can be created."""
    if path is None:
        return
    if os.path.lexists(path) and not os.path.isdir(path):
        raise _error(f"{option}: expected a folder; received {path!r}, which is a file")
    _check_creatable(option, path, os.path.abspath(path))


__all__ = ["check_balancer", "balancer_list", "check_output_file", "check_output_dir"]
