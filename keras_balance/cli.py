"""`keras-balance`: train, compare, time, plot and list loss balancers from the command line.

    keras-balance train helmholtz --balancer relobralo --steps 5000 --out runs/ --json run.json
    keras-balance train kirchhoff --sampling sobol --resample --lbfgs-steps 500
    keras-balance compare helmholtz --balancers all --seeds 3 --out results/helmholtz
    keras-balance compare kirchhoff --balancers sum,relobralo,mgda --seeds 0,1,2 --steps 2000
    keras-balance compare multitask --balancers all --seeds 3 --out results/multitask
    keras-balance speed helmholtz --balancers sum,relobralo
    keras-balance bench overhead --ks 2,3,5
    keras-balance plot run.csv --out figures/
    keras-balance list

`train` runs one balancer on one PDE and prints the final terms, weights and
error. `compare` runs several balancers on the same seeds, points and budget
(Sum always included as the baseline) and writes `results.md` (a Markdown
table: median and range of the error over seeds, wall time, step-time ratio to
Sum), `results.json` (one record per run and the aggregates) and two figures
(error over steps, final error maps); a balancer that fails or diverges is
reported as such and the comparison goes on. Both take `--sampling
uniform|sobol|halton`, `--resample` (fresh points every step) and
`--lbfgs-steps N` (L-BFGS with frozen weights after Adam), `--pointwise
rba|sa` (pointwise weights inside the residual) and, for the
time-dependent problems, `--causal M [--causal-epsilon EPS[,EPS...]]`
(causal weights on M time chunks), `--adaptive rad|rar-d
[--adaptive-every N]` (residual-based adaptive sampling). The problem
`multitask` (MultiDigits, `keras_balance.bench.multitask`) trains a
three-task network on pairs of scikit-learn's digits instead of a PINN; its
budget is `--epochs`, and `compare multitask` scores every run with each
task's test metric and the multi-task metric Delta_m%. `plot` draws the
loss-term and weight figures from a history CSV.
"""

import argparse
import json
import math
import os
import shlex
import sys

from keras_balance.cli_checks import balancer_list, check_balancer, check_output_dir, check_output_file


