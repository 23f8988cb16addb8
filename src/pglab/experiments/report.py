r"""``pglab report runs/<group>``: each configuration over its seeds, as a table and curves.

Runs are grouped into configurations by the options named with ``--by``; without it,
by the options a sweep varied (read from the folder names ``<options>,seed=<n>`` that
``pglab sweep`` gives), else by every option that differs between the runs but the seed. For
each configuration, over its seeds, of these figures per run:

* the final evaluation (``eval_return_mean`` of ``summary.json``);
* the success rate of the final evaluation, where the env reports one;
* the normalised area under the learning curve (the training episodes' mean return
  per update, against steps), :math:`\mathrm{AUC} = \frac1S\int_0^S R(s)\,ds` with
  :math:`S` the longest run's steps and a run that stopped early (solved) holding its
  last value;

the table gives the mean, the standard deviation, the interquartile mean (IQM, the
mean of the middle half of the sorted values; Agarwal et al. 2021) and a 95%
percentile-bootstrap confidence interval of the mean. ``learning_curves.png`` draws
each configuration's mean curve with its bootstrap 95% band (each run's curve first
smoothed by a moving average of ``smooth`` updates, when asked). The IQM of fewer than
four values is their mean and a bootstrap CI from so few seeds is too narrow to trust:
such cells are marked and the report says so. Legends and configuration names hold only
the options needed to tell the configurations apart (each by its last name). Everything
goes to
``runs/<group>/report/``. A run's options are those it trained with (its checkpoint's,
as ``--resume`` uses them): a ``config.toml`` edited since gets a warning and is not used.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pglab.errors import PglabError
from pglab.member import CONFIG_FILE
from pglab.paths import make_dirs, write_atomic, write_text_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPORT_DIR = "report"
_BOOTSTRAP = 2000
_GRID = 200
_SWEEP_NAME = re.compile(r"(.*?),?seed=\d+")
#: Options that name a configuration best, preferred when they tell runs apart as well.
_NAMED_FIRST = ("env.id", "algo.name", "algo.weights")
_IGNORED = {"run.seed", "run.name", "run.out", "run.group", "run.progress"}


@dataclass
class RunRecord:
    """One finished run: its options (flat), summary and learning curve."""

    path: Path
    options: dict[str, Any]
    summary: dict[str, Any]
    steps: np.ndarray
    returns: np.ndarray


def load_runs(group_dir: Path) -> list[RunRecord]:
    """Every run folder under ``group_dir`` with a ``summary.json``.

    A run whose ``summary.json``, ``config.toml`` or ``metrics.csv`` is missing or
    malformed is left out, with a warning line on stderr naming the file.
    """
    records = []
    for summary_file in sorted(group_dir.glob("*/summary.json")):
        try:
            records.append(_load_run(summary_file))
        except _Unreadable as skipped:
            print(f"pglab: warning: skipping run {skipped}", file=sys.stderr)
    return records


class _Unreadable(Exception):
    """A run file that cannot be read; ``str()`` names it and says why."""


def _load_run(summary_file: Path) -> RunRecord:
    folder = summary_file.parent
    current = summary_file
    try:
        summary = json.loads(summary_file.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        current = folder / CONFIG_FILE
        config, edited = trained_config(folder)
        if edited:
            print(
                f"pglab: warning: {current} was edited after the run trained; "
                "the report uses the options the run trained with (its checkpoint's)",
                file=sys.stderr,
            )
        options = {f"{s}.{k}": v for s, values in config.items() for k, v in values.items()}
        current = folder / "metrics.csv"
        steps, returns = [], []
        with open(current, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("episode_return_mean"):
                    steps.append(int(row["step"]))
                    returns.append(float(row["episode_return_mean"]))
    except OSError as error:
        raise _Unreadable(f"{str(current)!r}: {error.strerror or error}") from None
    except (ValueError, TypeError, AttributeError, KeyError, csv.Error, PglabError) as error:
        # bad JSON, TOML, numbers or columns (TOMLDecodeError and UnicodeDecodeError
        # are ValueErrors)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _Unreadable(f"{str(current)!r}: not readable ({reason})") from None
    return RunRecord(folder, options, summary, np.array(steps), np.array(returns))


def trained_config(run_dir: str | Path) -> tuple[dict[str, Any], bool]:
    """The options the run in ``run_dir`` trained with, as a nested dict, and whether
    its ``config.toml`` says otherwise (was edited since).

    The checkpoint's config is the one training used (``--resume`` reads it, never
    ``config.toml``); without a checkpoint, ``config.toml`` is all there is.
    """
    from pglab.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint

    run_dir = Path(run_dir)
    written = run_dir / CONFIG_FILE
    text = tomllib.loads(written.read_text()) if written.is_file() else None
    if not (run_dir / CHECKPOINT_DIR / LAST).is_file():
        if text is None:
            raise PglabError(f"{str(run_dir)!r} has neither {CONFIG_FILE} nor a checkpoint")
        return text, False
    import tomli_w

    saved = load_checkpoint(run_dir)["config"]
    # Both through TOML, so that only a change of value counts (not of layout or types).
    return saved, text is not None and tomllib.loads(tomli_w.dumps(saved)) != text


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle half of the sorted values (all of
    them when there are fewer than 4)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    cut = len(ordered) // 4
    return float(ordered[cut : len(ordered) - cut].mean())


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = _BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean (a point for one value)."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def curve_on_grid(record: RunRecord, grid: np.ndarray, smooth: int = 1) -> np.ndarray:
    r"""The run's learning curve at ``grid`` steps (its first value before its first
    update, its last value after its last), after a trailing moving average of
    ``smooth`` updates (:math:`k`): :math:`\bar R_i = \frac{1}{|W_i|} \sum_{j \in W_i} R_j`
    with :math:`W_i = \{\max(0, i - k + 1), \dots, i\}`."""
    if len(record.steps) == 0:
        return np.full(len(grid), np.nan)
    returns = np.asarray(record.returns, dtype=float)
    if smooth > 1:
        sums = np.concatenate([[0.0], np.cumsum(returns)])
        ends = np.arange(1, len(returns) + 1)
        starts = np.maximum(0, ends - smooth)
        returns = (sums[ends] - sums[starts]) / (ends - starts)
    return np.interp(grid, record.steps, returns)


def configuration_label(options: dict[str, Any], keys: Sequence[str]) -> str:
    """A run's configuration named by the values of ``keys`` (qualified options)."""
    parts = []
    for key in keys:
        value = options.get(key)
        shown = "x".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key.split('.')[-1]}={shown}")
    return ", ".join(parts) or "all runs"


