"""``pglab reproduce``: rerun the sweeps behind the tables and plots of the docs, and
write them back with the commit, the command and the machine that produced them.

The experiments are listed in ``experiments/reproduce.toml`` of a source checkout, one
table each::

    [mp11]
    title = "The MP11 line world"
    sweeps = ["mp11/vpg.toml", "mp11/ppo.toml"]   # specs, relative to experiments/
    by = ["algo", "lr"]                           # pglab report --by (optional)
    smooth = 1                                    # pglab report --smooth (optional)
    check = ["lr=0.004,seed=0", "seed=0"]         # runs that --check reruns (optional)
    running_mean = [25, 475.0]                    # also: when each run's mean return of
                                                  # its last 25 updates first reached 475
    success_at = 0.9                              # also: how many runs per configuration
                                                  # end with a success rate of at least 90%
    metrics = ["explained_variance", "value_loss_heldout/value_loss"]
                                                  # also: each metric's (or ratio's) mean
                                                  # over a run's updates, per configuration

An experiment that is not a sweep (a run, then a study of it) gives ``commands``
instead of ``sweeps``: pglab command lines run in order, where ``{out}`` stands for the
experiment's own folder under the runs folder, and ``table`` and ``plot``, the
markdown table and the picture they write::

    [variance]
    commands = ["pglab train ... --out {out}", "pglab variance {out}/... --out {out}/study"]
    table = "{out}/study/variance.md"
    plot = "{out}/study/variance.png"

``pglab reproduce mp11`` runs the specs (into ``runs/reproduce/<commit>/``, so that an
interrupted reproduction resumes), reports on their group and writes

- the table into the page that holds the markers ``<!-- reproduce: mp11 -->`` and
  ``<!-- /reproduce: mp11 -->`` (in ``docs/``), below a line naming the commit, the
  command and the machine;
- the learning curves to ``docs/experiments/mp11.png``;
- every run's final figures to ``docs/experiments/mp11.json``.

``pglab reproduce --check`` reruns the runs named by each experiment's ``check`` (a
deterministic subset: a few seeds at the experiment's full settings) into a temporary
folder and compares their final figures with ``mp11.json``; any difference fails it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pglab.bench import code_version, machine
from pglab.errors import ConfigError, PglabError
from pglab.experiments.report import RunRecord, configuration_label, load_runs, report
from pglab.experiments.sweep import load_spec, read_spec, run_sweep
from pglab.paths import write_atomic, write_text_atomic

#: The registry of reproducible experiments, relative to the checkout's root.
REGISTRY = Path("experiments") / "reproduce.toml"
#: Where the plots and the figures of each run go, relative to the checkout's root.
FIGURES = Path("docs") / "experiments"
#: The check runs' figures on other kinds of CPU than the one that made the docs (see
#: :func:`check`), by :func:`cpu_kind`.
CPU_REFERENCES = FIGURES / "check-figures-by-cpu.json"
#: A run's final figures that are recorded and checked.
FIGURE_KEYS = ("eval_return_mean", "eval_return_std", "eval_success_rate", "total_steps")
_ENTRY_KEYS = {
    "title", "sweeps", "by", "smooth", "check", "running_mean", "success_at", "metrics",
    "commands", "table", "plot",
}  # fmt: skip
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


class RunFailed(PglabError):
    """A run or command of an experiment failed (a fault, not a user mistake)."""

    exit_code = 1


@dataclass(frozen=True)
class Experiment:
    """One table of the docs and the sweep specs behind it."""

    name: str
    title: str
    sweeps: tuple[Path, ...]
    by: tuple[str, ...]
    smooth: int
    check: tuple[str, ...]
    #: (window, threshold): report when each run's running mean first reached it.
    running_mean: tuple[int, float] | None = None
    #: Count the runs whose final success rate is at least this (None: don't).
    success_at: float | None = None
    #: metrics.csv columns (or ratios ``a/b``) averaged over each run's updates.
    metrics: tuple[str, ...] = ()
    #: pglab command lines (instead of sweeps), and the table and plot they write.
    commands: tuple[str, ...] = ()
    table: str = ""
    plot: str = ""


def find_root(start: str | Path = ".") -> Path:
    """The source checkout holding ``experiments/reproduce.toml``: ``start`` or a folder
    above it."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / REGISTRY).is_file():
            return folder
    raise PglabError(
        f"pglab reproduce runs in a pglab source checkout; no {REGISTRY} in {str(here)!r} "
        "or a folder above it"
    )


