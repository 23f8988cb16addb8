r"""Population training: several runs trained in one process, stacked along a leading axis.

A population is M members that share everything that fixes a tensor's shape (env,
networks, batch, number of envs) and may differ in their seed and in the
hyperparameters listed in :data:`VARYING`. Each member keeps its own envs, its own
normaliser, its own random streams and its own run folder, written exactly as a
single run writes it (a member's folder can be evaluated or resumed as any run).

One iteration:

1. every member still training collects a batch with its own actor, envs and random
   streams; where the actors act in numpy the members step in lockstep (one call
   acts for all, CartPole envs step in one call, and one vmapped call scores every
   batch with its member's log-probabilities and values);
2. every member's loss and gradient in one call: where the algorithm writes its
   gradient out (PPO on :class:`~pglab.policies.DenseActorCritic` networks), on the
   members' parameters stacked, batched matrix products giving each member its own;
   else ``vmap`` of the loss over ``torch.func.functional_call`` with the members'
   parameters stacked, then one backward pass of the losses' sum: member *m*'s loss
   depends on member *m*'s parameters and data only, so row *m* of each gradient is
   member *m*'s own gradient (vmap only in the forward pass, plain autograd backward,
   is faster than ``vmap(grad(loss))``);
3. one optimizer step for all members, :class:`~pglab.optim.StackedOptimizer`: the rules
   of Adam, RMSprop and SGD are elementwise, so stacked they are M independent
   optimizers; each member has its own learning rate, step count and gradient-norm
   clip, and a member whose approximate KL passed ``target_kl`` stops stepping for
   the rest of the update, as it would alone;
4. the members whose evaluation is due play their episodes, in lockstep as in 1.

Members' parameters *are* the stack, one ``[M, P]`` tensor (each member's
``nn.Parameter`` is a view of its row), so acting, evaluating and checkpointing use
the members' own modules unchanged, and the optimizer's step and the gradient
clipping are a few operations on one tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from pglab.algos.base import JointOptimizer, minibatch_indices
from pglab.config import Config
from pglab.envs import reward_threshold, validate_env_id
from pglab.errors import ConfigError, TrainingError
from pglab.logs import Progress
from pglab.optim import StackedOptimizer
from pglab.rollout import Batch, EpisodeStats, collect_steps_together, run_episodes_together
from pglab.safety import hold_lock
from pglab.train import CONFIG_FILE, Run, Trainer, _new_run_dir, _StopRequest, run_label

#: Options whose values may differ between the members of one population.
VARYING = (
    "run.seed",
    "run.name",
    "algo.lr",
    "algo.entropy_coef",
    "algo.vf_coef",
    "algo.gamma",
    "algo.lam",
    "algo.clip_range",
)


def check_population(configs: Sequence[Config]) -> None:
    """Raise :class:`ConfigError` unless ``configs`` can train as one population."""
    if not configs:
        raise ConfigError("a population needs at least one member; got none")
    first = _flat(configs[0])
    for config in configs[1:]:
        for key, value in _flat(config).items():
            if key not in VARYING and value != first[key]:
                raise ConfigError(
                    f"population members may differ only in {', '.join(VARYING)}; "
                    f"they differ in {key} ({first[key]!r} vs {value!r})"
                )


def _flat(config: Config) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in config.to_dict().items()
        for key, value in values.items()
    }


class _LossModule(nn.Module):
    """A member's actor and critic, whose forward is its algorithm's minibatch loss."""

    def __init__(self, algo: JointOptimizer) -> None:
        super().__init__()
        self.actor = algo.actor
        self.critic = algo.critic
        self.loss = type(algo).loss

    def forward(self, mb: dict[str, Tensor], hp: dict[str, Any]) -> tuple[Tensor, dict]:
        return self.loss(self.actor, self.critic, mb, hp)


class _ScoreModule(nn.Module):
    """A member's actor and critic, whose forward scores a collected batch (see
    :data:`~pglab.rollout.Scorer`); its parameters are named as :class:`_LossModule`'s."""

    def __init__(self, loss_module: _LossModule) -> None:
        super().__init__()
        self.actor = loss_module.actor
        self.critic = loss_module.critic

    def forward(self, obs: Tensor, actions: Tensor, last_obs: Tensor) -> tuple[Tensor, ...]:
        log_probs, _ = self.actor.log_prob_entropy(obs, actions)
        return log_probs, self.critic(obs), self.critic(last_obs)