def varying_options(records: Sequence[RunRecord]) -> list[str]:
    """Options whose values differ between the runs (seed and bookkeeping aside)."""
    keys = sorted({k for r in records for k in r.options} - _IGNORED)
    return [k for k in keys if len({json.dumps(r.options.get(k)) for r in records}) > 1]


def distinguishing_options(records: Sequence[RunRecord], keys: Sequence[str]) -> list[str]:
    """The fewest of ``keys`` (chosen greedily, in their order) that split ``records``
    into the same configurations as all of them: runs of different envs differ in
    every option their presets set, yet ``env.id`` alone tells them apart."""

    def split(chosen: Sequence[str]) -> int:
        return len({tuple(json.dumps(r.options.get(k)) for k in chosen) for r in records})

    def preference(key: str) -> tuple[int, int]:  # the most telling first, the env's id in ties
        return split([*chosen, key]), -_NAMED_FIRST.index(key) if key in _NAMED_FIRST else -9

    target, chosen = split(keys), []
    while split(chosen) < target:
        chosen.append(max((k for k in keys if k not in chosen), key=preference))
    return [k for k in keys if k in chosen]


def _known(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _stats(values: list[float]) -> dict[str, float]:
    low, high = bootstrap_ci(values)
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "iqm": iqm(values),
        "ci_low": low,
        "ci_high": high,
    }


def report(group_dir: str | Path, by: Sequence[str] | None = None, smooth: int = 1) -> Path:
    """Write ``report.md``, ``report.csv`` and ``learning_curves.png`` for the runs in
    ``group_dir`` (curves smoothed over ``smooth`` updates); returns the report folder."""
    from pglab.config import qualify

    group_dir = Path(group_dir)
    if not group_dir.is_dir():
        raise PglabError(f"pglab report expects a run group folder; {str(group_dir)!r} is not one")
    records = load_runs(group_dir)
    if not records:
        raise PglabError(
            f"no finished runs (readable folders with summary.json) in {str(group_dir)!r}"
        )
    if not isinstance(smooth, int) or smooth < 1:
        raise PglabError(f"--smooth must be an integer >= 1 (updates); got {smooth!r}")
    groups: dict[str, list[RunRecord]] = {}
    swept = [_SWEEP_NAME.fullmatch(r.path.name) for r in records]
    if by:
        keys = [qualify(k, "--by") for k in by]
        label = [configuration_label(r.options, keys) for r in records]
        grouping = ", ".join(keys)
    elif all(swept):  # folders named by a sweep: the varied options, then the seed
        label = [m.group(1) or "all runs" for m in swept]
        grouping = "the options the sweep varied"
    else:
        keys = distinguishing_options(records, varying_options(records))
        label = [configuration_label(r.options, keys) for r in records]
        grouping = ", ".join(keys) or "nothing"
    for record, name in zip(records, label):
        groups.setdefault(name, []).append(record)

    longest = max((int(r.steps[-1]) for r in records if len(r.steps)), default=1)
    grid = np.linspace(0, longest, _GRID)
    rows, curves = [], {}
    for label, members in groups.items():
        finals = _known(m.summary.get("eval_return_mean") for m in members)
        successes = _known(m.summary.get("eval_success_rate") for m in members)
        on_grid = np.array([curve_on_grid(m, grid, smooth) for m in members])
        aucs = [float(np.nanmean(c)) for c in on_grid if not np.isnan(c).all()]
        rows.append(
            {
                "configuration": label,
                "runs": len(members),
                "final": _stats(finals) if finals else None,
                "auc": _stats(aucs) if aucs else None,
                "success": _stats(successes) if successes else None,
            }
        )
        curves[label] = on_grid

    out = make_dirs(group_dir / REPORT_DIR, group_dir)
    write_text_atomic(out / "report.md", _markdown(group_dir, rows, grouping, len(records)), out)
    write_text_atomic(out / "report.csv", _csv(rows), out)

    def plot(temp: Path) -> None:
        _plot(temp, grid, curves, group_dir.name, smooth)

    write_atomic(out / "learning_curves.png", plot, out)
    return group_dir / REPORT_DIR