def load_registry(root: Path) -> dict[str, Experiment]:
    """Every experiment of ``root``'s registry, checked (names, specs that exist, types)."""
    path = root / REGISTRY
    table = read_spec(path, None, "reproduce registry")
    experiments = {}
    for name, entry in table.items():
        where = f"{REGISTRY} [{name}]"
        if not _NAME.fullmatch(name) or not isinstance(entry, dict):
            raise ConfigError(
                f"{REGISTRY}: each entry is a table named in lowercase letters, digits and "
                f"dashes; got {name!r}"
            )
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_ENTRY_KEYS))}"
            )
        commands = _strings(entry.get("commands"), f"{where} commands")
        if commands:
            experiments[name] = _commands_entry(name, entry, commands, where)
            continue
        sweeps = _strings(entry.get("sweeps"), f"{where} sweeps", required=True)
        specs = tuple(path.parent / spec for spec in sweeps)
        for spec in specs:
            if not spec.is_file():
                raise ConfigError(f"{where}: sweep spec {str(spec)!r} does not exist")
        smooth = entry.get("smooth", 1)
        if not isinstance(smooth, int) or isinstance(smooth, bool) or smooth < 1:
            raise ConfigError(f"{where} smooth must be an integer >= 1; got {smooth!r}")
        running = entry.get("running_mean")
        if running is not None and not (
            isinstance(running, list)
            and len(running) == 2
            and isinstance(running[0], int)
            and running[0] >= 1
            and isinstance(running[1], (int, float))
        ):
            raise ConfigError(
                f"{where} running_mean must be [window (an integer >= 1), threshold]; "
                f"got {running!r}"
            )
        experiments[name] = Experiment(
            name=name,
            title=str(entry.get("title", name)),
            sweeps=specs,
            by=tuple(_strings(entry.get("by"), f"{where} by")),
            smooth=smooth,
            check=tuple(_strings(entry.get("check"), f"{where} check")),
            running_mean=(running[0], float(running[1])) if running else None,
            metrics=tuple(_strings(entry.get("metrics"), f"{where} metrics")),
            success_at=_fraction(entry.get("success_at"), f"{where} success_at"),
        )
    return experiments


def _commands_entry(
    name: str, entry: dict[str, Any], commands: list[str], where: str
) -> Experiment:
    """An entry whose table comes from pglab command lines rather than sweeps."""
    extra = {"sweeps", "by", "smooth", "check", "running_mean", "metrics", "success_at"}
    extra &= set(entry)
    if extra:
        raise ConfigError(
            f"{where}: an entry with commands takes title, commands, table and plot; "
            f"got {', '.join(sorted(extra))} too"
        )
    for command in commands:
        if not command.startswith("pglab "):
            raise ConfigError(f"{where} commands must be pglab command lines; got {command!r}")
    paths = {}
    for key in ("table", "plot"):
        value = entry.get(key)
        if not isinstance(value, str) or not value.startswith("{out}/"):
            raise ConfigError(f"{where} {key} must be a path under {{out}}/; got {value!r}")
        paths[key] = value
    return Experiment(
        name=name,
        title=str(entry.get("title", name)),
        sweeps=(),
        by=(),
        smooth=1,
        check=(),
        commands=tuple(commands),
        **paths,
    )


#: The file that marks a folder as made by :func:`_run_commands` (so it may remove it).
MADE_HERE = ".pglab-reproduce"


def _with_out(text: str, folder: Path) -> str:
    """``text`` with its literal ``{out}`` replaced by ``folder`` (nothing else is a field)."""
    return text.replace("{out}", str(folder))


def _run_commands(experiment: Experiment, out: Path, echo: Callable[[str], None]) -> Path:
    """Run the entry's command lines in a folder of its own under ``out`` (unless their
    table is there already: an interrupted reproduction resumes); returns that folder."""
    folder = out / experiment.name
    if Path(_with_out(experiment.table, folder)).is_file():
        return folder
    if folder.exists():  # what an interrupted attempt left: the commands start afresh
        if not (folder / MADE_HERE).is_file():
            raise PglabError(
                f"{experiment.name}: {str(folder)!r} exists and was not made by pglab "
                "reproduce; pglab does not remove it (choose another --out)"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MADE_HERE).write_text("made by pglab reproduce; removed by it on a rerun\n")
    for line in experiment.commands:
        words = [_with_out(word, folder) for word in shlex.split(line)]
        argv = [sys.executable, "-m", "pglab.cli", *words[1:]]
        echo(f"{experiment.name}: {shlex.join(words)}")
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RunFailed(f"{experiment.name}: {line!r} failed ({reason})")
    return folder


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where} must be a number in (0, 1]; got {value!r}")
    return float(value)


