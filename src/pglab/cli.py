"""The ``pglab`` command line: ``train``, ``eval``, ``record``, ``export``, ``sweep``,
``report``, ``variance`` and ``bench``.

Every user mistake ends with one line on stderr (``pglab: error: ...``) and exit
code 2; a fault met while running (a folder or file that cannot be written, an env
that breaks) ends with one line naming it and exit code 1; Ctrl-C during training saves a
checkpoint and exits with code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from pglab.config import Config, build_config, option_fields, parse_override
from pglab.errors import PglabError
from pglab.paths import safe_name

if TYPE_CHECKING:
    from pglab.member import Run

#: Named flags of ``pglab train`` and the option each one sets.
TRAIN_FLAGS = {
    "env": "env.id",
    "algo": "algo.name",
    "weights": "algo.weights",
    "seed": "run.seed",
    "steps": "run.total_steps",
    "out": "run.out",
    "name": "run.name",
    "stop_at_return": "run.stop_at_return",
    "preset": "run.preset",
}


_NUMERIC = ("seed", "steps", "stop_at_return")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')")


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"pglab: error: {message}", file=sys.stderr)
    raise SystemExit(code)


_ALLOW_IMPORT_HELP = (
    "import MODULE when the checkpoint's env id names it (package.module:Class); "
    "pglab imports no module named only in a file (repeatable)"
)


def _allow_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-import",
        dest="allow_import",
        action="append",
        default=[],
        metavar="MODULE",
        help=_ALLOW_IMPORT_HELP,
    )


def _options_help() -> str:
    lines = [
        "options (set with --set KEY=VALUE, a TOML file, or pglab.train(KEY=VALUE)).",
        "The defaults shown are the base values; a2c, ppo and trpo start from their own",
        "defaults (pglab/presets/ALGO.toml), and a tuned preset for the env and algorithm",
        "(pglab/presets/ALGO/ENV.toml) applies when one ships, unless --preset none.",
        "config.toml in the run folder records every value used.",
    ]
    for key, f, _ in option_fields():
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        lines.append(f"  {key:<26} {f.metadata['help']} (default: {shown})")
    return "\n".join(lines)


def _add_ray_options(parser: argparse.ArgumentParser, what: str, backends: str) -> None:
    """``--backend local|ray`` and ``--address`` of a command that can run on Ray."""
    parser.add_argument(
        "--backend", default="local", choices=("local", "ray"), help=f"{backends} (default: local)"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --backend ray: a cluster's address (auto or HOST:PORT); "
        f"default: start a local Ray instance for the {what}",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``pglab`` command (its help is the CLI reference of the docs)."""
    parser = _Parser(prog="pglab", description="Policy-gradient reinforcement learning.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser(
        "train",
        help="train an agent (default: CartPole-v1)",
        description="Train an agent; the run is written to OUT/GROUP/NAME/.",
        epilog=_options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--env", help="Gymnasium id or package.module:Class (default: CartPole-v1)")
    train.add_argument("--algo", help="learning rule reinforce|a2c|ppo|trpo (default: ppo)")
    train.add_argument(
        "--weights",
        help="policy-gradient weights r|fr|dfr|dfrb|td|gae, or your own function "
        "package.module:name (default: gae)",
    )
    train.add_argument("--seed", help="random seed (default: 0)")
    train.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="train one run per seed, e.g. 0-15 or 0,3,7: a2c and ppo train them as one "
        "population in one process, other algorithms one after another",
    )
    train.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="with --seeds: spread the runs over N processes (default: 1)",
    )
    train.add_argument("--steps", help="environment steps to train for (default: 200000)")
    train.add_argument("--out", help="folder for run groups (default: runs)")
    train.add_argument("--name", help="run folder name (default: algo-weights-seedN-time)")
    train.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any option (repeatable), e.g. lr=0.01",
    )
    train.add_argument(
        "--stop-at-return",
        dest="stop_at_return",
        metavar="X",
        help="stop once an evaluation reaches X; 'none' never stops early "
        "(default: the env's reward threshold)",
    )
    train.add_argument(
        "--preset",
        metavar="NAME",
        help="tuned settings: auto (the shipped preset for the env and algo, if any), none, "
        "or ALGO/ENV_ID to borrow one (default: auto)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run in its own folder; with --steps N, extend a "
        "finished one to N steps",
    )
    _allow_import(train)

    sweep = commands.add_parser(
        "sweep",
        help="run every run of a sweep spec (skipping finished ones)",
        description="Run the runs of a sweep spec that are not finished yet; see pglab.experiments.sweep "
        "for the spec's format. Exit code 0 when every run has succeeded, 1 otherwise.",
    )
    sweep.add_argument("spec", metavar="SPEC.toml", help="the sweep spec")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    sweep.add_argument("--out", help="folder for the run group (default: the spec's out, or runs)")
    _add_ray_options(sweep, "sweep", "local (a process pool) or ray")
    sweep.add_argument(
        "--workers", type=int, default=None, help="local processes (default: one per core)"
    )

    tune = commands.add_parser(
        "tune",
        help="search for good settings with Optuna (TPE, pruning), resumable",
        description="Run the missing trials of a tuning spec (see pglab.experiments.tune), or "
        "with --scheduler pbt its population (pglab.experiments.pbt_study); writes GROUP/tune/: "
        "trials.csv or members.csv and events.csv, best.toml and plots. Needs pip install "
        "'pglab[tune]'.",
    )
    tune.add_argument("spec", metavar="SPEC.toml", help="the tuning spec")
    tune.add_argument("--out", help="folder for the run group (default: the spec's out, or runs)")
    tune.add_argument(
        "--scheduler",
        choices=("tpe", "pbt"),
        help="tpe: Optuna trials, pruned early (default: the spec's scheduler, or tpe); "
        "pbt: population-based training of the spec's members in this process",
    )
    _add_ray_options(
        tune,
        "tune",
        "local (this machine) or ray (Ray Tune: ASHA with Optuna's TPE, or Ray's PBT; needs "
        "pip install 'pglab[ray]')",
    )

    report = commands.add_parser(
        "report",
        help="tables and learning curves of a run group",
        description="Per configuration over seeds: mean, std, IQM and a 95%% bootstrap CI of "
        "the final evaluation and of the area under the learning curve, as a markdown "
        "table, and the learning curves as a PNG; written to GROUP/report/.",
    )
    report.add_argument("group", metavar="GROUP_DIR", help="a run group folder, e.g. runs/my-sweep")
    report.add_argument(
        "--by",
        nargs="+",
        metavar="OPTION",
        help="group runs by these options (default: every option that varies but the seed)",
    )
    report.add_argument(
        "--smooth",
        type=int,
        default=1,
        metavar="K",
        help="draw each run's curve as a moving average of K updates (default: 1, raw)",
    )

    rep = commands.add_parser(
        "reproduce",
        help="rerun the experiments behind the docs' tables and write them back",
        description="Rerun the sweeps of the experiments in experiments/reproduce.toml (of "
        "the source checkout this runs in) and write each table into its page of docs/, "
        "with the commit, the command and the machine, its plot and its runs' figures into "
        "docs/experiments/. --check reruns each experiment's check runs and fails if any "
        "figure differs from the committed one.",
    )
    rep.add_argument("names", nargs="*", metavar="NAME", help="experiments to rerun")
    rep.add_argument("--all", action="store_true", help="every experiment of the registry")
    rep.add_argument(
        "--check",
        action="store_true",
        help="rerun the check runs and compare (exit 1 if any differ)",
    )
    rep.add_argument(
        "--pin-cpu",
        action="store_true",
        help="with --check: keep the reruns' figures as this kind of CPU's reference in "
        "docs/experiments/check-figures-by-cpu.json instead of comparing (only at a commit "
        "whose check passes on the machine that made the figures)",
    )
    rep.add_argument("--list", action="store_true", help="list the experiments")
    rep.add_argument("--out", help="folder for the runs (default: runs/reproduce/<commit>)")

    rec = commands.add_parser(
        "record",
        help="render a trained agent to a GIF or MP4",
        description="Play the agent of a run (or checkpoint) and write the frames to a file.",
    )
    rec.add_argument("path", metavar="RUN", help="a run folder or a checkpoint file")
    rec.add_argument("--out", required=True, metavar="FILE", help="agent.gif or agent.mp4")
    rec.add_argument("--episodes", type=int, default=1, help="episodes to play (default: 1)")
    rec.add_argument("--seed", type=int, default=0, help="env seed of the first episode")
    rec.add_argument("--fps", type=int, default=None, help="default: the env's render_fps")
    rec.add_argument("--stochastic", action="store_true", help="sample actions")
    _allow_import(rec)

    var = commands.add_parser(
        "variance",
        help="variance of the policy-gradient estimate per weight kind, at a run's snapshots",
        description="At each kept checkpoint of a run (run.keep_checkpoints) and the last one, "
        "estimate the variance of the policy-gradient estimate for each weight kind from many "
        "independent batches; writes RUN/variance/.",
    )
    var.add_argument("path", metavar="RUN", help="a run folder")
    var.add_argument("--batches", type=int, default=50, help="batches per snapshot (default: 50)")
    var.add_argument("--episodes", type=int, default=10, help="episodes per batch (default: 10)")
    var.add_argument(
        "--weights", default=None, help="comma-separated kinds (default: every kind the run allows)"
    )
    var.add_argument("--gamma", type=float, default=None, help="default: the run's")
    var.add_argument("--lam", type=float, default=None, help="default: the run's")
    var.add_argument("--normalize", action="store_true", help="standardise the weights first")
    var.add_argument("--snapshots", default="all", help="all (default) or last")
    var.add_argument("--out", default=None, help="output folder (default: RUN/variance)")
    _allow_import(var)

    commands.add_parser(
        "bench",
        help="speed benchmark against references (see 'pglab bench --help')",
        add_help=False,
    )

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained agent",
        description="Evaluate the agent of a run folder or checkpoint file.",
    )
    evaluate.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to play (default: 10)")
    evaluate.add_argument(
        "--stochastic",
        action="store_true",
        help="sample actions instead of taking the most likely (default: off)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="env seed (default: 0)")
    evaluate.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="a run folder's last checkpoint or its best evaluation's (default: last)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.add_argument(
        "--plot",
        metavar="FILE.png",
        help="pglab/LineWorld-v0 only: draw the episodes' trajectories, success rate in the title",
    )
    _allow_import(evaluate)

    export = commands.add_parser(
        "export",
        help="write a trained policy as an ONNX or TorchScript file",
        description="Write the deterministic policy of a run folder (or checkpoint file) as one "
        "file that maps a batch of encoded observations (float32 [batch, dim]) to the "
        "actions agent.act(obs, deterministic=True) takes: observation normalisation and "
        "action mapping included. ONNX needs pip install 'pglab[export]'.",
    )
    export.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    export.add_argument(
        "--format",
        required=True,
        choices=["onnx", "torchscript"],
        help="onnx (needs pglab[export]) or torchscript",
    )
    export.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        default="last",
        help="a run folder's last checkpoint or its best evaluation's (default: last)",
    )
    export.add_argument(
        "--out",
        metavar="FILE",
        help="the file to write (default: RUN_DIR/policy-CHECKPOINT.onnx or "
        ".torchscript.pt; needed for a checkpoint file)",
    )
    _allow_import(export)
    return parser


