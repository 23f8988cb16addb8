"""Mechanisms of A2C, PPO and TRPO: clipping, target-KL, the trust region, their losses."""

import dataclasses

import gymnasium as gym
import pytest
import torch

from pglab.algos import make_algo
from pglab.algos.base import gradient_step
from pglab.algos.trpo import conjugate_gradient
from pglab.config import build_config
from pglab.envs import make_vec_env
from pglab.errors import TrainingError
from pglab.losses import approx_kl, clipped_surrogate_loss, clipped_value_loss
from pglab.optim import FlatOptimizer
from pglab.policies import make_actor, make_critic
from pglab.rollout import Collector


@pytest.mark.parametrize(
    ("advantage", "ratio", "gradient"),
    [
        (1.0, 1.5, "zero"),  # A > 0, ratio above 1 + eps: no incentive to push it further
        (1.0, 0.5, "ascent"),  # A > 0, ratio below 1 - eps: still pulled up
        (-1.0, 0.5, "zero"),  # A < 0, ratio below 1 - eps: no incentive to push it lower
        (-1.0, 1.5, "descent"),  # A < 0, ratio above 1 + eps: still pulled down
        (1.0, 1.1, "ascent"),  # inside the range: the plain surrogate
    ],
)
def test_clipped_objective_gradient(advantage, ratio, gradient):
    log_ratio = torch.tensor([float(torch.log(torch.tensor(ratio)))], requires_grad=True)
    loss = clipped_surrogate_loss(log_ratio, torch.tensor([advantage]), clip_range=0.2)
    loss.backward()
    # minimising the loss moves log_ratio by -grad
    step = -log_ratio.grad.item()
    if gradient == "zero":
        assert step == 0.0
    elif gradient == "ascent":
        assert step > 0
    else:
        assert step < 0


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.05, 100.0])
def test_gradient_step_is_torchs_clip_and_step(max_grad_norm):
    torch.manual_seed(0)
    ours, theirs = (make_critic(3, [8]) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    optimizer = FlatOptimizer("adam", ours.parameters(), 0.1)
    reference = torch.optim.Adam(theirs.parameters(), 0.1)
    obs, target = torch.randn(16, 3), torch.randn(16)
    for _ in range(3):
        norm = gradient_step(optimizer, ((ours(obs) - target) ** 2).mean(), max_grad_norm)
        reference.zero_grad()
        ((theirs(obs) - target) ** 2).mean().backward()
        limit = max_grad_norm if max_grad_norm > 0 else float("inf")
        expected = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), limit)
        reference.step()
        assert norm == pytest.approx(float(expected), rel=1e-5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)


def test_gradient_step_refuses_a_non_finite_loss():
    critic = make_critic(3, [8])
    before = [p.detach().clone() for p in critic.parameters()]
    optimizer = FlatOptimizer("adam", critic.parameters(), 0.1)
    loss = critic(torch.full((4, 3), float("nan"))).mean()
    with pytest.raises(TrainingError, match="non-finite"):
        gradient_step(optimizer, loss)
    assert all(torch.equal(a, b) for a, b in zip(before, critic.parameters()))


def test_clipped_value_loss_is_pessimistic():
    old = torch.tensor([0.0])
    target = torch.tensor([1.0])
    # the value jumped past the clip: the clipped prediction (0.2) is farther, so it counts
    loss = clipped_value_loss(torch.tensor([0.9]), old, target, clip_range=0.2)
    assert loss.item() == pytest.approx((0.2 - 1.0) ** 2)
    assert clipped_value_loss(torch.tensor([0.9]), old, target, 0.0).item() == pytest.approx(0.01)


def test_kl_estimators():
    logits_old, logits_new = torch.randn(20000, 3), torch.randn(20000, 3)
    old = torch.distributions.Categorical(logits=logits_old)
    new = torch.distributions.Categorical(logits=logits_new)
    actions = old.sample()
    log_ratio = new.log_prob(actions) - old.log_prob(actions)
    k1, k3 = approx_kl(log_ratio)
    exact = torch.distributions.kl_divergence(old, new).mean()
    assert k1.item() == pytest.approx(exact.item(), rel=0.1)
    assert k3.item() == pytest.approx(exact.item(), rel=0.1)
    assert k3.item() >= 0


def test_conjugate_gradient_solves_spd_systems():
    torch.manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=20)
    assert torch.allclose(a @ x, b, atol=1e-8)