def _strings(value: Any, where: str, required: bool = False) -> list[str]:
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a non-empty list of strings; got {value!r}")
    return value


def select(experiments: dict[str, Experiment], names: Sequence[str]) -> list[Experiment]:
    """The experiments named (each must exist)."""
    unknown = [n for n in names if n not in experiments]
    if unknown:
        raise ConfigError(
            f"unknown experiment(s) {', '.join(unknown)}; the registry has: "
            f"{', '.join(experiments)}"
        )
    return [experiments[n] for n in names]


def group_dir(experiment: Experiment, out: Path) -> Path:
    """The one run group every spec of ``experiment`` writes into, under ``out``."""
    groups = {load_spec(spec, out).group_dir for spec in experiment.sweeps}
    if len(groups) != 1:
        names = ", ".join(sorted(g.name for g in groups))
        raise ConfigError(
            f"{REGISTRY} [{experiment.name}]: its sweeps write into several groups ({names}); "
            "one table needs one group"
        )
    return groups.pop()


def run_figures(group: Path) -> dict[str, dict[str, Any]]:
    """Each finished run's final figures (:data:`FIGURE_KEYS`), by its folder name."""
    return {
        record.path.name: {key: record.summary.get(key) for key in FIGURE_KEYS}
        for record in load_runs(group)
    }


def first_reaching(returns: Sequence[float], window: int, threshold: float) -> int | None:
    r"""The first update :math:`u` (1-based) at which the mean of the last ``window``
    updates' returns, :math:`\frac1w \sum_{i=u-w+1}^{u} G_i`, is at least
    ``threshold``; None if it never is."""
    total = 0.0
    for u, value in enumerate(returns, start=1):
        total += value
        if u > window:
            total -= returns[u - 1 - window]
        if u >= window and total / window >= threshold:
            return u
    return None


def _by_configuration(group: Path, by: Sequence[str] = ()) -> dict[str, list[RunRecord]]:
    """The finished runs of ``group`` by configuration: named by the options ``by`` as
    the report names them, or else by a run's folder name without its seed."""
    from pglab.config import qualify

    keys = [qualify(k, "by") for k in by]
    configurations: dict[str, list[RunRecord]] = {}
    for record in load_runs(group):
        if keys:
            label = configuration_label(record.options, keys)
        else:
            label = re.sub(r",?seed=\d+$", "", record.path.name) or "all runs"
        configurations.setdefault(label, []).append(record)
    return configurations


def success_lines(group: Path, threshold: float, by: Sequence[str] = ()) -> list[str]:
    """Per configuration: how many runs end with a success rate of at least ``threshold``."""
    lines = []
    for label, records in _by_configuration(group, by).items():
        rates = [r.summary.get("eval_success_rate") for r in records]
        hits = sum(rate is not None and rate >= threshold for rate in rates)
        lines.append(
            f"- {label}: {hits} of {len(rates)} runs end with a success rate of at least "
            f"{threshold:.0%}"
        )
    return lines


def running_mean_lines(
    group: Path, window: int, threshold: float, by: Sequence[str] = ()
) -> list[str]:
    """Per configuration: how many runs reached the running mean, and when."""
    reached = {
        label: [first_reaching([float(x) for x in r.returns], window, threshold) for r in records]
        for label, records in _by_configuration(group, by).items()
    }
    lines = []
    for label, updates in reached.items():
        hits = sorted(u for u in updates if u is not None)
        when = (
            f" (at update{'s' if len(hits) > 1 else ''} {', '.join(map(str, hits))})"
            if hits
            else ""
        )
        lines.append(
            f"- {label}: {len(hits)} of {len(updates)} runs reach a {window}-update running "
            f"mean return of {threshold:g}{when}"
        )
    return lines