#: Below this many seeds the IQM is the mean and the bootstrap CI is too narrow to trust.
FEW = 4


def _cell(stats: dict[str, float] | None, runs: int) -> list[str]:
    if stats is None:
        return ["n/a"] * 3
    mark = "†" if runs < FEW else ""
    return [
        f"{stats['mean']:.1f} ± {stats['std']:.1f}",
        f"{stats['iqm']:.1f}{mark}",
        f"[{stats['ci_low']:.1f}, {stats['ci_high']:.1f}]{mark}",
    ]


def _markdown(group_dir: Path, rows: list[dict], grouping: str, runs: int) -> str:
    success = any(r["success"] is not None for r in rows)
    lines = [
        f"# Report: {group_dir.name}",
        "",
        f"{runs} runs in {len(rows)} configurations (by {grouping}). "
        "Final: the last deterministic evaluation; AUC: the mean training return over "
        "the steps. Mean ± std over seeds, IQM, and a 95% bootstrap CI of the mean.",
        "",
        "| configuration | runs | final mean ± std | final IQM | final 95% CI "
        "| AUC mean ± std | AUC IQM | AUC 95% CI |"
        + (" success rate (95% CI) |" if success else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if success else ""),
    ]
    ordered = sorted(rows, key=lambda r: -(r["final"] or {"mean": -math.inf})["mean"])
    for row in ordered:
        n = row["runs"]
        cells = [row["configuration"], str(n), *_cell(row["final"], n), *_cell(row["auc"], n)]
        if success:
            rate = row["success"]
            cells.append(
                "n/a"
                if rate is None
                else f"{rate['mean']:.0%} [{rate['ci_low']:.0%}, {rate['ci_high']:.0%}]"
            )
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["runs"] < FEW for r in rows):
        lines += [
            "",
            f"† fewer than {FEW} runs: the IQM is their mean, and a bootstrap CI from so few "
            "values is narrower than the truth; run more seeds before trusting it.",
        ]
    lines += ["", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    fields = ["configuration", "runs"] + [
        f"{figure}_{stat}"
        for figure in ("final", "auc", "success")
        for stat in ("mean", "std", "iqm", "ci_low", "ci_high")
    ]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fields)
    writer.writeheader()
    for row in rows:
        flat = {"configuration": row["configuration"], "runs": row["runs"]}
        for figure in ("final", "auc", "success"):
            for stat, value in (row[figure] or {}).items():
                flat[f"{figure}_{stat}"] = round(value, 4)
        writer.writerow(flat)
    return table.getvalue()


def _plot(
    path: Path, grid: np.ndarray, curves: dict[str, np.ndarray], title: str, smooth: int = 1
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    rng = np.random.default_rng(0)
    for label, runs in curves.items():
        runs = runs[~np.isnan(runs).all(axis=1)]
        if not len(runs):
            continue
        mean = runs.mean(axis=0)
        picks = rng.integers(0, len(runs), size=(_BOOTSTRAP // 4, len(runs)))
        means = runs[picks].mean(axis=1)
        low, high = np.quantile(means, [0.025, 0.975], axis=0)
        (line,) = ax.plot(grid, mean, label=f"{label} (n={len(runs)})", linewidth=1.4)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(
        "training episode return" + (f" (moving average of {smooth} updates)" if smooth > 1 else "")
    )
    ax.set_title(f"{title}: mean over seeds, 95% bootstrap band")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # runs too short for a curve draw none
        ax.legend(fontsize=7, loc="best", ncol=1 if len(curves) <= 12 else 2)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
