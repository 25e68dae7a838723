"""`keras-balance`: train, compare and list loss balancers from the command line.

    keras-balance train helmholtz --balancer relobralo --steps 5000 --out runs/ --json run.json
    keras-balance compare helmholtz --balancers sum,relobralo --seeds 0,1,2
    keras-balance speed helmholtz --balancers sum,relobralo
    keras-balance list
"""

import argparse
import json
import os
import sys


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}")
    return value


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
    parser.add_argument("pde", choices=["helmholtz", "kirchhoff"], help="the problem to solve")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="optimizer steps (default: 5000 for helmholtz, 2000 for kirchhoff)")
    parser.add_argument("--learning-rate", type=_positive_float, default=None, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--no-jit", action="store_true", help="do not compile the training step with XLA")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write the JSON summary to PATH (train: one object; compare: a list, one per run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--options", type=_json_object, default=None, metavar="JSON",
                        help="balancer constructor arguments as a JSON object, "
                             "e.g. '{\"temperature\": 1.0}' or '{\"prior_losses\": [100, 1]}'")


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

    compare = sub.add_parser("compare", help="train several balancers with the same seeds and budget")
    _add_training_options(compare)
    compare.add_argument("--balancers", default="sum,relobralo", help="comma-separated balancer names")
    compare.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds (default 0)")
    compare.add_argument("--out", metavar="DIR", default=None, help="write results.md to DIR")

    speed = sub.add_parser("speed", help="median time per training step, as a ratio to a baseline")
    speed.add_argument("pde", choices=["helmholtz", "kirchhoff"], help="the problem")
    speed.add_argument("--balancers", default="sum,relobralo", help="comma-separated balancer names")
    speed.add_argument("--baseline", default="sum", help="the balancer the ratios refer to (default sum)")
    speed.add_argument("--steps", type=_positive_int, default=200, help="steps per timed chunk (default 200)")
    speed.add_argument("--repeats", type=_positive_int, default=5, help="timed chunks per balancer (default 5)")
    speed.add_argument("--no-jit", action="store_true", help="do not compile the training step with XLA")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True)
    over = bench_sub.add_parser(
        "overhead", help="step time of every balancer on Helmholtz with K = 2, 3, 5 terms, as a ratio to Sum"
    )
    over.add_argument("--ks", type=_int_list, default=[2, 3, 5], help="numbers of terms (from 2, 3, 5)")
    over.add_argument("--balancers", default=None, help="comma-separated names (default: all)")
    over.add_argument("--modes", default="loop",
                      help="per-term gradient modes of gradient-level balancers: loop, vectorized, features")
    over.add_argument("--steps", type=_positive_int, default=100, help="steps per timed chunk (default 100)")
    over.add_argument("--repeats", type=_positive_int, default=5, help="timed chunks per model (default 5)")
    over.add_argument("--no-jit", action="store_true", help="do not compile the training step with XLA")
    over.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")

    sub.add_parser("list", help="list the balancers with their kind and a summary")
    return parser


def _check_balancer(name, options=None):
    """Exit with a clear message for an unknown name or unusable options."""
    from keras_balance import balancers

    if name.lower() not in balancers.available():
        raise SystemExit(
            f"keras-balance: error: unknown balancer {name!r}; "
            f"known balancers: {', '.join(balancers.available())}"
        )
    try:
        balancers.get(name, **(options or {}))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"keras-balance: error: balancer {name!r} with --options {options or {}}: {error}") from None


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
    print(f"  relative L2 error: {result.rel_l2:.4e}", file=out)
    print(f"  MSE:               {result.mse:.4e}", file=out)


def cmd_train(args):
    from keras_balance import bench

    _check_balancer(args.balancer, args.options)
    result = bench.train(
        args.pde,
        args.balancer,
        balancer_options=args.options,
        steps=args.steps,
        seed=args.seed,
        learning_rate=args.learning_rate,
        jit_compile=not args.no_jit,
        verbose=0 if args.quiet else 1,
    )
    _print_run(result)
    if args.out:
        for path in bench.save_figures(result, args.out):
            print(f"  figure: {path}")
    if args.json:
        _write_json(args.json, result.summary())
        print(f"  summary: {args.json}")
    return 0


def cmd_compare(args):
    from keras_balance import bench

    names = [n.strip() for n in args.balancers.split(",") if n.strip()]
    for name in names:
        _check_balancer(name, args.options)
    if not args.seeds:
        raise SystemExit("keras-balance: error: --seeds needs at least one seed")
    results = bench.compare(
        args.pde,
        names,
        seeds=args.seeds,
        balancer_options=args.options,
        steps=args.steps,
        learning_rate=args.learning_rate,
        jit_compile=not args.no_jit,
        verbose=0 if args.quiet else 1,
    )
    table = bench.results_table(results)
    print()
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "results.md")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        print(f"\ntable: {path}")
    if args.json:
        _write_json(args.json, [r.summary() for r in results])
    return 0


def cmd_speed(args):
    from keras_balance import bench

    names = [n.strip() for n in args.balancers.split(",") if n.strip()]
    for name in [args.baseline, *names]:
        _check_balancer(name)
    times = bench.step_times(args.pde, names, steps=args.steps, repeats=args.repeats,
                             jit_compile=not args.no_jit, baseline=args.baseline)
    print(f"{args.pde}: median of {args.repeats} chunks of {args.steps} steps, "
          f"{os.cpu_count()} CPU cores visible, XLA {'off' if args.no_jit else 'on'}")
    print(f"| balancer | ms / step | ratio to {args.baseline} |")
    print("|---|---|---|")
    for name, row in times.items():
        print(f"| {name} | {row['ms_per_step']:.2f} | {row['ratio']:.3f} |")
    return 0


def cmd_bench(args):
    from keras_balance import balancers, bench

    names = None
    if args.balancers:
        names = [n.strip().lower() for n in args.balancers.split(",") if n.strip()]
        known = balancers.available()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise SystemExit(
                f"keras-balance: error: unknown balancer(s) {unknown}; known balancers: {', '.join(known)}"
            )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        rows = bench.overhead(ks=args.ks, balancers=names, jacobian_modes=modes, steps=args.steps,
                              repeats=args.repeats, jit_compile=not args.no_jit, verbose=1)
    except ValueError as error:
        raise SystemExit(f"keras-balance: error: {error}") from None
    print(f"Helmholtz, 4x50 PINN, 1024 + 256 points: median of {args.repeats} chunks of {args.steps} "
          f"steps, ratio to Sum in the same run, {os.cpu_count()} CPU cores visible, "
          f"XLA {'off' if args.no_jit else 'on'}")
    print(bench.overhead_table(rows))
    if args.json:
        _write_json(args.json, rows)
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
    handlers = {"train": cmd_train, "compare": cmd_compare, "speed": cmd_speed, "bench": cmd_bench,
                "list": cmd_list}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
