"""The comparison behind `keras-balance compare`: every balancer on every seed, with a journal.

`run_comparison` trains each balancer with each seed on the same points and
budget, records every finished run in a journal (`runs.jsonl`, so that an
interrupted comparison can resume), measures the step times with the
interleaved timer and aggregates the runs per balancer.
"""

import datetime
import hashlib
import json
import os
import platform
import sys
import time
import traceback

import numpy as np
import tensorflow as tf

from keras_balance import balancers as balancers_lib
from keras_balance import pde as pde_lib
from keras_balance.balancers.registry import constructor_arguments
from keras_balance.bench.progress import RunProgress
from keras_balance.bench.report import _json_safe, write_comparison
from keras_balance.bench.run import DEFAULTS, _check_positive_int, problem_name, train
from keras_balance.bench.timing import interleaved_step_times
from keras_balance.data import full_batch, full_batch_element


def balancer_names(spec):
    """Balancer names from a comma-separated string or a list; `"all"` is every registered one.

    Raises `ValueError` for an unknown name or an empty list.
    """
    if isinstance(spec, str):
        spec = [n.strip() for n in spec.split(",") if n.strip()]
    names = [str(n).lower() for n in spec]
    known = balancers_lib.available()
    if names == ["all"]:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown balancer(s) {unknown}; known balancers: {', '.join(known)} (or 'all').")
    if not names:
        raise ValueError(f"Argument `balancers` must name at least one balancer; received {spec!r}.")
    return list(dict.fromkeys(names))


def options_for(name, num_terms, balancer_options=None):
    """Constructor arguments of balancer `name` in a comparison with `num_terms` terms.

    `balancer_options` is either one dict for every balancer but Sum (which
    has no hyper-parameters), or a dict keyed by balancer names
    (`{"relobralo": {"temperature": 1.0}}`). Balancers that need arguments
    get their `required_arguments(num_terms)` when not given (see
    `keras_balance.balancers.registry.constructor_arguments`: `prior_loss` gets equal
    priors, so that it can run at all; on a PDE there is no label
    distribution).

    Returns:
        The arguments as a dict, or None when there are none.

    Example:

    >>> options_for("prior_loss", 2)
    {'prior_losses': [1.0, 1.0]}
    >>> options_for("relobralo", 2, {"relobralo": {"temperature": 1.0}})
    {'temperature': 1.0}
    """
    given = balancer_options or {}
    if given and all(key in balancers_lib.available() for key in given):
        given = given.get(name) or {}
    elif name == "sum":
        # Sum has no hyper-parameters: the baseline every comparison adds
        # runs as it is when one dict of options is meant for the others.
        given = {}
    return constructor_arguments(name, num_terms, **given) or None