def _setup(algo: str, env_id: str = "CartPole-v1", steps: int = 512, **options):
    config = build_config(
        flags={"algo.name": algo, "env.id": env_id, "run.preset": "none", **options}
    )
    algo_config = config.algo.resolve()
    torch.manual_seed(0)
    envs = make_vec_env(env_id, 4)
    obs_dim = envs.single_observation_space.shape[0]
    actor = make_actor(obs_dim, envs.single_action_space, [16])
    critic = make_critic(obs_dim, [16])
    algo_obj = make_algo(algo_config, actor, critic)
    batch = Collector(envs, actor, critic, seed=0).collect_steps(steps // 4)
    return algo_obj, batch


def test_target_kl_stops_the_epoch_loop():
    algo, batch = _setup("ppo", **{"algo.lr": 0.05, "algo.target_kl": 0.001, "algo.epochs": 10})
    metrics = algo.update(batch, progress=0.0)
    assert metrics["epochs"] < 10
    free, batch = _setup("ppo", **{"algo.lr": 0.05, "algo.epochs": 10})
    assert free.update(batch, progress=0.0)["epochs"] == 10


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_trpo_step_respects_max_kl(env_id):
    algo, batch = _setup("trpo", env_id, steps=1024, **{"algo.max_kl": 0.005})
    obs = batch.obs.flatten(0, 1)[batch.valid.flatten()]
    actor = algo.actor
    with torch.no_grad():
        old_params = actor(obs)
        head_std = getattr(actor.head, "_log_std", None)
        old_log_std = head_std() if head_std is not None else None
    before = [p.detach().clone() for p in actor.parameters()]
    metrics = algo.update(batch, progress=0.0)
    moved = any(not torch.equal(a, b) for a, b in zip(before, actor.parameters()))
    with torch.no_grad():
        kl = actor.head.kl(old_params, actor(obs), old_log_std).mean().item()
    assert moved and metrics["line_search_steps"] >= 1
    assert kl <= 0.005 * (1 + 1e-4)
    assert metrics["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("algo", ["a2c", "ppo", "trpo"])
def test_updates_report_their_metrics(algo):
    algo_obj, batch = _setup(algo)
    metrics = algo_obj.update(batch, progress=0.5)
    expected = set(algo_obj.METRICS) - {"policy_std"}  # CartPole: a discrete policy
    assert expected <= set(metrics), expected - set(metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values())


def test_shared_body_trains_through_one_optimizer():
    config = build_config(overrides=["algo=ppo", "shared=true", "preset=none"])
    from pglab.agent import build_models

    space = gym.spaces.Box(-1, 1, (4,))
    actor, critic = build_models(config, space, gym.spaces.Discrete(2))
    assert critic.body is actor.body
    algo = make_algo(dataclasses.replace(config.algo.resolve()), actor, critic)
    assert len(algo.params) == len(list(actor.parameters())) + 2  # + the value layer


@pytest.mark.parametrize("rule", ["ppo", "a2c"])
def test_a_shared_body_runs_once_per_loss_and_gives_the_two_pass_loss(rule):
    from pglab.agent import build_models
    from pglab.algos import ALGORITHMS
    from pglab.policies import Critic

    config = build_config(overrides=[f"algo={rule}", "shared=true", "preset=none"])
    torch.manual_seed(0)
    actor, critic = build_models(config, gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3))
    n = 16
    mb = {
        "obs": torch.randn(n, 4),
        "actions": torch.randint(0, 3, (n,)),
        "log_probs": torch.full((n,), -1.1),
        "advantages": torch.randn(n),
        "values": torch.randn(n),
        "returns": torch.randn(n),
    }
    rule_class = ALGORITHMS[rule]
    hp = rule_class.hyperparameters(config.algo.resolve(), 0.0)
    passes = []
    actor.body.register_forward_hook(lambda *_: passes.append(1))
    loss, _ = rule_class.loss(actor, critic, mb, hp)
    assert len(passes) == 1
    one = torch.autograd.grad(loss, list(actor.parameters()) + list(critic.value.parameters()))

    # The same critic, reaching the body through a wrapper: not `is actor.body`, a second pass
    apart = Critic(torch.nn.Sequential(actor.body), critic.value.in_features)
    apart.value = critic.value
    loss_two, _ = rule_class.loss(actor, apart, mb, hp)
    assert len(passes) == 3
    two = torch.autograd.grad(loss_two, list(actor.parameters()) + list(critic.value.parameters()))
    assert torch.allclose(loss, loss_two)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one, two))


