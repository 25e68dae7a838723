"""Reports and figures: the Markdown tables, the files of a comparison, the figures of a run."""

import json
import os

import numpy as np


def save_history(result, path):
    """Write a run's history as a CSV that `keras-balance plot` reads; return `path`.

    One row per log record: `step`, then every recorded column (each term
    `N` and its weight `w_N`, `loss`, `rel_l2`, `mse`, ...).
    """
    import csv

    # The terms in the problem's order, then their weights, then the rest.
    first = [*result.term_names, *(f"w_{name}" for name in result.term_names)]
    columns = [name for name in [*first, *(n for n in result.history if n not in first)]
               if len(result.history.get(name, ())) == len(result.log_steps)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *columns])
        for row, step in enumerate(result.log_steps):
            writer.writerow([int(step), *(repr(float(result.history[name][row])) for name in columns)])
    return path


def save_figures(result, out_dir):
    """Write the four figures of a run and its history CSV to `out_dir`; return their paths."""
    from keras_balance import plotting

    os.makedirs(out_dir, exist_ok=True)
    tag = f"{result.pde}_{result.balancer}_seed{result.seed}"
    predict = result.model.solution.predict_field
    title = f"{result.pde}, {result.balancer}, seed {result.seed}"
    return [
        save_history(result, os.path.join(out_dir, f"{tag}_history.csv")),
        plotting.plot_losses(result.log_steps, result.history, result.term_names,
                             os.path.join(out_dir, f"{tag}_losses.png"), title=title),
        plotting.plot_weights(result.log_steps, result.history, result.term_names,
                              os.path.join(out_dir, f"{tag}_weights.png"), title=title),
        plotting.plot_solution(result.problem, predict, os.path.join(out_dir, f"{tag}_solution.png"),
                               title=title),
        plotting.plot_error(result.problem, predict, os.path.join(out_dir, f"{tag}_error.png"),
                            title=f"|u - u_exact|: {title}"),
    ]