def _finite_stats(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype="float64")
    if values.size == 0:
        return None
    return {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


def run_comparison(pde="helmholtz", balancers=("sum", "relobralo"), seeds=(0, 1, 2), steps=None, out=None,
                   sampling="uniform", resample=False, lbfgs_steps=None, lbfgs_options=None, balancer_options=None,
                   timing_steps=50, timing_repeats=5, jit_compile=True, verbose=1, stream=None,
                   command=None, resume=False, **overrides):
    """Train every balancer on every seed with the same data and budget; report and draw.

    Sum is always included (first) as the baseline. Runs go seed by seed,
    every balancer within a seed. A run that raises is recorded as
    `"failed: <error>"`, one whose loss or error stops being finite as
    `"diverged at step ~k"`; the comparison goes on either way.

    With `out`, every finished run is appended to `out/runs.jsonl` at once,
    with the settings that produced it, and the error map of each
    balancer's first seed is kept in `out/error_maps.npz` (keyed by those
    settings). `resume=True`
    reuses the recorded runs whose settings (problem, balancer, seed,
    budget, options, sampling, L-BFGS steps, XLA, overrides) match, so an
    interrupted comparison continues where it stopped; without it the
    journal is started afresh.

    Step time: after all runs, the trained model of the first seed of each
    balancer runs `timing_repeats` chunks of `timing_steps` compiled steps on
    its fixed point set (no input pipeline), interleaved in a fresh random
    order each repeat; `ms_per_step` is the median, `ratio` the median of the
    per-repeat ratios to Sum's chunk. `timing_repeats=0` skips it and the
    ratio is then taken from the runs' own wall times.

    Args:
        pde: `"helmholtz"` or `"kirchhoff"`.
        balancers: names, a comma-separated string, or `"all"`.
        seeds: the seeds.
        steps: Adam steps per run (default: the PDE's).
        out: a directory for `results.md`, `results.json` and the figures (None: nothing written).
        sampling, resample, lbfgs_steps: see `train`.
        lbfgs_options: more arguments of `keras_balance.lbfgs.finetune` (`dtype`, `tolerance`, ...).
        balancer_options: see `options_for`.
        timing_steps, timing_repeats: the step-time measurement.
        jit_compile: compile the training step with XLA.
        verbose: 1 shows the progress of every run on `stream` (default stderr).
        command: the command line to state in `results.md`.
        resume: reuse the matching runs recorded in `out/runs.jsonl` (needs `out`).
        **overrides: `learning_rate`, `n_interior`, `n_boundary`, `width`, `depth`, `protocol`
            (a published set-up, see `keras_balance.bench.protocols`), ...

    Returns:
        A dict: `runs` (one record per run), `aggregates` (one per balancer),
        `meta`, and `files` (paths written).
    """
    names = balancer_names(balancers)
    names = ["sum"] + [n for n in names if n != "sum"]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError(f"Argument `seeds` must hold at least one seed; received seeds={seeds!r}.")
    if steps is not None:
        steps = _check_positive_int("steps", steps)
    timing_steps = _check_positive_int("timing_steps", timing_steps)
    if isinstance(timing_repeats, bool) or not isinstance(timing_repeats, (int, np.integer)) or timing_repeats < 0:
        raise ValueError(f"Argument `timing_repeats` must be a non-negative integer; received {timing_repeats!r}.")
    protocol = overrides.get("protocol")
    if protocol is not None:
        from keras_balance.bench import protocols

        spec = protocols.get(protocol)
        if pde != spec.pde:
            raise ValueError(f"Argument `pde`: the protocol {protocol!r} trains {spec.pde!r}; received pde={pde!r}.")
        problem = pde_lib.get(pde, **spec.pde_options)
        budget = steps or spec.settings["steps"]
    else:
        problem = pde_lib.get(pde)
        budget = None
    key = problem_name(problem) or str(pde)
    budget = budget or steps or DEFAULTS.get(key, DEFAULTS["helmholtz"])["steps"]
    if lbfgs_steps is None:  # the problem's default (see `train`)
        lbfgs_steps = DEFAULTS.get(key, {}).get("lbfgs_steps", 0)
    total = len(names) * len(seeds)
    stream = stream or sys.stderr
    if resume and not out:
        raise ValueError("Argument `resume` needs `out`, the folder of the comparison to continue; received out=None.")
    journal = _Journal(out, resume) if out else None
    shared = {"pde": key, "steps": budget, "sampling": sampling, "resample": bool(resample),
              "lbfgs_steps": int(lbfgs_steps), "xla": bool(jit_compile),
              "lbfgs_options": dict(lbfgs_options or {}) if lbfgs_steps else {},
              "overrides": {k: v for k, v in sorted(overrides.items()) if v is not None}}
    runs, kept, maps = [], {}, {}
    started = time.perf_counter()
    index = reused = 0
    for seed in seeds:
        for name in names:
            index += 1
            label = f"[{index}/{total}] {name} seed {seed}"
            options = options_for(name, problem.num_terms, balancer_options)
            settings = {**shared, "balancer": name, "seed": seed, "options": options}
            earlier = journal.find(settings) if journal else None
            if earlier is not None:
                reused += 1
                runs.append(earlier)
                if seed == seeds[0] and journal.map_for(settings) is not None:
                    maps[name] = journal.map_for(settings)
                if verbose:
                    stream.write(f"{label}: reused from {journal.path} ({earlier['status']})\n")
                    stream.flush()
                continue
            progress = RunProgress(label, budget, stream=stream) if verbose else None
            kind = balancers_lib.available()[name].kind
            record = {"pde": key, "balancer": name, "kind": kind, "seed": seed, "steps": budget,
                      "sampling": sampling, "resample": bool(resample), "lbfgs_steps": int(lbfgs_steps),
                      "settings": settings}
            try:
                result = train(key, name, steps=budget, seed=seed, verbose=0, jit_compile=jit_compile,
                               balancer_options=options,
                               sampling=sampling, resample=resample, lbfgs_steps=lbfgs_steps,
                               lbfgs_options={**(lbfgs_options or {}), "verbose": 0, **(
                                   {"callback": lambda k, loss, p=progress: p.lbfgs_step(k, int(lbfgs_steps), loss)}
                                   if progress and lbfgs_steps else {})},
                               callbacks=[progress] if progress else None,
                               **overrides)
            except Exception as error:  # a failing balancer must not stop the comparison
                message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                record.update(status=f"failed: {message}", rel_l2=None, mse=None, seconds=None,
                              seconds_per_1000_steps=None, traceback=traceback.format_exc(limit=3))
                if progress:
                    progress.finish(record["status"])
                runs.append(record)
                if journal:
                    journal.add(record)
                continue
            record.update(
                status=result.status,
                rel_l2=result.rel_l2,
                mse=result.mse,
                seconds=round(result.seconds, 3),
                seconds_per_1000_steps=round(1000.0 * result.seconds / budget, 3),
                final_losses=result.final_losses,
                final_weights=result.final_weights,
                log_steps=result.log_steps,
                rel_l2_history=result.history.get("rel_l2", []),
            )
            if result.lbfgs is not None:
                record.update(rel_l2_adam=result.rel_l2_adam, mse_adam=result.mse_adam, lbfgs=result.lbfgs)
            if progress:
                extra = "" if result.lbfgs is None else (
                    f" (after Adam {result.rel_l2_adam:.3e}; L-BFGS {result.lbfgs['steps']} steps, "
                    f"{result.lbfgs['reason']})")
                progress.finish(f"{result.status}, rel. L2 {result.rel_l2:.3e}{extra}, {result.seconds:.1f} s")
            if seed == seeds[0]:
                kept[name] = (result.model, result.points)
                grid = problem.grid(101)
                predicted = np.asarray(result.model.solution.predict_field(grid), "float64").reshape(101, 101)
                exact = np.asarray(problem.exact(grid[:, :1].astype("float64"), grid[:, 1:].astype("float64")))
                maps[name] = {"seed": seed, "error": np.abs(predicted - exact.reshape(101, 101)),
                              "rel_l2": result.rel_l2}
                if journal:
                    journal.add_map(settings, maps[name])
            result.model = None
            runs.append(record)
            if journal:
                journal.add(record)

    timing = {}
    if timing_repeats and runs:
        if verbose:
            stream.write(f"timing: {timing_repeats} interleaved chunks of {timing_steps} steps per balancer\n")
            stream.flush()
        models = {}
        for name in names:
            if name not in kept:  # its runs were reused: a model of the same setup, trained one step
                try:
                    fresh = train(key, name, steps=1, seed=seeds[0], verbose=0, jit_compile=jit_compile,
                                  balancer_options=options_for(name, problem.num_terms, balancer_options),
                                  sampling=sampling, resample=resample, **overrides)
                except Exception:  # it failed in its runs too; it has no step time
                    continue
                kept[name] = (fresh.model, fresh.points)
            model, points = kept[name]
            dataset = full_batch(points)
            models[name] = (model, iter(dataset), full_batch_element(dataset))
        try:
            timing = interleaved_step_times(models, timing_steps, timing_repeats, baseline="sum", seed=seeds[0])
        except Exception as error:  # timing is a bonus; never lose the results for it
            if verbose:
                stream.write(f"timing failed: {type(error).__name__}: {error}\n")
            timing = {}
        del models
    kept.clear()

    aggregates = _aggregate(names, runs, timing)
    meta = {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores visible, "
                   f"{'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}",
        "cpu_count": os.cpu_count(),
        "pde": key,
        "balancers": names,
        "seeds": seeds,
        "steps": budget,
        "settings": {k: v for k, v in sorted(overrides.items()) if v is not None},
        "sampling": sampling,
        "resample": bool(resample),
        "lbfgs_steps": int(lbfgs_steps),
        "lbfgs_options": dict(lbfgs_options or {}) if lbfgs_steps else {},
        "xla": bool(jit_compile),
        "timing": ({"method": "interleaved", "steps": timing_steps, "repeats": timing_repeats, "seed": seeds[0]}
                   if timing else {"method": "run wall time"}),
        "error_map_seed": seeds[0],
        "total_seconds": round(time.perf_counter() - started, 1),
        "reused_runs": reused,
    }
    comparison = {"meta": meta, "runs": runs, "aggregates": aggregates, "files": []}
    if out:
        comparison["files"] = write_comparison(comparison, out, problem=problem, maps=maps)
    return comparison


class _Journal:
    """The runs of a comparison as they finish (`runs.jsonl`) and its error maps (`error_maps.npz`)."""

    def __init__(self, out, resume):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "runs.jsonl")
        self.maps_path = os.path.join(out, "error_maps.npz")
        self.records, self.maps = {}, {}
        if not resume:
            for path in (self.path, self.maps_path):
                if os.path.exists(path):
                    os.remove(path)
            return
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the interruption
                        continue
                    if isinstance(record, dict) and "settings" in record:
                        self.records[self._key(record["settings"])] = record
            # Rewrite it without the unreadable lines, so that the next run starts a line of its own.
            with open(self.path, "w", encoding="utf-8") as handle:
                for record in self.records.values():
                    handle.write(json.dumps(_json_safe(record)) + "\n")
        if os.path.exists(self.maps_path):
            with np.load(self.maps_path) as data:
                for key in {k.split("/")[0] for k in data.files}:
                    self.maps[key] = {"seed": int(data[f"{key}/seed"]), "error": data[f"{key}/error"],
                                      "rel_l2": float(data[f"{key}/rel_l2"])}

    @staticmethod
    def _key(settings):
        return json.dumps(_json_safe(settings), sort_keys=True)

    def _map_key(self, settings):
        return f"{settings['balancer']}-{hashlib.sha1(self._key(settings).encode()).hexdigest()[:12]}"

    def find(self, settings):
        return self.records.get(self._key(settings))

    def map_for(self, settings):
        """The error map recorded for the run of these settings, or None."""
        return self.maps.get(self._map_key(settings))

    def add(self, record):
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_json_safe(record)) + "\n")
        self.records[self._key(record["settings"])] = record

    def add_map(self, settings, value):
        self.maps[self._map_key(settings)] = value
        arrays = {}
        for key, item in self.maps.items():
            arrays[f"{key}/seed"] = np.asarray(item["seed"])
            arrays[f"{key}/error"] = np.asarray(item["error"], "float32")
            arrays[f"{key}/rel_l2"] = np.asarray(np.nan if item["rel_l2"] is None else item["rel_l2"], "float64")
        with open(self.maps_path, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def _aggregate(names, runs, timing):
    """One row per balancer: error and MSE statistics over its finite runs, times, statuses."""
    rows = []
    base_wall = _finite_stats([r.get("seconds_per_1000_steps") for r in runs if r["balancer"] == "sum"])
    for name in names:
        mine = [r for r in runs if r["balancer"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        wall = _finite_stats([r.get("seconds_per_1000_steps") for r in mine])
        row = {
            "balancer": name,
            "kind": mine[0]["kind"] if mine else None,
            "runs": len(mine),
            "ok": len(ok),
            "rel_l2": _finite_stats([r["rel_l2"] for r in ok]),
            "mse": _finite_stats([r["mse"] for r in ok]),
            "seconds_per_1000_steps": None if wall is None else wall["median"],
            "statuses": [r["status"] for r in mine],
        }
        if any("rel_l2_adam" in r for r in mine):
            row["rel_l2_adam"] = _finite_stats([r.get("rel_l2_adam") for r in ok])
            row["mse_adam"] = _finite_stats([r.get("mse_adam") for r in ok])
        if name in timing:
            row["ms_per_step"] = timing[name]["ms_per_step"]
            row["step_time_ratio"] = timing[name]["ratio"]
        elif not timing and wall is not None and base_wall is not None:
            row["ms_per_step"] = wall["median"]
            row["step_time_ratio"] = wall["median"] / base_wall["median"]
        else:
            row["ms_per_step"] = row["step_time_ratio"] = None
        rows.append(row)
    return rows