class Population:
    """Trains the members described by ``configs`` together (see the module's text)."""

    def __init__(self, configs: Sequence[Config]) -> None:
        check_population(configs)
        self.configs = list(configs)
        self.trainers: list[Trainer] = []
        self._rng: list[Tensor] = []
        for config in self.configs:
            trainer = Trainer(config)  # seeds torch with the member's seed, then builds
            if not isinstance(trainer.algo, JointOptimizer):
                raise ConfigError(
                    "population training supports algo ppo and a2c; "
                    f"got {config.algo.name!r} (train its seeds as separate runs)"
                )
            self.trainers.append(trainer)
            self._rng.append(torch.get_rng_state())
        self._generators = [
            torch.Generator().manual_seed(config.run.seed) for config in self.configs
        ]
        self._stack()

    def _stack(self) -> None:
        """Stack the members' parameters into one ``[M, P]`` tensor, a row per member
        (every parameter flattened, in name order), and make each member's parameters
        views of its row."""
        modules = [_LossModule(t.algo) for t in self.trainers]
        self.module = modules[0]  # the structure that functional_call fills in
        self.scorer = _ScoreModule(self.module)
        self.shapes = {name: p.shape for name, p in self.module.named_parameters()}
        self.names = list(self.shapes)
        self.columns: dict[str, slice] = {}
        start = 0
        for name, shape in self.shapes.items():
            self.columns[name] = slice(start, start + shape.numel())
            start += shape.numel()
        member_params = [dict(m.named_parameters()) for m in modules]
        self.flat = torch.stack(
            [torch.cat([p[n].detach().flatten() for n in self.names]) for p in member_params]
        )
        for m, params in enumerate(member_params):
            for name, p in params.items():
                p.data = self.flat[m, self.columns[name]].view(self.shapes[name])
        self.member_params = [[p[n] for n in self.names] for p in member_params]
        cfg = self.configs[0].algo
        self.optimizer = StackedOptimizer(cfg.optimizer, [self.flat], cfg.eps, cfg.weight_decay)
        for m, trainer in enumerate(self.trainers):
            trainer.before_save = lambda m=m: self._export_optimizer(m)

    def _rows(self, members: list[int]) -> Tensor:
        """The members' rows of the stack."""
        if len(members) == len(self.trainers):
            return self.flat
        return self.flat[torch.tensor(members, device=self.flat.device)]

    def unflatten(self, rows: Tensor) -> dict[str, Tensor]:
        """Rows ``[K, P]`` of the stack as parameters ``{name: [K, *shape]}`` (views)."""
        return {n: rows[:, self.columns[n]].unflatten(1, self.shapes[n]) for n in self.names}

    def _export_optimizer(self, member: int) -> None:
        """Write the member's optimizer state into its own optimizer (for checkpoints)."""
        into = self.trainers[member].algo.optimizer
        column = {id(p): self.columns[n] for n, p in zip(self.names, self.member_params[member])}
        into.steps = int(self.optimizer.steps[member])
        for key in into.state:
            row = self.optimizer.state[0][key][member]
            into.state[key] = torch.cat([row[column[id(p)]] for p in into.params])

    @contextlib.contextmanager
    def _member_rng(self, member: int) -> Iterator[None]:
        """Run with the member's own torch random stream."""
        torch.set_rng_state(self._rng[member])
        try:
            yield
        finally:
            self._rng[member] = torch.get_rng_state()

    # ------------------------------------------------------------------ collect

    def collect(self, members: list[int]) -> list[Batch]:
        """The members' batches: in lockstep (:func:`~pglab.rollout.collect_steps_together`)
        where their actors act in numpy and a batch is a number of steps, else one
        member after another; either way each batch is the member's own."""
        trainers = [self.trainers[m] for m in members]
        collectors = [t.collector for t in trainers]
        steps = trainers[0].config.algo.batch_mode == "steps"
        if steps and all(c.acts_in_numpy for c in collectors):
            scorer = functools.partial(self.score, members)
            return collect_steps_together(collectors, trainers[0].steps_per_env, scorer)
        batches = []
        for m, trainer in zip(members, trainers):
            with self._member_rng(m):
                batches.append(trainer.collect())
        return batches

    @torch.no_grad()
    def score(
        self, members: list[int], obs: Tensor, actions: Tensor, last_obs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The members' log-probabilities and values of their batches (see
        :data:`~pglab.rollout.Scorer`), in one call over their stacked parameters."""
        self.scorer.eval()  # as the members collected
        params = self.unflatten(self._rows(members))
        return vmap(lambda p, *data: functional_call(self.scorer, p, data))(
            params, obs, actions, last_obs
        )

    def evaluate(self, members: list[int]) -> dict[int, EpisodeStats]:
        """The evaluation episodes of ``members`` (whose evaluations are due), played in
        lockstep where their actors act in numpy; members that cannot are left to
        evaluate on their own (absent from the result)."""
        evaluators = [self.trainers[m].evaluator for m in members]
        if not members or not all(e.acts_in_numpy for e in evaluators):
            return {}
        run = self.configs[0].run
        played = run_episodes_together(evaluators, run.eval_episodes, run.eval_deterministic)
        return dict(zip(members, played))

    # ------------------------------------------------------------------ update

    def update(self, members: list[int], batches: list[Batch]) -> list[dict[str, float]]:
        """One update of ``members`` on their ``batches``; returns each member's metrics."""
        trainers = [self.trainers[m] for m in members]
        algos = [t.algo for t in trainers]
        lead = algos[0]
        datas = [a.prepare(b, masked=True) for a, b in zip(algos, batches)]
        data = {k: torch.stack([d[k] for d in datas]) for k in datas[0]}
        hps = [
            a.hyperparameters(t.steps / t.config.run.total_steps) for a, t in zip(algos, trainers)
        ]
        device = trainers[0].device
        varying = {
            k: torch.tensor([hp[k] for hp in hps], device=device) for k in lead.LOSS_HYPERPARAMETERS
        }
        fixed = {k: v for k, v in hps[0].items() if k not in varying and k != "lr"}
        lr = torch.tensor([hp["lr"] for hp in hps], device=device)
        index = torch.tensor(members, device=device)
        cfg = lead.config
        size = data["returns"].shape[1]
        going = torch.ones(len(members), dtype=torch.bool, device=device)
        taken = torch.zeros(len(members), device=device)
        totals: dict[str, Tensor] = {}
        per_epoch = 1
        self.module.train()
        rows = torch.arange(len(members), device=device)[:, None]
        for _ in range(lead.epochs):
            parts = [
                minibatch_indices(size, lead.minibatches, self._generators[m]) for m in members
            ]
            per_epoch = len(parts[0])
            for k in range(per_epoch):
                if lead.minibatches > 1:
                    idx = torch.stack([p[k] for p in parts]).to(device)
                    mb = {key: value[rows, idx] for key, value in data.items()}
                else:
                    mb = data
                grads, stats = self.gradients(members, mb, {**fixed, **varying})
                if cfg.target_kl > 0:
                    going &= stats["approx_kl"] <= cfg.target_kl
                if not going.any():
                    break
                stats["grad_norm"] = self._clip(grads, cfg.max_grad_norm, members)
                self.optimizer.step([grads[going]], index[going], lr[going])
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + torch.where(going, value, 0.0)
                taken += going.float()
            if not going.any():
                break

        results = []
        for i, (algo, d) in enumerate(zip(algos, datas)):
            metrics = {key: float(total[i] / max(taken[i], 1.0)) for key, total in totals.items()}
            metrics.update(
                lr=hps[i]["lr"], clip_range=hps[i]["clip_range"], epochs=float(taken[i]) / per_epoch
            )
            results.append(algo.finish_metrics(metrics, d))
        return results

    def gradients(
        self, members: list[int], mb: dict[str, Tensor], hp: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Each member's gradient of its loss on its minibatch, as rows ``[K, P]`` of the stack.

        ``mb`` holds ``[K, B, ...]`` tensors for the K ``members`` (in that order);
        ``hp`` the loss's hyperparameters, ``[K]`` tensors where members differ.
        Returns the gradients and the loss's diagnostics ``[K]``.
        """
        params = self.unflatten(self._rows(members))
        lead = self.trainers[members[0]].algo
        if lead.dense is not None:  # the gradient written out, for all members at once
            with torch.inference_mode():
                _, stats, grads = lead.loss_and_gradient(lead.dense, params, mb, hp)
            return torch.cat([grads[n].flatten(1) for n in self.names], dim=1), stats
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
        varying = {k: v for k, v in hp.items() if isinstance(v, Tensor)}
        fixed = {k: v for k, v in hp.items() if k not in varying}

        def member_loss(params: dict, mb: dict, varying: dict) -> tuple[Tensor, dict]:
            return functional_call(self.module, params, (mb, {**fixed, **varying}))

        loss, stats = vmap(member_loss, randomness="different")(params, mb, varying)
        # Member m's loss depends on row m only: the sum's gradient holds every
        # member's own gradient in its row.
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        return torch.cat([g.flatten(1) for g in grads], dim=1), stats

    def _clip(self, grads: Tensor, max_norm: float, members: list[int]) -> Tensor:
        """Clip each member's global gradient norm (a row of ``grads``) to ``max_norm``
        (> 0) in place; returns the norms before clipping, ``[K]``."""
        norms = grads.norm(dim=1)
        if not torch.isfinite(norms).all():
            bad = members[int((~torch.isfinite(norms)).nonzero()[0])]
            raise TrainingError(
                f"the gradient of member {bad} (seed {self.configs[bad].run.seed}) became "
                "non-finite; lower the learning rate or enable gradient clipping"
            )
        if max_norm > 0:
            grads.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1))
        return norms

    # ------------------------------------------------------------------ loop

    def train(self, progress: str | None = None) -> list[Run]:
        """Train every member to its own end (budget or solved), each into its own run folder.

        One progress display for the whole population (``progress``, by default the
        members' ``run.progress``); health warnings name their member's folder.
        """
        with contextlib.ExitStack() as self._locks:  # one writer per run folder
            return self._train(progress)

    def _train(self, progress: str | None) -> list[Run]:
        for trainer in self.trainers:
            run_dir = _new_run_dir(trainer.config)
            self._locks.enter_context(hold_lock(run_dir, "run folder"))
            (run_dir / CONFIG_FILE).write_text(trainer.config.to_toml())
            trainer.open(run_dir, progress="off")
            trainer.warn_prefix = f"{run_dir.name}: "
        first = self.configs[0]
        total = sum(c.run.total_steps for c in self.configs)
        title = f"{run_label(first)} {first.env.id} x{len(self.trainers)}"
        display = Progress(progress or first.run.progress, total, title)
        stopped = "budget"
        try:
            with _StopRequest() as stop:
                while live := [m for m, t in enumerate(self.trainers) if not t.finished()]:
                    tick = time.perf_counter()
                    batches = self.collect(live)
                    metrics = self.update(live, batches)
                    seconds = time.perf_counter() - tick
                    for m, batch in zip(live, batches):
                        self.trainers[m].count(batch)
                    played = self.evaluate([m for m in live if self.trainers[m].evaluation_due()])
                    for m, batch, row in zip(live, batches, metrics):
                        with self._member_rng(m):
                            self.trainers[m].log_update(batch, row, seconds, played.get(m))
                    display.update(sum(t.steps for t in self.trainers), self._info())
                    if stop.requested:
                        stopped = "interrupted"
                        break
        finally:
            display.update(sum(t.steps for t in self.trainers), self._info(), force=True)
            display.close()
            for trainer in self.trainers:
                trainer.close_logs()
        runs = []
        for trainer in self.trainers:
            with contextlib.suppress(KeyboardInterrupt):
                runs.append(trainer.close(stopped))
        if stopped == "interrupted":
            raise KeyboardInterrupt(str(self.trainers[0].run_dir.parent))
        return runs

    def _info(self) -> dict[str, Any]:
        solved = sum(t.solved_at_step is not None for t in self.trainers)
        evals = [t.last_eval["mean"] for t in self.trainers if t.last_eval is not None]
        return {
            "solved": f"{solved}/{len(self.trainers)}",
            "eval median": float(torch.tensor(evals).median()) if evals else None,
        }


def parse_seeds(text: str) -> list[int]:
    """``0-15`` (a range, both ends included), ``0,3,7`` or ``5``; raises ConfigError."""
    try:
        if "-" in text.strip().lstrip("-"):
            low, high = text.split("-", 1)
            seeds = list(range(int(low), int(high) + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be A-B (A <= B), a list A,B,C or one seed; got {text!r}")
    return seeds


def member_configs(config: Config, seeds: Sequence[int]) -> list[Config]:
    """``config`` once per seed; a given run name gets a ``-seedN`` suffix."""
    configs = []
    for seed in seeds:
        run = dataclasses.replace(config.run, seed=seed)
        if config.run.name:
            run = dataclasses.replace(run, name=f"{config.run.name}-seed{seed}")
        configs.append(dataclasses.replace(config, run=run))
    return configs


def supports_population(config: Config) -> bool:
    """Whether ``config``'s algorithm trains as a stacked population (a2c, ppo)."""
    return config.algo.name in ("a2c", "ppo")


def train_many(configs: Sequence[Config], jobs: int = 1, progress: str | None = None) -> list[Run]:
    """Train every config: as one population where the algorithm allows it (else one
    after another), spread over ``jobs`` processes when ``jobs`` > 1.

    Ctrl-C stops every run at its next update with a checkpoint, then raises
    KeyboardInterrupt naming the group folder.
    """
    for config in configs:
        validate_env_id(config.env.id)
    configs = [c.resolve(reward_threshold(c.env.id)) for c in configs]
    if progress is not None:
        configs = [
            dataclasses.replace(c, run=dataclasses.replace(c.run, progress=progress))
            for c in configs
        ]
    if jobs > 1 and len(configs) > 1:
        return _train_in_processes(configs, jobs)
    if len(configs) > 1 and supports_population(configs[0]):
        check_population(configs)
        return Population(configs).train()
    runs = []
    for config in configs:
        runs.append(_train_one(config))
    return runs


def _train_one(config: Config) -> Run:
    from pglab.train import train

    return train(config)


def _worker(configs: list[Config]) -> list[tuple[str, dict, bool]]:
    """Train a share of the runs in a child process; returns (folder, summary, interrupted)."""
    torch.set_num_threads(1)
    try:
        runs = train_many(configs, jobs=1, progress="off")
    except KeyboardInterrupt:
        return [("", {}, True)]
    return [(str(run.path), run.summary, False) for run in runs]


def _train_in_processes(configs: list[Config], jobs: int) -> list[Run]:
    """Deal ``configs`` round-robin over ``jobs`` processes (a population in each): this
    one trains the first share while new processes start (they import torch anew) and
    train the others."""
    from pglab.agent import load

    shares = [configs[i::jobs] for i in range(min(jobs, len(configs)))]
    for share in shares:
        if len(share) > 1 and supports_population(share[0]):
            check_population(share)
    context = multiprocessing.get_context("spawn")  # fork can deadlock once torch has run
    with _StopRequest() as stop, context.Pool(len(shares) - 1) as pool:
        others = pool.map_async(_worker, shares[1:])
        results = [_worker(shares[0]), *others.get()]
    interrupted = stop.requested or any(flag for result in results for *_, flag in result)
    if interrupted:
        raise KeyboardInterrupt(str(Path(configs[0].run.out) / configs[0].run.group))
    runs: list[Run | None] = [None] * len(configs)
    for i, result in enumerate(results):  # share i holds configs i, i + jobs, i + 2 jobs, ...
        for k, (path, summary, _) in enumerate(result):
            runs[i + k * len(shares)] = Run(Path(path), load(path), summary)
    return runs