def overhead_table(rows):
    """A Markdown table of `overhead` rows: one line per balancer, one column per K."""
    ks = sorted({r["K"] for r in rows})
    def label(row):
        every = row.get("update_every")
        return row["balancer"] if every is None else f"{row['balancer']}, update_every={every}"

    keys = list(dict.fromkeys((label(r), r["kind"], r["jacobian_mode"]) for r in rows))
    cells = {(label(r), r["kind"], r["jacobian_mode"], r["K"]): r for r in rows}
    head = "| balancer | kind | per-term gradients | " + " | ".join(f"K={k}: ratio (ms)" for k in ks) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(ks)]
    for name, kind, mode in keys:
        parts = []
        for k in ks:
            row = cells.get((name, kind, mode, k))
            parts.append("" if row is None else f"{row['ratio']:.2f} ({row['ms_per_step']:.2f})")
        lines.append(f"| {name} | {kind} | {mode or '-'} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def _status_text(statuses):
    """`ok`, or the failures with the seeds' count, e.g. `2 ok; diverged at step ~300`."""
    bad = [s for s in statuses if s != "ok"]
    if not bad:
        return "ok"
    ok = len(statuses) - len(bad)
    return "; ".join(([f"{ok} ok"] if ok else []) + list(dict.fromkeys(bad))).replace("|", "/")


def comparison_table(comparison):
    """The Markdown report of `run_comparison`: a header (command, date, machine) and the table."""
    meta, rows = comparison["meta"], comparison["aggregates"]
    lbfgs = meta.get("lbfgs_steps", 0) > 0
    timing = meta["timing"]
    if timing["method"] == "interleaved":
        how = (f"step time: the trained seed-{timing['seed']} model of each balancer, {timing['repeats']} "
               f"chunks of {timing['steps']} compiled steps on its fixed points, interleaved in random order "
               "in this process; ms / step is the median, the ratio the median of the per-chunk ratios "
               "to Sum's chunk of the same repeat")
    else:
        how = "step time: from the runs' own wall time (median over seeds), ratio to Sum's"
    lines = [
        f"# {meta['pde']}: {len(meta['balancers'])} balancers x {len(meta['seeds'])} seeds",
        "",
        f"- command: `{meta['command'] or 'run_comparison(...)'}`",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- budget: {meta['steps']} Adam steps" + (f", then up to {meta['lbfgs_steps']} L-BFGS steps "
                                                   "(frozen weights" + "".join(
                                                       f", {k} {v}" for k, v in meta.get("lbfgs_options", {}).items())
                                                   + ")" if lbfgs else "")
        + f"; seeds {', '.join(str(s) for s in meta['seeds'])}; sampling {meta['sampling']}"
        + (" (resampled every step)" if meta["resample"] else " (fixed)") + f"; XLA {'on' if meta['xla'] else 'off'}"
        + "".join(f"; {k} {v}" for k, v in meta.get("settings", {}).items()),
        "- errors against the exact solution on a 101 x 101 grid; median [min - max] over the seeds "
        "whose run finished (status ok)" + ("; final errors are after L-BFGS" if lbfgs else ""),
        "- s / 1000 steps: the run's Adam wall time (XLA compilation and the error logging included), "
        "median over seeds",
        f"- {how}",
        f"- total time: {meta['total_seconds']} s",
    ]
    if meta.get("reused_runs"):
        lines.append(f"- {meta['reused_runs']} of {len(comparison['runs'])} runs were reused from an earlier, "
                     "interrupted invocation (`--resume`): their wall times come from that invocation, and the "
                     "total time counts only this one")
    lines += [
        "",
    ]
    head = ["balancer", "kind", "ok / runs", "rel. L2 median [min - max]", "MSE median [min - max]"]
    if lbfgs:
        head.append("rel. L2 after Adam (median)")
    head += ["s / 1000 steps", "ms / step", "step-time ratio to sum", "status"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))

    def stats(value, fmt):
        return "-" if value is None else f"{value['median']:{fmt}} [{value['min']:{fmt}} - {value['max']:{fmt}}]"

    for row in rows:
        cells = [row["balancer"], row["kind"] or "-", f"{row['ok']} / {row['runs']}",
                 stats(row["rel_l2"], ".4f"), stats(row["mse"], ".3e")]
        if lbfgs:
            adam = row.get("rel_l2_adam")
            cells.append("-" if adam is None else f"{adam['median']:.4f}")
        cells += ["-" if row["seconds_per_1000_steps"] is None else f"{row['seconds_per_1000_steps']:.1f}",
                  "-" if row["ms_per_step"] is None else f"{row['ms_per_step']:.2f}",
                  "-" if row["step_time_ratio"] is None else f"{row['step_time_ratio']:.2f}",
                  _status_text(row["statuses"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(comparison, out, problem=None, maps=None):
    """Write `results.md`, `results.json`, `error_curves.png` and `error_maps.png` to `out`."""
    from keras_balance import plotting

    os.makedirs(out, exist_ok=True)
    meta = comparison["meta"]
    paths = []
    path = os.path.join(out, "results.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(comparison_table(comparison) + "\n")
    paths.append(path)
    curves = {}
    for name in meta["balancers"]:
        mine = [r for r in comparison["runs"] if r["balancer"] == name and r.get("log_steps")]
        if mine:
            curves[name] = [(r["log_steps"], r["rel_l2_history"]) for r in mine]
    if curves:
        paths.append(plotting.plot_error_curves(
            curves, os.path.join(out, "error_curves.png"),
            title=f"{meta['pde']}: rel. L2 error during Adam (median over seeds, band min - max)"))
    if maps:
        paths.append(plotting.plot_error_maps(
            problem, maps, os.path.join(out, "error_maps.png"),
            title=f"{meta['pde']}: |u - u_exact| at the end, seed {meta['error_map_seed']}",
            order=[n for n in meta["balancers"] if n in maps]))
    path = os.path.join(out, "results.json")
    payload = {"meta": meta, "runs": comparison["runs"], "aggregates": comparison["aggregates"]}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_json_safe(payload), handle, indent=1)
        handle.write("\n")
    paths.append(path)
    return paths


def _json_safe(value):
    """NaN and infinities as null (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