def _number(text, convert, low, expected):
    """Parse `text` with `convert`; it must be > 0 (`low="positive"`) or >= 0 (`low="non-negative"`)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}") from None
    if not (value > 0 if low == "positive" else value >= 0):
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return value


def _positive_int(text):
    return _number(text, int, "positive", "a positive integer")


def _positive_float(text):
    return _number(text, float, "positive", "a positive number")


def _seed_list(text):
    """`--seeds`: a count N (seeds 0..N-1) or a comma-separated list (`0,1,2`; `7,` is seed 7 alone)."""
    text = text.strip()
    if "," not in text:
        try:
            count = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number of seeds (e.g. 3) or comma-separated seeds (e.g. 0,1,2), received {text!r}"
            ) from None
        if count < 1:
            raise argparse.ArgumentTypeError(
                f"expected a positive number of seeds, received {text!r} (for seed {count} alone write '{count},')"
            )
        return list(range(count))
    seeds = _int_list(text)
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected at least one seed, received {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, received {text!r}")
    return seeds


def _non_negative_int(text):
    return _number(text, int, "non-negative", "an integer >= 0")


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, received {text!r}") from None


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, received {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, received {text!r}")
    return value


def _add_training_options(parser):
    parser.add_argument("pde", choices=["helmholtz", "kirchhoff", "burgers", "allen_cahn", "poisson", "advection",
                                        "multitask"],
                        help="the problem to solve: a PDE, or multitask (MultiDigits: pairs of scikit-learn's "
                             "8 x 8 digits, two classification tasks and a regression)")
    parser.add_argument("--protocol", choices=["wang2021", "bischof2021"], default=None,
                        help="a published set-up: wang2021 (Helmholtz as Wang, Teng & Perdikaris 2021 train it) or "
                             "bischof2021 (the Kirchhoff plate of the ReLoBRaLo authors' repository); sets the "
                             "terms, network, points, schedule and budget, and the options given here override it")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="Adam steps (default: 1000 for burgers, 2000 for kirchhoff, 5000 for the other PDEs; "
                             "multitask takes --epochs)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="multitask only: passes over the 6000 training pairs, 30 steps each (default 20)")
    parser.add_argument("--learning-rate", type=_positive_float, default=None,
                        help="Adam learning rate (default 1e-3); the initial one of a decaying --lr-schedule")
    parser.add_argument("--lr-schedule", choices=["constant", "exponential", "cosine"], default="constant",
                        help="Adam's learning rate over the steps: constant (default), or an exponential or "
                             "cosine decay to --final-learning-rate at the last step")
    parser.add_argument("--final-learning-rate", type=_positive_float, default=None, metavar="LR",
                        help="the learning rate at the last step of a decaying --lr-schedule "
                             "(default: the learning rate / 100)")
    parser.add_argument("--width", type=_positive_int, default=None,
                        help="units per hidden layer (default 50)")
    parser.add_argument("--depth", type=_positive_int, default=None, help="hidden layers (default 4)")
    parser.add_argument("--interior-points", type=_positive_int, default=None, metavar="N",
                        help="collocation points inside the domain (default 1024; 2048 for burgers, "
                             "allen_cahn and advection)")
    parser.add_argument("--boundary-points", type=_positive_int, default=None, metavar="N",
                        help="collocation points on the boundary, and at t = 0 for a time-dependent problem "
                             "(default 256; 384 for burgers)")
    parser.add_argument("--no-jit", action="store_true",
                        help="do not compile the training step with XLA (multitask trains without XLA anyway)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the JSON summary to PATH (train: one object; compare: a list, one per run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--options", type=_json_object, default=None, metavar="JSON",
                        help="balancer constructor arguments as a JSON object, "
                             "e.g. '{\"temperature\": 1.0}' or '{\"prior_losses\": [100, 1]}'")
    parser.add_argument("--sampling", choices=["uniform", "sobol", "halton"], default="uniform",
                        help="collocation points: uniform random (default), or the Sobol or Halton "
                             "low-discrepancy sequence (seeded random shift)")
    parser.add_argument("--resample", action="store_true",
                        help="a fresh set of collocation points every step (default: one fixed set)")
    parser.add_argument("--pointwise", choices=["none", "rba", "sa"], default="none",
                        help="pointwise weights inside the terms: residual-based attention (rba) or "
                             "self-adaptive weights (sa), on the residual (default none)")
    parser.add_argument("--causal", type=_non_negative_int, default=0, metavar="M",
                        help="causal weights on M time chunks of the residual (time-dependent problems; default 0: off)")
    parser.add_argument("--causal-epsilon", type=_epsilon_schedule, default=None, metavar="EPS[,EPS...]",
                        help="the causality parameter, or an increasing schedule (default 1.0)")
    parser.add_argument("--adaptive", choices=["rad", "rar-d"], default=None,
                        help="residual-based adaptive sampling of the interior points (RAD redraws them, RAR-D "
                             "adds to them; default: fixed points)")
    parser.add_argument("--adaptive-every", type=_positive_int, default=None, metavar="N",
                        help="steps between two redraws of --adaptive (default 1000)")
    parser.add_argument("--lbfgs-steps", type=_non_negative_int, default=None, metavar="N",
                        help="after Adam, up to N L-BFGS iterations on the balanced loss with the "
                             "balancer's last weights frozen (default 0: none; 1500 for burgers)")
    parser.add_argument("--lbfgs-tolerance", type=_positive_float, default=None, metavar="TOL",
                        help="L-BFGS stops when the largest gradient entry is at most TOL (default 1e-9; "
                             "problems with tiny losses, such as the Kirchhoff plate, need less)")
    parser.add_argument("--lbfgs-dtype", choices=["float32", "float64"], default=None,
                        help="precision of the L-BFGS phase: float32, the network's own (default), or "
                             "float64, on a float64 copy of the network (slower per step, but it does "
                             "not stall at the float32 precision of the loss)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-balance",
        description="Balance the terms of a multi-part loss: train PINNs with loss balancers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a PINN on a PDE with one balancer")
    _add_training_options(train)
    train.add_argument("--balancer", default="relobralo", help="balancer name (see `keras-balance list`)")
    train.add_argument("--seed", type=int, default=0, help="seed of points, network and balancer")
    train.add_argument("--out", metavar="DIR", default=None,
                       help="write the figures (loss terms, weights, solution, error map) to DIR")

    compare = sub.add_parser(
        "compare", help="train several balancers with the same seeds, points and budget",
        description="Train every balancer on every seed with the same collocation points and budget "
                    "(Sum always runs, as the baseline), then print the table and, with --out, write "
                    "results.md, results.json, error_curves.png and error_maps.png. A failing or "
                    "diverging balancer is reported with its status; the others go on.")
    _add_training_options(compare)
    compare.add_argument("--balancers", default="sum,relobralo",
                         help="comma-separated balancer names, or 'all' for every registered balancer "
                              "(default sum,relobralo)")
    compare.add_argument("--seeds", type=_seed_list, default=[0], metavar="N|LIST",
                         help="a number N runs seeds 0..N-1 (e.g. '3' is 0,1,2); a comma-separated list "
                              "runs those seeds (e.g. '0,1,2'; '7,' is seed 7 alone). Default: seed 0")
    compare.add_argument("--out", metavar="DIR", default=None,
                         help="write results.md, results.json and the figures to DIR")
    compare.add_argument("--resume", action="store_true",
                         help="continue an interrupted comparison: reuse the runs recorded in "
                              "DIR/runs.jsonl with the same settings (needs --out)")
    compare.add_argument("--timing-steps", type=_positive_int, default=None,
                         help="steps per timed chunk of the step-time ratio (default 50; PDEs only)")
    compare.add_argument("--timing-repeats", type=_non_negative_int, default=None,
                         help="timed chunks per balancer, interleaved (default 5; 0: ratio from the "
                              "runs' wall time; PDEs only)")
    compare.add_argument("--baseline", choices=["single_task", "sum"], default=None,
                         help="multitask only: the baseline of the multi-task metric Delta_m%%, one network per "
                              "task trained alone on the same seeds (single_task, the default) or Sum")

    speed = sub.add_parser("speed", help="median time per training step, as a ratio to a baseline")
    speed.add_argument("pde", choices=["helmholtz", "kirchhoff", "burgers", "allen_cahn", "poisson", "advection"],
                       help="the problem")
    speed.add_argument("--balancers", default="sum,relobralo", help="comma-separated balancer names")
    speed.add_argument("--baseline", default="sum",
                       help="the balancer the ratios refer to, or hand-written (default sum)")
    speed.add_argument("--steps", type=_positive_int, default=200, help="steps per timed chunk (default 200)")
    speed.add_argument("--repeats", type=_positive_int, default=5, help="timed chunks per balancer (default 5)")
    speed.add_argument("--no-jit", action="store_true", help="do not compile the training step with XLA")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    over = bench_sub.add_parser(
        "overhead", help="step time of every balancer on Helmholtz with K = 2, 3, 5 terms, as a ratio to Sum"
    )
    over.add_argument("--ks", type=_int_list, default=[2, 3, 5], help="numbers of terms (from 2, 3, 5, 9, 17)")
    over.add_argument("--balancers", default=None, help="comma-separated names (default: all)")
    over.add_argument("--modes", default="loop",
                      help="per-term gradient modes of gradient-level balancers: loop, vectorized, features")
    over.add_argument("--steps", type=_positive_int, default=100, help="steps per timed chunk (default 100)")
    over.add_argument("--repeats", type=_positive_int, default=5, help="timed chunks per model (default 5)")
    over.add_argument("--no-jit", action="store_true", help="do not compile the training step with XLA")
    over.add_argument("--update-every", type=_positive_int, default=None, metavar="N",
                      help="also time every gradient-level balancer that can hold its weights with "
                           "update_every=N (amortized over each chunk)")
    over.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")

    paths = bench_sub.add_parser(
        "paths", help="step time of every documented training path, as a ratio to a hand-written loop"
    )
    paths.add_argument("pde", nargs="?", default="helmholtz", choices=["helmholtz", "kirchhoff"],
                       help="the problem (default helmholtz)")
    paths.add_argument("--balancer", default="sum", help="the loss-level balancer of every path (default sum)")
    paths.add_argument("--steps", type=_positive_int, default=200, help="steps per timed chunk (default 200)")
    paths.add_argument("--repeats", type=_positive_int, default=7, help="timed chunks per path (default 7)")
    paths.add_argument("--no-jit", action="store_true", help="do not compile the training steps with XLA")
    paths.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")

    scale = bench_sub.add_parser(
        "scaling", help="step time as the collocation points (1k to 64k) and the terms (K = 2 to 17) grow"
    )
    scale.add_argument("--points", type=_int_list, default=[1024, 4096, 16384, 65536],
                       help="interior points of the first sweep, with a quarter as many on the boundary "
                            "(default 1024,4096,16384,65536)")
    scale.add_argument("--ks", type=_int_list, default=[2, 5, 9, 17],
                       help="numbers of terms of the second sweep, from 2, 3, 5, 9, 17 (default 2,5,9,17)")
    scale.add_argument("--balancers", default="sum,relobralo,mgda,pcgrad",
                       help="comma-separated names (default sum,relobralo,mgda,pcgrad; Sum always runs)")
    scale.add_argument("--steps", type=_positive_int, default=10, help="steps per timed chunk (default 10)")
    scale.add_argument("--repeats", type=_positive_int, default=3, help="timed chunks per model (default 3)")
    scale.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")

    memory = bench_sub.add_parser(
        "memory", help="peak memory of the training steps per balancer and Jacobian mode (one process each)"
    )
    memory.add_argument("pde", nargs="?", default="helmholtz", help="a problem name (default helmholtz)")
    memory.add_argument("--options", default=None, metavar="JSON",
                        help='the problem\'s constructor arguments, e.g. \'{"boundary": "per_edge"}\'')
    memory.add_argument("--balancers", default="sum,relobralo,mgda,pcgrad",
                        help="comma-separated names (default sum,relobralo,mgda,pcgrad; Sum always runs)")
    memory.add_argument("--modes", default="loop,vectorized",
                        help="per-term gradient modes of gradient-level balancers (default loop,vectorized)")
    memory.add_argument("--interior-points", type=_positive_int, default=None, metavar="N",
                        help="interior points, with a quarter as many on the boundary (default 1024)")
    memory.add_argument("--steps", type=_positive_int, default=20, help="training steps measured (default 20)")
    memory.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")

    plot = sub.add_parser("plot", help="draw the loss-term and weight figures from a history CSV")
    plot.add_argument("csv", help="a history CSV: first column epoch or step, then N and w_N per term N")
    plot.add_argument("--out", metavar="DIR", default=".", help="where to write the PNG files (default .)")
    plot.add_argument("--title", default=None, help="figure title (default: the file name)")

    sub.add_parser("list", help="list the balancers with their kind and a summary")
    return parser


def _write_json(path, payload):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")


def _print_run(result, out=None):
    out = out or sys.stdout
    print(f"\n{result.pde} with {result.balancer} (seed {result.seed}, {result.steps} steps, "
          f"{result.seconds:.1f} s)", file=out)
    width = max(len(n) for n in result.term_names)
    print(f"  {'term'.ljust(width)}  {'loss':>12}  {'weight':>10}", file=out)
    for name in result.term_names:
        print(f"  {name.ljust(width)}  {result.final_losses[name]:12.4e}  "
              f"{result.final_weights[name]:10.4f}", file=out)
    if result.lbfgs is not None:
        lbfgs = result.lbfgs
        print(f"  after Adam:        relative L2 error {result.rel_l2_adam:.4e}, MSE {result.mse_adam:.4e}",
              file=out)
        print(f"  L-BFGS:            {lbfgs['steps']} steps, loss {lbfgs['initial_loss']:.4e} -> "
              f"{lbfgs['final_loss']:.4e} ({lbfgs['reason']}, {lbfgs.get('dtype') or 'float32'}, "
              f"{lbfgs['seconds']:.1f} s)", file=out)
    print(f"  relative L2 error: {result.rel_l2:.4e}", file=out)
    print(f"  MSE:               {result.mse:.4e}", file=out)
    if result.status != "ok":
        print(f"  status:            {result.status}", file=out)


def cmd_train(args):
    from keras_balance import bench

    check_output_file("--json", args.json)
    check_output_dir("--out", args.out)
    if args.pde == "multitask":
        return _train_multitask(args)
    _refuse_multitask_options(args)
    check_balancer(args.balancer, args.options, pde=args.pde)
    result = bench.train(
        args.pde,
        args.balancer,
        balancer_options=args.options,
        steps=args.steps,
        seed=args.seed,
        jit_compile=not args.no_jit,
        verbose=0 if args.quiet else 1,
        sampling=args.sampling,
        resample=args.resample,
        lbfgs_steps=args.lbfgs_steps,
        lbfgs_options=_lbfgs_options(args),
        **_training_settings(args),
    )
    _print_run(result)
    if args.out:
        for path in bench.save_figures(result, args.out):
            print(f"  figure: {path}")
    if args.json:
        _write_json(args.json, result.summary())
        print(f"  summary: {args.json}")
    return 0


def _epsilon_schedule(text):
    """`1.0` or `0.01,0.1,1`: a positive number, or an increasing list of them."""
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(v > 0 and math.isfinite(v) for v in values) or any(
            a >= b for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"expected a positive number or an increasing list of them; received {text!r}")
    return values[0] if len(values) == 1 else values


def _training_settings(args):
    """The Adam schedule and problem size given on the command line, checked (only those given)."""
    from keras_balance import bench

    if args.final_learning_rate is not None and args.lr_schedule == "constant":
        raise SystemExit("keras-balance: error: --final-learning-rate needs a decaying --lr-schedule "
                         "(exponential or cosine)")
    try:
        bench.learning_rate_schedule(args.lr_schedule, args.learning_rate or 1e-3, args.steps or 1,
                                     args.final_learning_rate)
    except ValueError as error:
        raise SystemExit(f"keras-balance: error: --final-learning-rate: {error}") from None
    settings = {"learning_rate": args.learning_rate, "width": args.width, "depth": args.depth,
                "n_interior": args.interior_points, "n_boundary": args.boundary_points,
                "final_learning_rate": args.final_learning_rate}
    if args.pointwise != "none":
        settings["pointwise"] = args.pointwise
    if args.adaptive_every is not None and args.adaptive is None:
        raise SystemExit("keras-balance: error: --adaptive-every needs --adaptive rad|rar-d")
    if args.adaptive is not None:
        if args.resample:
            raise SystemExit("keras-balance: error: --adaptive and --resample both choose the points; pass one")
        settings["adaptive"] = {"method": args.adaptive.replace("-", "_")}
        if args.adaptive_every is not None:
            settings["adaptive"]["every"] = args.adaptive_every
    if args.causal_epsilon is not None and not args.causal:
        raise SystemExit("keras-balance: error: --causal-epsilon needs --causal M (the number of time chunks)")
    if args.causal:
        if args.pde not in ("burgers", "allen_cahn", "advection"):
            raise SystemExit(f"keras-balance: error: argument --causal: {args.pde} is not time-dependent "
                             "(burgers, allen_cahn and advection are)")
        settings["causal"] = {"chunks": args.causal}
        if args.causal_epsilon is not None:
            settings["causal"]["epsilon"] = args.causal_epsilon
    if args.protocol is not None:
        from keras_balance.bench import protocols

        if protocols.get(args.protocol).pde != args.pde:
            raise SystemExit(f"keras-balance: error: argument --protocol: {args.protocol} trains "
                             f"{protocols.get(args.protocol).pde}; received the problem {args.pde}")
        settings["protocol"] = args.protocol
    if args.lr_schedule != "constant":
        settings["lr_schedule"] = args.lr_schedule
    return {k: v for k, v in settings.items() if v is not None}


def _lbfgs_options(args):
    """The `finetune` arguments given on the command line (None: the defaults)."""
    options = {}
    if args.lbfgs_tolerance is not None:
        options["tolerance"] = args.lbfgs_tolerance
    if args.lbfgs_dtype is not None:
        options["dtype"] = args.lbfgs_dtype
    return options or None


def cmd_compare(args):
    from keras_balance import bench
    from keras_balance.bench.report import _json_safe

    if args.resume and not args.out:
        raise SystemExit("keras-balance: error: --resume needs --out DIR, the folder of the comparison to continue")
    check_output_file("--json", args.json)
    check_output_dir("--out", args.out)
    command = "keras-balance " + shlex.join(sys.argv[1:]) if args.command_line is None else args.command_line
    if args.pde == "multitask":
        return _compare_multitask(args, command)
    _refuse_multitask_options(args)
    names = balancer_list(args.balancers, args.pde, args.options)
    comparison = bench.run_comparison(
        args.pde,
        names,
        seeds=args.seeds,
        steps=args.steps,
        out=args.out,
        sampling=args.sampling,
        resample=args.resample,
        lbfgs_steps=args.lbfgs_steps,
        lbfgs_options=_lbfgs_options(args),
        balancer_options=args.options,
        timing_steps=50 if args.timing_steps is None else args.timing_steps,
        timing_repeats=5 if args.timing_repeats is None else args.timing_repeats,
        jit_compile=not args.no_jit,
        verbose=0 if args.quiet else 1,
        command=command,
        resume=args.resume,
        **_training_settings(args),
    )
    print(bench.comparison_table(comparison))
    for path in comparison["files"]:
        print(f"wrote {path}")
    if args.json:
        _write_json(args.json, _json_safe(comparison["runs"]))
    return 0


#: The options of `train` and `compare` that only a PDE takes, with the value that means "not given".
_PDE_ONLY = {"steps": None, "protocol": None, "lr_schedule": "constant", "final_learning_rate": None,
             "interior_points": None, "boundary_points": None, "sampling": "uniform", "resample": False,
             "lbfgs_steps": None, "lbfgs_tolerance": None, "lbfgs_dtype": None, "timing_steps": None,
             "timing_repeats": None, "pointwise": "none", "causal": 0, "causal_epsilon": None, "adaptive": None,
             "adaptive_every": None}
_MULTITASK_ONLY = {"epochs": None, "baseline": None}


def _option(name):
    return "--" + name.replace("_", "-")


def _refuse_multitask_options(args):
    """Exit if an option that only `multitask` takes was given for a PDE."""
    for name, unset in _MULTITASK_ONLY.items():
        if getattr(args, name, unset) != unset:
            raise SystemExit(f"keras-balance: error: {_option(name)} applies to the multitask problem only; "
                             f"received it with {args.pde}")


def _multitask_settings(args):
    """The MultiDigits settings given on the command line; exit for an option that only a PDE takes."""
    for name, unset in _PDE_ONLY.items():
        if getattr(args, name, unset) != unset:
            hint = " (the budget of multitask is --epochs)" if name == "steps" else ""
            raise SystemExit(f"keras-balance: error: {_option(name)} applies to the PDEs only; "
                             f"received it with multitask{hint}")
    settings = {"learning_rate": args.learning_rate, "width": args.width, "depth": args.depth}
    return {k: v for k, v in settings.items() if v is not None}


def _check_multitask_balancer(name, options):
    """Exit unless balancer `name` can be built, with `options`, for the three MultiDigits tasks."""
    from keras_balance import balancers
    from keras_balance.balancers.registry import resolve
    from keras_balance.bench import multitask

    if name.lower() not in balancers.available():
        raise SystemExit(f"keras-balance: error: unknown balancer {name!r}; "
                         f"known balancers: {', '.join(balancers.available())}")
    try:
        resolve(name, num_terms=len(multitask.TASKS), options=options).build_for(len(multitask.TASKS))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"keras-balance: error: balancer {name!r} with --options {options or {}} for the "
                         f"{len(multitask.TASKS)} tasks of multitask: {error}") from None


def _train_multitask(args):
    from keras_balance.bench import multitask

    settings = _multitask_settings(args)
    _check_multitask_balancer(args.balancer, args.options)
    data = multitask.multi_digits()
    result = multitask.train_multitask(
        args.balancer, seed=args.seed, data=data, epochs=args.epochs,
        balancer_options=multitask.multitask_options(args.balancer.lower(), data, args.options),
        verbose=0 if args.quiet else 2, **settings)
    epochs = f"{result.epochs} epoch" + ("" if result.epochs == 1 else "s")
    print(f"\nmultitask with {result.balancer} (seed {result.seed}, {epochs}, {result.steps} steps, "
          f"{result.seconds:.1f} s)")
    print(f"  {'task':<7} {'loss':>12} {'weight':>10}  test metric")
    for task in result.tasks:
        metric = multitask.TASKS[task]["metric"]
        print(f"  {task:<7} {result.final_losses[task]:12.4e} {result.final_weights[task]:10.4f}  "
              f"{metric} {result.metrics[task]:.4f}")
    if result.status != "ok":
        print(f"  status: {result.status}")
    if args.out and result.history and "loss" in result.history:
        from keras_balance import plotting

        os.makedirs(args.out, exist_ok=True)
        tag, title = f"multitask_{result.balancer}_seed{result.seed}", f"multitask, {result.balancer}, seed {result.seed}"
        epochs = list(range(1, len(result.history["loss"]) + 1))
        for path in (plotting.plot_losses(epochs, result.history, result.tasks, os.path.join(args.out, f"{tag}_losses.png"),
                                          title=title, xlabel="epoch"),
                     plotting.plot_weights(epochs, result.history, result.tasks,
                                           os.path.join(args.out, f"{tag}_weights.png"), title=title, xlabel="epoch")):
            print(f"  figure: {path}")
    if args.json:
        _write_json(args.json, result.summary())
        print(f"  summary: {args.json}")
    return 0


def _compare_multitask(args, command):
    from keras_balance import bench
    from keras_balance.bench import multitask
    from keras_balance.bench.report import _json_safe

    settings = _multitask_settings(args)
    try:
        names = bench.balancer_names(args.balancers)
    except ValueError as error:
        raise SystemExit(f"keras-balance: error: --balancers: {error}") from None
    data = multitask.multi_digits()
    for name in names:
        _check_multitask_balancer(name, multitask.multitask_options(name, data, args.options))
    comparison = multitask.multitask_comparison(
        names, seeds=args.seeds, epochs=args.epochs, baseline=args.baseline or multitask.SINGLE_TASK,
        out=args.out, resume=args.resume, balancer_options=args.options,
        verbose=0 if args.quiet else 1, command=command, data=data, **settings)
    print(multitask.multitask_table(comparison))
    for path in comparison["files"]:
        print(f"wrote {path}")
    if args.json:
        _write_json(args.json, _json_safe(comparison["runs"]))
    return 0


def cmd_speed(args):
    from keras_balance import bench

    if args.baseline != bench.HAND_WRITTEN:
        check_balancer(args.baseline)
    names = balancer_list(args.balancers)
    times = bench.step_times(args.pde, names, steps=args.steps, repeats=args.repeats,
                             jit_compile=not args.no_jit, baseline=args.baseline)
    print(f"{args.pde}: median of {args.repeats} chunks of {args.steps} steps, interleaved, "
          f"{os.cpu_count()} CPU cores visible, XLA {'off' if args.no_jit else 'on'}; "
          "hand-written: a tf.function step written without keras_balance")
    print(f"| balancer | ms / step | ratio to {args.baseline} | ratio to hand-written |")
    print("|---|---|---|---|")
    for name, row in times.items():
        print(f"| {name} | {row['ms_per_step']:.2f} | {row['ratio']:.3f} | {row['vs_hand_written']:.3f} |")
    return 0


def cmd_bench(args):
    from keras_balance import bench

    check_output_file("--json", args.json)
    if args.benchmark == "paths":
        return _bench_paths(bench, args)
    if args.benchmark == "scaling":
        return _bench_scaling(bench, args)
    if args.benchmark == "memory":
        return _bench_memory(bench, args)
    names = balancer_list(args.balancers) if args.balancers else None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        rows = bench.overhead(ks=args.ks, balancers=names, jacobian_modes=modes, steps=args.steps,
                              repeats=args.repeats, jit_compile=not args.no_jit, verbose=1,
                              update_every=args.update_every)
    except ValueError as error:
        raise SystemExit(f"keras-balance: error: {error}") from None
    print(f"Helmholtz, 4x50 PINN, 1024 + 256 points: median of {args.repeats} chunks of {args.steps} "
          f"steps, ratio to Sum in the same run, {os.cpu_count()} CPU cores visible, "
          f"XLA {'off' if args.no_jit else 'on'}")
    print(bench.overhead_table(rows))
    if args.json:
        _write_json(args.json, rows)
    return 0


def _bench_memory(bench, args):
    from keras_balance import pde as pde_lib

    names = balancer_list(args.balancers)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    from keras_balance.jacobians import JACOBIAN_MODES

    for mode in modes:
        if mode not in JACOBIAN_MODES:
            raise SystemExit(f"keras-balance: error: argument --modes: unknown mode {mode!r}; "
                             f"expected one of {', '.join(JACOBIAN_MODES)}")
    try:
        options = json.loads(args.options) if args.options else {}
        problem = pde_lib.get(args.pde, **options)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"keras-balance: error: argument --options: {error}") from None
    rows = bench.memory_table_rows(problem, names, modes, steps=args.steps, n_interior=args.interior_points)
    n = args.interior_points or 1024
    print(f"{args.pde} ({problem.num_terms} terms), {n} + {n // 4} points, XLA on: the allocator's peak over "
          f"{args.steps} training steps, {rows[0]['device']}, one process per row")
    print(bench.memory_table(rows))
    if args.json:
        _write_json(args.json, rows)
    return 0


def _bench_scaling(bench, args):
    names = balancer_list(args.balancers)
    try:
        rows = bench.scaling(points=args.points, ks=args.ks, balancers=names, steps=args.steps,
                             repeats=args.repeats, verbose=1)
    except ValueError as error:
        raise SystemExit(f"keras-balance: error: {error}") from None
    print(f"Helmholtz, 4x50 PINN, XLA on: median of {args.repeats} chunks of {args.steps} steps, "
          f"ms per step (ratio to Sum in the same setting), {os.cpu_count()} CPU cores visible")
    print("\nThe number of points, K = 5:\n")
    print(bench.scaling_table(rows, "points"))
    print("\nThe number of terms, 1024 + 256 points:\n")
    print(bench.scaling_table(rows, "K"))
    if args.json:
        _write_json(args.json, rows)
    return 0


def _bench_paths(bench, args):
    check_balancer(args.balancer)
    rows = bench.training_paths(args.pde, args.balancer, steps=args.steps, repeats=args.repeats,
                                jit_compile=not args.no_jit)
    print(f"{args.pde}, default PINN and points, balancer {args.balancer}: median of {args.repeats} chunks of "
          f"{args.steps} steps per path, interleaved in random order, ratio to the hand-written step's chunk "
          f"of the same round, {os.cpu_count()} CPU cores visible, XLA {'off' if args.no_jit else 'on'}")
    print(bench.paths_table(rows))
    if args.json:
        _write_json(args.json, rows)
    return 0


def cmd_plot(args):
    from keras_balance import plotting

    try:
        steps, history, terms, step_name = plotting.read_history_csv(args.csv)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"keras-balance: error: {error}") from None
    check_output_dir("--out", args.out)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.csv))[0]
    title = args.title or stem
    paths = [
        plotting.plot_losses(steps, history, terms, os.path.join(args.out, f"{stem}_losses.png"),
                             title=title, xlabel=step_name),
        plotting.plot_weights(steps, history, terms, os.path.join(args.out, f"{stem}_weights.png"),
                              title=title, xlabel=step_name),
    ]
    print(f"{args.csv}: {len(steps)} rows, terms {', '.join(terms)}")
    for path in paths:
        print(f"  figure: {path}")
    return 0


def cmd_list(args):
    from keras_balance import balancers

    rows = [(name, cls.kind, cls.summary) for name, cls in balancers.available().items()]
    width = max(len(r[0]) for r in rows)
    for name, kind, summary in rows:
        print(f"{name.ljust(width)}  {kind + '-level':15s} {summary}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    # The command line stated in results.md: the real one, or the argv given to main().
    args.command_line = None if argv is None else "keras-balance " + shlex.join(argv)
    handlers = {"train": cmd_train, "compare": cmd_compare, "speed": cmd_speed, "bench": cmd_bench,
                "plot": cmd_plot, "list": cmd_list}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