def _version() -> str:
    from pglab import __version__

    return f"pglab {__version__}"


def _train(args: argparse.Namespace) -> int:
    from pglab.population import resume, train

    if args.resume:
        given = [f for f in TRAIN_FLAGS if getattr(args, f) is not None and f != "steps"]
        if given or args.overrides or args.config:
            _fail(
                "--resume continues a run with its saved options (--steps N extends its "
                "budget); drop "
                + ", ".join(f"--{f.replace('_', '-')}" for f in given or ["set/--config"])
            )
        run_dir = args.resume
        steps = None
        if args.steps is not None:
            steps = parse_override(f"{TRAIN_FLAGS['steps']}={args.steps}")[1]
        run = resume(
            run_dir,
            args.allow_import,
            lambda: _warn_if_config_edited(run_dir),
            total_steps=steps,
        )
    else:
        if args.allow_import:
            _fail("--allow-import goes with --resume (a new run imports what --env names)")
        if args.name is not None:
            safe_name(args.name, "--name")
        flag_values = {}
        for flag, key in TRAIN_FLAGS.items():
            value = getattr(args, flag)
            if value is not None:  # numbers are read as TOML; names stay strings
                flag_values[key] = (
                    parse_override(f"{key}={value}")[1] if flag in _NUMERIC else value
                )
        config = build_config(args.config, flag_values, args.overrides)
        if args.seeds is not None:
            return _train_seeds(config, args)
        run = train(config)
    _print_run(run)
    return 0