def metric_table(group: Path, metrics: Sequence[str], by: Sequence[str] = ()) -> str:
    r"""Per configuration (as :func:`success_lines` names them): for each metric, the
    mean over its runs of the run's mean over its updates, :math:`\frac1R \sum_r
    \frac1U \sum_u m_{ru}`; a ratio ``a/b`` takes :math:`m_{ru} = a_{ru} / b_{ru}`.
    Updates that log no value are left out."""
    per_config: dict[str, list[list[float]]] = {}
    for label, records in _by_configuration(group, by).items():
        for record in records:
            with open(record.path / "metrics.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            means = []
            for metric in metrics:
                top, _, bottom = metric.partition("/")
                values = [
                    float(row[top]) / float(row[bottom]) if bottom else float(row[top])
                    for row in rows
                    if row.get(top) and (not bottom or (row.get(bottom) and float(row[bottom])))
                ]
                if not values:
                    raise PglabError(f"{str(record.path)!r} logs no {metric!r} in metrics.csv")
                means.append(sum(values) / len(values))
            per_config.setdefault(label, []).append(means)
    lines = [
        "| configuration | " + " | ".join(f"mean {m}" for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for label, runs in per_config.items():
        cells = [f"{sum(col) / len(col):.3g}" for col in zip(*runs)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduce(
    experiment: Experiment,
    root: Path,
    out: Path,
    command: str,
    echo: Callable[[str], None] = print,
) -> None:
    """Run ``experiment``'s sweeps into ``out``, report them, and write its table, plot
    and figures into the checkout at ``root``."""
    page = _page_with_markers(root / "docs", experiment.name)  # before hours of runs
    if experiment.commands:
        folder = _run_commands(experiment, out, echo)
        table_file = Path(_with_out(experiment.table, folder))
        plot_file = Path(_with_out(experiment.plot, folder))
        runs: dict[str, dict[str, Any]] = {}
    else:
        for spec in experiment.sweeps:
            if not run_sweep(spec, out=out, echo=echo):
                raise PglabError(
                    f"{experiment.name}: runs of {str(spec)!r} failed; see their folders"
                )
        group = group_dir(experiment, out)
        folder = report(group, list(experiment.by) or None, experiment.smooth)
        table_file, plot_file = folder / "report.md", folder / "learning_curves.png"
        runs = run_figures(group)
    version = code_version()
    figures = root / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    picture = plot_file.read_bytes()
    write_atomic(
        figures / f"{experiment.name}.png", lambda temp: temp.write_bytes(picture), figures
    )
    record = {
        "experiment": experiment.name,
        "code": version,
        "command": command,
        "machine": machine(),
        "runs": runs,
    }
    write_text_atomic(
        figures / f"{experiment.name}.json", json.dumps(record, indent=1) + "\n", figures
    )
    table = _table(table_file)
    if experiment.running_mean:
        table += "\n\n" + "\n".join(
            running_mean_lines(group, *experiment.running_mean, experiment.by)
        )
    if experiment.success_at:
        table += "\n\n" + "\n".join(success_lines(group, experiment.success_at, experiment.by))
    if experiment.metrics:
        table += "\n\n" + metric_table(group, experiment.metrics, experiment.by)
    header = (
        f"*Produced by `{command}` at {version} on {record['machine']}.*\n\n"
        f"{table}\n\n![{experiment.title}](experiments/{experiment.name}.png)"
    )
    _write_between_markers(page, experiment.name, header)
    echo(f"{experiment.name}: {page}, {figures / (experiment.name + '.png')}")


def _table(report_md: Path) -> str:
    """The table of a report (and what follows it), without its title and image."""
    lines = report_md.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise RunFailed(f"{str(report_md)!r} holds no table")
    kept = [line for line in lines[start:] if not line.startswith("![")]
    return "\n".join(kept).strip()


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- reproduce: {name} -->", f"<!-- /reproduce: {name} -->"


def _page_with_markers(docs: Path, name: str) -> Path:
    """The one page under ``docs`` that holds ``name``'s markers."""
    begin, end = _markers(name)
    pages = [p for p in sorted(docs.rglob("*.md")) if begin in p.read_text()]
    if len(pages) != 1:
        raise ConfigError(
            f"experiment {name!r}: expected one page under {str(docs)!r} with the markers "
            f"'{begin}' and '{end}'; found {len(pages)}"
        )
    if end not in pages[0].read_text().partition(begin)[2]:
        raise ConfigError(f"{str(pages[0])!r}: '{begin}' has no closing '{end}'")
    return pages[0]


def _write_between_markers(page: Path, name: str, text: str) -> None:
    """Replace what stands between ``name``'s markers in ``page``."""
    begin, end = _markers(name)
    head, _, rest = page.read_text().partition(begin)
    tail = rest.partition(end)[2]
    write_text_atomic(page, f"{head}{begin}\n{text}\n{end}{tail}", page.parent)


def cpu_kind() -> str:
    """The CPU model and the vector instructions torch's kernels use here ("AMD EPYC,
    AVX2"): machines of one kind round alike, so their check runs agree bit for bit;
    another kind (AVX-512 instead of AVX2, another vendor's BLAS path) rounds a few
    float32 sums differently, and a learning run amplifies that into other figures."""
    import torch

    return f"{machine().split(',')[0]}, {torch.backends.cpu.get_cpu_capability()}"


def _cpu_references(root: Path) -> dict[str, Any]:
    path = root / CPU_REFERENCES
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise PglabError(f"{str(path)!r} is not a JSON object of check figures: {error}") from None


def check(
    experiments: Sequence[Experiment],
    root: Path,
    echo: Callable[[str], None] = print,
    pin: bool = False,
) -> bool:
    """Rerun every experiment's ``check`` runs in a temporary folder and compare their
    final figures with the committed ones; True when all agree.

    The committed figures are ``<name>.json``'s, from the machine that made the docs'
    tables, unless :data:`CPU_REFERENCES` holds figures for this machine's
    :func:`cpu_kind`. With ``pin``, the reruns' figures become this kind's entry there
    instead (compare nothing): do that only at a commit whose check passes on the
    figures' own machine, so that the entry is the same code's figures rounded here."""
    if not any(e.check for e in experiments):
        names = ", ".join(e.name for e in experiments)
        raise ConfigError(f"no check runs to rerun: {names} name(s) none under 'check'")
    ok = True
    kind = cpu_kind()
    references = _cpu_references(root)
    here = references.get(kind, {}).get("experiments", {})
    pinned: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pglab-check-") as scratch:
        for experiment in experiments:
            if not experiment.check:
                continue
            committed = here.get(experiment.name) or _committed(root, experiment)
            out = Path(scratch) / experiment.name
            for spec in experiment.sweeps:
                wanted = {run.name for run in load_spec(spec, out).runs} & set(experiment.check)
                if wanted and not run_sweep(spec, out=out, only=wanted, echo=lambda _: None):
                    raise RunFailed(f"{experiment.name}: a check run of {str(spec)!r} failed")
            now = run_figures(group_dir(experiment, out))
            if pin:
                missing = [name for name in experiment.check if name not in now]
                if missing:
                    raise RunFailed(f"{experiment.name}: check run(s) {missing} did not finish")
                pinned[experiment.name] = {name: now[name] for name in experiment.check}
                continue
            for name in experiment.check:
                problems = _differences(committed.get(name), now.get(name))
                ok &= not problems
                verdict = "ok" if not problems else "DIFFERS: " + "; ".join(problems)
                echo(f"{experiment.name} {name}: {verdict}")
    if pin:
        references[kind] = {
            "code": code_version(),
            "machine": machine(),
            "experiments": {**here, **pinned},
        }
        path = root / CPU_REFERENCES
        write_text_atomic(path, json.dumps(references, indent=1) + "\n", path.parent)
        echo(f"check figures of {kind!r} written to {path}")
    return ok


def _committed(root: Path, experiment: Experiment) -> dict[str, dict[str, Any]]:
    path = root / FIGURES / f"{experiment.name}.json"
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PglabError(
            f"{str(path)!r}: no committed figures to check against ({error}); "
            f"run 'pglab reproduce {experiment.name}' first"
        ) from None
    missing = [n for n in experiment.check if n not in runs]
    if missing:
        raise PglabError(f"{str(path)!r} has no run(s) {', '.join(missing)} to check against")
    return runs


def _differences(committed: dict[str, Any] | None, now: dict[str, Any] | None) -> list[str]:
    """What differs between a run's committed and rerun figures (exact, as JSON keeps them)."""
    if now is None:
        return ["the run did not finish"]
    problems = []
    for key in FIGURE_KEYS:
        a, b = (committed or {}).get(key), now.get(key)
        same = a == b or (
            isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        )
        if not same:
            problems.append(f"{key} committed {a!r}, now {b!r}")
    return problems


def default_out(root: Path) -> Path:
    """``runs/reproduce/<commit>``: the runs of one commit's code and specs, resumable;
    a checkout with changes to ``src/`` or ``experiments/`` (or outside git) gets a
    folder of its own each time, so that no run of other code or options is reused."""
    version = code_version()
    try:
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "experiments"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        clean = changed.returncode == 0 and not changed.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        clean = False
    name = version.removeprefix("commit ").removesuffix("-dirty").replace(" ", "-")
    if not (clean and version.startswith("commit ") and not version.endswith("-dirty")):
        name += time.strftime("-changed-%Y%m%d-%H%M%S")
    return root / "runs" / "reproduce" / name
