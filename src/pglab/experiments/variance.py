r"""``pglab variance RUN``: how noisy is each policy-gradient estimator, at fixed policies?

At each policy snapshot of a run (``checkpoints/step-N.pt``, kept with
``run.keep_checkpoints``, and ``last.pt``), draw ``B`` independent batches of ``K``
complete episodes with the snapshot's policy. On every batch, compute each weight kind
:math:`\Psi^{(k)}` (``r``, ``fr``, ``dfr``, and with a critic ``dfrb``, ``td``,
``gae``) from the *same* data, and the policy-gradient estimate

.. math:: \hat g^{(k)} = \frac1{|\mathcal V|}\sum_{(t,i)\in\mathcal V}
          \nabla_\theta \log\pi_\theta(a_t^i \mid s_t^i)\,\Psi^{(k)}_{t,i}.

Over the ``B`` batches this reports, per kind:

* the total variance, the trace of the covariance of :math:`\hat g`:
  :math:`\operatorname{tr}\Sigma = \frac1{B-1}\sum_b \lVert \hat g_b - \bar g \rVert^2`;
* the variance along the mean gradient, :math:`\operatorname{Var}[\hat g_b \cdot u]`
  with :math:`u = \bar g / \lVert \bar g\rVert` (the noise in the direction that matters);
* :math:`\lVert \bar g \rVert`, so that a small variance of a tiny gradient is not
  mistaken for a good estimator;
* the variance of the weights :math:`\Psi` themselves over all valid samples, the
  proxy the classic experiments measured.

Weights are used raw (not standardised) unless ``normalize`` is set, so that the
kinds are compared on the same scale as the gradient they define.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pglab.agent import build_models, build_normalizer, load_weights, stored_config
from pglab.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint
from pglab.envs import make_configured_env
from pglab.errors import ConfigError, PglabError
from pglab.logs import Progress
from pglab.losses import policy_gradient_loss
from pglab.nets import under_masks
from pglab.paths import make_dirs, no_links_below, write_atomic, write_text_atomic
from pglab.returns import (
    CRITIC_WEIGHTS,
    WEIGHT_KINDS,
    masked_var,
    policy_gradient_weights,
    standardize,
)
from pglab.rollout import Collector

VARIANCE_DIR = "variance"


@dataclass
class Estimate:
    """The variance figures of one weight kind at one snapshot."""

    snapshot: str
    step: int
    kind: str
    trace: float
    along_mean: float
    mean_norm: float
    weight_var: float


def snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, file)`` of every kept checkpoint of the run, ``last.pt`` included."""
    folder = run_dir / CHECKPOINT_DIR
    found = []
    for file in folder.glob("step-*.pt"):
        step = file.stem.removeprefix("step-")
        if step.isdigit():
            found.append((int(step), file))
    last = folder / LAST
    if last.is_file():
        try:
            steps = int(load_checkpoint(last)["counters"]["steps"])
        except (KeyError, TypeError, ValueError):
            raise PglabError(f"{str(last)!r} holds no step counter; it cannot be studied") from None
        if steps not in {s for s, _ in found}:
            found.append((steps, last))
    if not found:
        raise PglabError(f"{str(run_dir)!r} has no checkpoints to study (no {CHECKPOINT_DIR}/)")
    return sorted(found)


def estimate(
    state: dict,
    kinds: list[str],
    batches: int,
    episodes: int,
    *,
    gamma: float,
    lam: float,
    normalize: bool = False,
    seed: int = 0,
    source: str = "checkpoint",
    allow_import: Iterable[str] = (),
    tick: Callable[[], None] | None = None,
) -> dict[str, tuple[float, float, float, float]]:
    """``kind -> (trace, along_mean, mean_norm, weight_var)`` at the checkpoint ``state``
    (read from ``source``; ``allow_import`` as for :func:`pglab.load`); ``tick`` is
    called after each batch."""
    config = stored_config(state, source, allow_import)
    envs = make_configured_env(config.env, episodes)
    actor, critic = build_models(config, envs.single_observation_space, envs.single_action_space)
    load_weights(actor, state.get("actor"), source, "actor")
    if critic is not None and state.get("critic"):
        load_weights(critic, state["critic"], source, "critic")
    normalizer = build_normalizer(
        config, envs.single_observation_space, envs.single_action_space, episodes
    )
    if normalizer is not None:
        load_weights(normalizer, state.get("normalizer"), source, "normalizer")
    torch.manual_seed(seed)
    collector = Collector(
        envs, actor, critic, seed=seed, normalizer=normalizer, update_normalizer=False
    )
    params = [p for p in actor.parameters() if p.requires_grad]
    gradients: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    weights: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    try:
        for _ in range(batches):
            batch = collector.collect_episodes(episodes)
            keys = None if batch.dropout_keys is None else batch.dropout_keys.flatten()
            with under_masks(actor, keys):  # the network that acted, masks included
                log_probs, _ = actor.log_prob_entropy(
                    batch.obs.flatten(0, 1), batch.actions.flatten(0, 1)
                )
            log_probs = log_probs.view_as(batch.rewards)
            for kind in kinds:
                psi = policy_gradient_weights(
                    kind,
                    rewards=batch.rewards,
                    terminated=batch.terminated,
                    truncated=batch.truncated,
                    gamma=gamma,
                    lam=lam,
                    values=batch.values,
                    next_values=batch.next_values,
                    valid=batch.valid,
                )
                used = standardize(psi, batch.valid) if normalize else psi
                loss = policy_gradient_loss(log_probs, used, batch.valid)
                grads = torch.autograd.grad(loss, params, retain_graph=True)
                gradients[kind].append(-torch.cat([g.flatten() for g in grads]).numpy())
                weights[kind].append(psi[batch.valid].detach().numpy())
            if tick is not None:
                tick()
    finally:
        envs.close()
    results = {}
    for kind in kinds:
        g = np.stack(gradients[kind])
        mean = g.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        trace = float(((g - mean) ** 2).sum(axis=1).sum() / max(len(g) - 1, 1))
        along = float(np.var(g @ (mean / norm), ddof=1)) if norm > 0 and len(g) > 1 else 0.0
        pooled = torch.from_numpy(np.concatenate(weights[kind]))
        results[kind] = (trace, along, norm, float(masked_var(pooled)))
    return results


