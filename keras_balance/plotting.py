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


def plot_losses(steps, history, term_names, path, title=None, extra=("rel_l2",)):
    """Loss terms over steps on a log scale (plus the error against the exact solution)."""
    fig, ax = _figure()
    for name in term_names:
        ax.plot(steps, np.maximum(history[name], 1e-30), label=name)
    for name in extra:
        if name in history:
            ax.plot(steps, history[name], "k--", label=f"{name} (vs exact)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "Loss terms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_weights(steps, history, term_names, path, title=None):
    """The balancer's weights over steps."""
    fig, ax = _figure()
    for name in term_names:
        ax.plot(steps, history[f"w_{name}"], label=f"λ({name})")
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    ax.set_title(title or "Weights")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


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
        ax.set_xlabel("x")
        ax.set_ylabel("y")
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
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)