def _warn_if_config_edited(run_dir: str) -> None:
    """One warning line when the run's ``config.toml`` no longer matches the options it
    trained with: ``--resume`` continues with the checkpoint's options and ignores it."""
    from pglab.experiments.report import trained_config

    with contextlib.suppress(PglabError, OSError, ValueError):
        if trained_config(run_dir)[1]:
            print(
                f"pglab: warning: {run_dir}/config.toml was edited after the run started; "
                "--resume ignores it and continues with the options the run trained with "
                "(its checkpoint's)",
                file=sys.stderr,
            )


def _print_run(run: Run) -> None:
    s = run.summary
    solved = "never" if s["solved_at_step"] is None else f"at step {s['solved_at_step']:,}"
    print(
        f"{run.path}: {s['total_steps']:,} steps in {s['wall_seconds']:.1f}s, "
        f"eval return {s['eval_return_mean']:.2f} ± {s['eval_return_std']:.2f}, solved {solved}"
    )


def _train_seeds(config: Config, args: argparse.Namespace) -> int:
    """``--seeds``: one run per seed (a population, or processes with ``--jobs``)."""
    from pglab.population import member_configs, parse_seeds, train_many

    if args.seed is not None:
        _fail("--seed and --seeds do not combine; give one of them")
    if args.jobs < 1:
        _fail(f"--jobs must be an integer >= 1; got {args.jobs}")
    start = time.perf_counter()
    runs = train_many(member_configs(config, parse_seeds(args.seeds)), args.jobs)
    for run in runs:
        _print_run(run)
    solved = sum(run.summary["solved_at_step"] is not None for run in runs)
    finals = sorted(run.summary["eval_return_mean"] for run in runs)
    print(
        f"{len(runs)} runs in {time.perf_counter() - start:.1f}s: solved {solved}/{len(runs)}, "
        f"median eval return {finals[len(finals) // 2]:.2f}"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pglab.experiments.sweep import run_sweep

    if args.workers is not None and args.workers < 1:
        _fail(f"--workers must be an integer >= 1; got {args.workers}")
    ok = run_sweep(
        args.spec,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        dry_run=args.dry_run,
        out=args.out,
    )
    return 0 if ok else 1


def _tune(args: argparse.Namespace) -> int:
    from pglab.experiments.tune import run_tune

    tune_dir = run_tune(
        args.spec,
        out=args.out,
        scheduler=args.scheduler,
        backend=args.backend,
        address=args.address,
    )
    for name in ("trials.csv", "members.csv", "events.csv", "best.toml"):
        if (tune_dir / name).is_file():
            print(tune_dir / name)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pglab.experiments import reproduce as rp

    root = rp.find_root()
    registry = rp.load_registry(root)
    if args.list:
        for experiment in registry.values():
            n = len(experiment.check)
            checked = f" (--check reruns {n} run{'s' if n > 1 else ''})" if n else ""
            print(f"{experiment.name}: {experiment.title}{checked}")
        return 0
    if args.all and args.names:
        _fail(f"give experiment names or --all, not both; got --all and {' '.join(args.names)}")
    chosen = list(registry.values()) if args.all else rp.select(registry, args.names)
    if args.pin_cpu and not args.check:
        _fail("--pin-cpu keeps the figures of a --check; give both, or neither")
    if args.check:
        chosen = chosen if args.names else list(registry.values())
        return 0 if rp.check(chosen, root, pin=args.pin_cpu) else 1
    if not chosen:
        _fail("name the experiments to rerun, or give --all, --check or --list")
    out = Path(args.out).resolve() if args.out else rp.default_out(root)
    for experiment in chosen:
        rp.reproduce(experiment, root, out, f"pglab reproduce {experiment.name}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pglab.experiments.report import report

    out = report(args.group, args.by, args.smooth)
    print(f"{out / 'report.md'}\n{out / 'learning_curves.png'}")
    return 0


def _record(args: argparse.Namespace) -> int:
    from pglab.agent import load
    from pglab.experiments.record import record

    recording = record(
        load(args.path, allow_import=args.allow_import),
        args.out,
        args.episodes,
        seed=args.seed,
        fps=args.fps,
        deterministic=not args.stochastic,
    )
    returns = ", ".join(f"{r:.1f}" for r in recording.returns)
    print(f"{recording.path}: {recording.frames} frames, returns {returns}")
    return 0


def _variance(args: argparse.Namespace) -> int:
    from pglab.experiments.variance import study

    out = study(
        args.path,
        kinds=args.weights.split(",") if args.weights else None,
        batches=args.batches,
        episodes=args.episodes,
        gamma=args.gamma,
        lam=args.lam,
        normalize=args.normalize,
        which=args.snapshots,
        out=args.out,
        allow_import=args.allow_import,
    )
    print((out / "variance.md").read_text())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pglab.agent import load
    from pglab.evaluate import evaluate

    if args.episodes < 1:
        _fail(f"--episodes must be an integer >= 1; got {args.episodes}")
    agent = load(args.path, allow_import=args.allow_import, checkpoint=args.checkpoint)
    if args.plot is not None:  # the figures printed are those of the episodes drawn
        from pglab.experiments.record import plot_lineworld

        result = plot_lineworld(
            agent, args.plot, args.episodes, seed=args.seed, deterministic=not args.stochastic
        )
    else:
        result = evaluate(
            agent, episodes=args.episodes, deterministic=not args.stochastic, seed=args.seed
        )
    if args.json:
        print(
            json.dumps(
                {
                    "env": agent.config.env.id,
                    "episodes": args.episodes,
                    "deterministic": not args.stochastic,
                    **result.to_dict(),
                }
            )
        )
    else:
        line = (
            f"{agent.config.env.id}: return {result.mean:.2f} ± {result.std:.2f} over "
            f"{args.episodes} episodes ({'stochastic' if args.stochastic else 'deterministic'})"
        )
        if result.success_rate is not None:
            line += f", success rate {result.success_rate:.0%}"
        if result.reward_mean is not None:
            line += f" (game score; {result.reward_mean:.2f} in the rewards trained on)"
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pglab.export import export

    out = export(
        args.path,
        args.out,
        format=args.format,
        checkpoint=args.checkpoint,
        allow_import=args.allow_import,
    )
    print(f"{out}: {args.format} policy (input 'obs' float32 [batch, dim], output 'action')")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pglab`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from pglab.bench import main as bench

        try:
            return bench(argv[1:])
        except PglabError as error:
            _fail(str(error))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        commands = {
            "train": _train,
            "eval": _eval,
            "sweep": _sweep,
            "tune": _tune,
            "report": _report,
            "reproduce": _reproduce,
            "record": _record,
            "variance": _variance,
            "export": _export,
        }
        return commands[args.command](args)
    except PglabError as error:
        _fail(str(error), error.exit_code)
    except OSError as error:  # a file that cannot be written or read (disk full, read-only)
        where = f" {error.filename!r}" if error.filename else ""
        _fail(f"cannot access{where}: {error.strerror or error}", 1)
    except KeyboardInterrupt as interrupt:
        where = getattr(interrupt, "run_dirs", None)
        if args.command == "reproduce":
            print(
                "pglab: interrupted; run the same 'pglab reproduce' again to finish what is "
                "missing (the runs of this commit resume)",
                file=sys.stderr,
            )
        elif args.command in ("sweep", "tune"):
            print(
                f"pglab: interrupted; run 'pglab {args.command} {args.spec}' again to finish "
                "what is missing",
                file=sys.stderr,
            )
        elif where:
            commands = "; ".join(f"pglab train --resume {path}" for path in where)
            print(
                f"pglab: interrupted; checkpoint saved. Continue with: {commands}", file=sys.stderr
            )
        else:
            print("pglab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