def study(
    run_dir: str | Path,
    *,
    kinds: list[str] | None = None,
    batches: int = 50,
    episodes: int = 10,
    gamma: float | None = None,
    lam: float | None = None,
    normalize: bool = False,
    which: str = "all",
    out: str | Path | None = None,
    allow_import: Iterable[str] = (),
    progress_mode: str = "auto",
) -> Path:
    """Estimate the variances at the run's snapshots (``progress_mode``: how the batches
    done show, see :class:`~pglab.logs.Progress`); writes ``variance.md``,
    ``variance.csv`` and ``variance.png`` to ``out`` (default ``RUN/variance/``).

    ``allow_import`` names the modules the run's env id may import (see
    :func:`pglab.load`). Nothing is written outside ``out`` or through a link."""
    run_dir = Path(run_dir)
    if batches < 2:
        raise ConfigError(f"--batches must be an integer >= 2; got {batches}")
    if episodes < 1:
        raise ConfigError(f"--episodes must be an integer >= 1; got {episodes}")
    if which not in ("all", "last"):
        raise ConfigError(f"--snapshots must be all or last; got {which!r}")
    found = snapshots(run_dir)
    if which == "last":
        found = found[-1:]
    first = load_checkpoint(found[0][1])
    config = stored_config(first, str(found[0][1]), allow_import)
    has_critic = bool(first.get("critic"))
    wanted = kinds or [k for k in WEIGHT_KINDS if has_critic or k not in CRITIC_WEIGHTS]
    unknown = [k for k in wanted if k not in WEIGHT_KINDS]
    if unknown:
        raise ConfigError(
            f"--weights must be some of {', '.join(WEIGHT_KINDS)}; got {unknown[0]!r}"
        )
    if not has_critic and any(k in CRITIC_WEIGHTS for k in wanted):
        raise ConfigError(
            f"weights {', '.join(k for k in wanted if k in CRITIC_WEIGHTS)} need a critic; "
            "this run has none (train it with a critic, e.g. --weights gae)"
        )
    gamma = config.algo.gamma if gamma is None else gamma
    lam = config.algo.lam if lam is None else lam
    root = Path(out) if out is not None else run_dir
    out = Path(out) if out is not None else run_dir / VARIANCE_DIR
    no_links_below(root, out)  # refused before any work: nothing is written through a link
    rows = []
    progress = Progress(
        progress_mode, len(found) * batches, f"variance {run_dir.name}", unit="batches"
    )
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        progress.update(done, {})

    for step, file in found:
        figures = estimate(
            load_checkpoint(file),
            wanted,
            batches,
            episodes,
            gamma=gamma,
            lam=lam,
            normalize=normalize,
            source=str(file),
            allow_import=allow_import,
            tick=tick,
        )
        for kind, (trace, along, norm, weight_var) in figures.items():
            rows.append(Estimate(file.name, step, kind, trace, along, norm, weight_var))
    progress.close()
    make_dirs(out, root)
    _write(out, root, rows, run_dir, batches, episodes, gamma, lam, normalize)
    write_atomic(out / "variance.png", lambda temp: _plot(temp, rows, wanted), root)
    return out


def _write(
    out: Path,
    root: Path,
    rows: list[Estimate],
    run_dir: Path,
    batches: int,
    episodes: int,
    gamma: float,
    lam: float,
    normalize: bool,
) -> None:
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(
        [
            "snapshot",
            "step",
            "weights",
            "trace_cov",
            "var_along_mean",
            "mean_norm",
            "weight_var",
        ]
    )
    for r in rows:
        writer.writerow(
            [r.snapshot, r.step, r.kind, r.trace, r.along_mean, r.mean_norm, r.weight_var]
        )
    lines = [
        f"# Gradient variance: {run_dir.name}",
        "",
        f"{batches} independent batches of {episodes} episodes per snapshot; gamma {gamma}, "
        f"lambda {lam}; weights {'standardised' if normalize else 'raw'}.",
        "",
        "| step | weights | tr Cov[g] | Var along mean g | norm of mean g | Var[Psi] |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.step:,} | {r.kind} | {r.trace:.4g} | {r.along_mean:.4g} | "
            f"{r.mean_norm:.4g} | {r.weight_var:.4g} |"
        )
    lines += ["", "![variance](variance.png)", ""]
    write_text_atomic(out / "variance.csv", table.getvalue(), root)
    write_text_atomic(out / "variance.md", "\n".join(lines), root)


def _plot(path: Path, rows: list[Estimate], kinds: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r.step for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    width = 0.8 / max(len(steps), 1)
    for i, step in enumerate(steps):
        at = {r.kind: r for r in rows if r.step == step}
        x = np.arange(len(kinds)) + i * width
        axes[0].bar(x, [at[k].trace for k in kinds], width, label=f"step {step:,}")
        axes[1].bar(x, [at[k].weight_var for k in kinds], width, label=f"step {step:,}")
    for ax, title in zip(axes, ("trace of Cov[gradient estimate]", "variance of the weights Psi")):
        ax.set_xticks(np.arange(len(kinds)) + width * (len(steps) - 1) / 2, kinds)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
