"""Figures of a balanced training run: loss terms, weights, solution, error.

The figures are drawn on `matplotlib.figure.Figure` objects directly, without
pyplot, so importing this module leaves Matplotlib's global backend (inline
figures in a notebook, say) untouched.
"""

import numpy as np
from matplotlib.figure import Figure


def _figure(ncols=1, figsize=(6.4, 4.2)):
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_losses(steps, history, term_names, path, title=None, extra=("rel_l2",), xlabel="step"):
    """Loss terms over steps on a log scale (plus the error against the exact solution)."""
    fig, ax = _figure()
    for name in term_names:
        ax.plot(steps, np.maximum(history[name], 1e-30), label=name)
    for name in extra:
        if name in history:
            ax.plot(steps, history[name], "k--", label=f"{name} (vs exact)")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title or "Loss terms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_weights(steps, history, term_names, path, title=None, xlabel="step"):
    """The balancer's weights over steps."""
    fig, ax = _figure()
    for name in term_names:
        ax.plot(steps, history[f"w_{name}"], label=f"λ({name})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("weight")
    ax.set_title(title or "Weights")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _axis_labels(pde):
    """The names of the two coordinates: ("x", "t") for a time-dependent problem, else ("x", "y")."""
    return ("x", "t") if getattr(pde, "time_axis", None) == 1 else ("x", "y")


def _field_on_grid(pde, predict, n):
    points = pde.grid(n)
    predicted = np.asarray(predict(points)).reshape(n, n)
    exact = np.asarray(pde.exact(points[:, :1], points[:, 1:])).reshape(n, n)
    return points, predicted, exact


def plot_solution(pde, predict, path, n=101, title=None):
    """Predicted and exact solution side by side."""
    points, predicted, exact = _field_on_grid(pde, predict, n)
    (x0, x1), (y0, y1) = pde.domain
    vmin, vmax = float(exact.min()), float(exact.max())
    fig, axes = _figure(2, figsize=(10, 4.2))
    for ax, field, label in ((axes[0], predicted, "predicted"), (axes[1], exact, "exact")):
        image = ax.imshow(field, origin="lower", extent=(x0, x1, y0, y1), vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(label)
        ax.set_xlabel(_axis_labels(pde)[0])
        ax.set_ylabel(_axis_labels(pde)[1])
        fig.colorbar(image, ax=ax)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_error(pde, predict, path, n=101, title=None):
    """Map of the absolute error |u - u_exact|."""
    points, predicted, exact = _field_on_grid(pde, predict, n)
    (x0, x1), (y0, y1) = pde.domain
    fig, ax = _figure(figsize=(5.4, 4.2))
    image = ax.imshow(np.abs(predicted - exact), origin="lower", extent=(x0, x1, y0, y1), cmap="magma")
    ax.set_title(title or "|u - u_exact|")
    ax.set_xlabel(_axis_labels(pde)[0])
    ax.set_ylabel(_axis_labels(pde)[1])
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def _style(index):
    """A distinct color and line style for curve `index` (dark colors, then light ones dashed)."""
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the ten dark colors first
    return colors[order[index % 20]], ("-", "--", ":")[(index // 10) % 3]


def plot_error_curves(curves, path, title=None, band=True):
    """Relative L2 error over steps for several balancers, one line each.

    Args:
        curves: `{name: [(steps, errors), ...]}`, one pair per seed. Runs that
            stopped early (divergence) have shorter lists; the median and the
            band use the seeds that reached each step.
        path: the PNG to write.
        title: the figure's title.
        band: shade the min-max range over seeds.

    Returns:
        `path`.
    """
    fig, ax = _figure(figsize=(8.0, 5.0))
    for index, (name, runs) in enumerate(curves.items()):
        steps = max((list(s) for s, _ in runs), key=len)
        if not steps:
            continue
        table = np.full((len(runs), len(steps)), np.nan)
        for row, (_, errors) in enumerate(runs):
            errors = np.asarray(errors, dtype="float64")[: len(steps)]
            table[row, : len(errors)] = np.where(np.isfinite(errors), errors, np.nan)
        if np.all(np.isnan(table)):
            continue
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(table, axis=0)
                low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
        color, style = _style(index)
        ax.plot(steps, median, style, color=color, label=f"{name} ({len(runs)} seeds)" if len(runs) > 1 else name)
        if band and len(runs) > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("relative L2 error")
    ax.set_title(title or "Error against the exact solution")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.set_yscale("log")
        ax.legend(fontsize="small", ncol=2 if len(curves) > 8 else 1)
    else:
        ax.text(0.5, 0.5, "no finite error to draw", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_error_maps(pde, maps, path, title=None, order=None, ncols=5):
    """One panel per balancer: the map of |u - u_exact| on a regular grid.

    Args:
        pde: the problem (for the domain).
        maps: `{name: {"error": (n, n) array, "rel_l2": float, "seed": int}}`.
        path: the PNG to write.
        title: the figure's title.
        order: the names in panel order (default: the order of `maps`).
        ncols: panels per row.

    Returns:
        `path`. Each panel has its own color scale (one diverged balancer
        must not flatten the others).
    """
    names = list(order or maps)
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(3.4 * ncols, 3.0 * nrows + (0.4 if title else 0.0)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    (x0, x1), (y0, y1) = pde.domain
    for ax, name in zip(axes, names):
        entry = maps[name]
        error = np.asarray(entry["error"], dtype="float64")
        if np.all(np.isfinite(error)):
            image = ax.imshow(error, origin="lower", extent=(x0, x1, y0, y1), cmap="magma")
            fig.colorbar(image, ax=ax, format="%.1e")
            ax.set_title(f"{name}: rel. L2 {entry.get('rel_l2', float('nan')):.3g}", fontsize="small")
        else:
            ax.text(0.5, 0.5, "not finite", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{name}: diverged", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(names):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def read_history_csv(path):
    """Read a history CSV (a `BalanceHistory` file): `(steps, history, term_names, step_name)`.

    The first column is `epoch` or `step`; each term `N` has a column `N`
    (its value) and a column `w_N` (its weight); other columns (`loss`,
    `rel_l2`, ...) are kept in `history` too. Empty cells read as NaN.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no header, a first column other than `epoch`/`step`, a
            non-numeric cell, or no term columns.
    """
    import csv
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"History file not found: {path!r}.")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0]:
        raise ValueError(f"History file {path!r} is empty; expected a header row such as `step,L_f,w_L_f,...`.")
    header = [name.strip() for name in rows[0]]
    if header[0] not in ("epoch", "step"):
        raise ValueError(
            f"History file {path!r} must start with an `epoch` or `step` column; received {header[0]!r}."
        )
    columns = {name: [] for name in header}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"History file {path!r}, line {number}: {len(row)} cells; expected {len(header)}.")
        for name, cell in zip(header, row):
            cell = cell.strip()
            try:
                columns[name].append(float(cell) if cell else float("nan"))
            except ValueError:
                raise ValueError(
                    f"History file {path!r}, line {number}, column {name!r}: expected a number; received {cell!r}."
                ) from None
    terms = [name for name in header[1:] if not name.startswith("w_") and f"w_{name}" in columns]
    if not terms:
        raise ValueError(
            f"History file {path!r} has no loss-term columns: a term N needs a column `N` and a column `w_N`; "
            f"columns: {header}."
        )
    steps = columns.pop(header[0])
    return steps, columns, terms, header[0]