@pytest.mark.parametrize(
    ("env_id", "head"), [("Pendulum-v1", "tanh_gaussian"), ("CartPole-v1", "bernoulli")]
)
def test_selectable_heads_train_and_act_in_the_env_format(env_id, head, tmp_path):
    import numpy as np

    import pglab

    run = pglab.train(env_id, "ppo", head=head, total_steps=1024, out=str(tmp_path), progress="off")
    agent = pglab.load(run.path)
    assert type(agent.actor.head).__name__.lower().startswith(head.replace("_", ""))
    obs = np.stack([agent.observation_space.sample() for _ in range(32)])
    actions = agent.act(obs, deterministic=False)
    assert all(agent.action_space.contains(a) for a in actions)
    assert np.array_equal(agent.act(obs), run.agent.act(obs))


@pytest.mark.parametrize("rule", ["ppo", "a2c"])
@pytest.mark.parametrize(
    ("space", "options"),
    [
        (gym.spaces.Discrete(3), {}),
        (gym.spaces.Discrete(3), {"normalize": False, "entropy_coef": 0.05, "value_clip": 0.1}),
        (gym.spaces.Box(-1, 1, (2,)), {"entropy_coef": 0.01, "masked": True}),
        (gym.spaces.Box(-1, 1, (2,)), {"value_clip": 0.3, "clip_range": 0.1, "masked": True}),
    ],
)
def test_written_gradient_is_autograds(rule, space, options):
    """The written-out loss gradient of PPO and A2C equals autograd's through their
    ``loss``, with the diagnostics, on a minibatch where many of PPO's ratios are clipped."""
    from pglab.algos import ALGORITHMS
    from pglab.dense import DenseActorCritic

    Rule = ALGORITHMS[rule]

    torch.manual_seed(0)
    actor, critic = make_actor(4, space, [16, 16]).double(), make_critic(4, [16]).double()
    n = 64
    obs = torch.randn(n, 4, dtype=torch.float64)
    actions = actor.act(obs).detach()
    with torch.no_grad():
        log_probs = actor.log_prob_entropy(obs, actions)[0] + 0.3 * torch.randn(n).double()
        values = critic(obs) + 0.2 * torch.randn(n).double()
    mb = {
        "obs": obs,
        "actions": actions,
        "log_probs": log_probs,
        "values": values,
        "advantages": torch.randn(n, dtype=torch.float64),
        "returns": torch.randn(n, dtype=torch.float64),
    }
    if options.get("masked"):
        mb["valid"] = torch.arange(n) % 5 != 0
    hp = {"clip_range": 0.2, "vf_coef": 0.5, "entropy_coef": 0.0, "value_clip": 0.0}
    hp.update({"normalize": True}, **{k: v for k, v in options.items() if k != "masked"})
    hp.update(ratio_low=1.0 - hp["clip_range"], ratio_high=1.0 + hp["clip_range"])
    loss, stats = Rule.loss(actor, critic, mb, hp)
    if rule == "ppo":
        assert 0.1 < float(stats["clip_fraction"]) < 0.95
    named = DenseActorCritic.parameters(actor, critic)
    expected = torch.autograd.grad(loss, list(named.values()))
    net = DenseActorCritic.build(actor, critic)
    params = {k: p.detach() for k, p in named.items()}
    mb.update(Rule.minibatch_constants(mb, hp))
    written_loss, written_stats, grads = Rule.loss_and_gradient(net, params, mb, hp)
    torch.testing.assert_close(written_loss, loss.detach())
    for key, value in stats.items():
        torch.testing.assert_close(written_stats[key], value.detach(), check_dtype=False)
    for name, want in zip(named, expected):
        torch.testing.assert_close(grads[name], want, msg=name)


@pytest.mark.parametrize("rule", ["ppo", "a2c"])
def test_written_gradient_is_taken_unless_told_otherwise(rule):
    actor, critic = make_actor(4, gym.spaces.Discrete(2), [8]), make_critic(4, [8])
    algo = make_algo(build_config(flags={"algo.name": rule}).algo, actor, critic)
    assert algo.dense is not None
    told = build_config(flags={"algo.name": rule, "algo.gradients": "autograd"}).algo
    assert make_algo(told, actor, critic).dense is None
    trpo = make_algo(build_config(flags={"algo.name": "trpo"}).algo, actor, critic)
    assert getattr(trpo, "dense", None) is None
