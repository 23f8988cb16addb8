"""Models: heads against closed forms and torch.distributions; unsupported spaces."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab.dense import DenseActorCritic, gaussian_vjp
from pglab.envs.spaces import check_spaces
from pglab.errors import EnvError
from pglab.nets import mlp
from pglab.policies import (
    BernoulliHead,
    CategoricalHead,
    GaussianHead,
    GSDEHead,
    TanhGaussianHead,
    make_actor,
    make_critic,
    orthogonal_init,
    shared_critic,
)


def test_linear_softmax_gradient_matches_closed_form():
    torch.manual_seed(0)
    space = gym.spaces.Discrete(3)
    actor = make_actor(4, space, hidden=[])
    (linear,) = [m for m in actor.modules() if isinstance(m, torch.nn.Linear)]
    s = torch.randn(4)
    for a in range(3):
        actor.zero_grad()
        log_prob, _ = actor.log_prob_entropy(s.unsqueeze(0), torch.tensor([a]))
        log_prob.sum().backward()
        pi = torch.softmax(linear(s), -1).detach()
        indicator = torch.nn.functional.one_hot(torch.tensor(a), 3).float()
        expected = torch.outer(indicator - pi, s)  # d log pi(a|s) / dW_k = s (1[k=a] - pi_k)
        assert torch.allclose(linear.weight.grad, expected, atol=1e-6)
        assert torch.allclose(linear.bias.grad, indicator - pi, atol=1e-6)


def test_mlp_shapes_and_dropout():
    net = mlp(4, [8, 8], 2, "relu", dropout=0.1)
    assert net(torch.randn(5, 4)).shape == (5, 2)
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == 2
    assert len(mlp(4, [], None)) == 0


def test_keyed_dropout_masks_are_a_function_of_the_key_and_drop_at_the_rate():
    from pglab.nets import KeyedDropout, dropout_keys, keyed_uniform

    keys = torch.randint(0, 2**30, (4000,))
    layer = KeyedDropout(0.3)
    x = torch.ones(4000, 64)
    with dropout_keys(keys):
        first, again = layer(x), layer(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert first.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert abs((first == 0).float().mean().item() - 0.3) < 0.01
    with dropout_keys(keys.flip(0)):  # each sample's mask follows its key
        torch.testing.assert_close(layer(x), first.flip(0), rtol=0, atol=0)
    other_layer = keyed_uniform(keys, 1, 64) >= 0.3
    assert (other_layer != (first > 0)).float().mean() > 0.3  # layers draw apart
    layer.eval()
    with dropout_keys(keys):
        assert torch.equal(layer(x), x)  # evaluation and export: the identity
    layer.train()
    with dropout_keys(keys[:10]), pytest.raises(ValueError, match="one key per sample"):
        layer(x)
    with dropout_keys(keys[:3]):  # features of any shape after the sample's axis
        cube = layer(torch.ones(3, 5, 7))
    with dropout_keys(keys[:3].flip(0)):
        torch.testing.assert_close(layer(torch.ones(3, 5, 7)), cube.flip(0), rtol=0, atol=0)


def test_categorical_head_matches_torch():
    head = CategoricalHead(3, 4)
    logits = torch.randn(6, 4)
    actions = torch.randint(0, 4, (6,))
    reference = torch.distributions.Categorical(logits=logits)
    assert torch.allclose(head.log_prob(logits, actions), reference.log_prob(actions))
    assert torch.allclose(head.entropy(logits), reference.entropy())
    log_prob, entropy = head.log_prob_entropy(logits, actions)
    assert torch.allclose(log_prob, reference.log_prob(actions))
    assert torch.allclose(entropy, reference.entropy())


def test_categorical_sampling_frequencies():
    torch.manual_seed(0)
    head = CategoricalHead(1, 3)
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(40_000, 3)
    counts = torch.bincount(head.sample(logits), minlength=3).float() / 40_000
    assert torch.allclose(counts, torch.tensor([0.2, 0.3, 0.5]), atol=0.01)


def test_bernoulli_head_matches_torch():
    head = BernoulliHead(3)
    logit = torch.randn(8)
    actions = torch.randint(0, 2, (8,))
    reference = torch.distributions.Bernoulli(logits=logit)
    assert torch.allclose(head.log_prob(logit, actions), reference.log_prob(actions.float()))
    assert torch.allclose(head.entropy(logit), reference.entropy())


def test_gaussian_head_matches_torch():
    head = GaussianHead(3, 2, log_std_init=-0.5)
    mean = torch.randn(5, 2)
    actions = torch.randn(5, 2)
    std = torch.exp(torch.tensor(-0.5))
    reference = torch.distributions.Normal(mean, std)
    assert torch.allclose(head.log_prob(mean, actions), reference.log_prob(actions).sum(-1))
    assert torch.allclose(head.entropy(mean), reference.entropy().sum(-1))


def test_bernoulli_needs_two_actions():
    with pytest.raises(ValueError, match="Discrete\\(2\\)"):
        make_actor(4, gym.spaces.Discrete(3), [8], head="bernoulli")


@pytest.mark.parametrize(
    ("obs", "act", "words"),
    [
        (gym.spaces.Dict({"a": gym.spaces.Text(4)}), gym.spaces.Discrete(2), "observation a"),
        (gym.spaces.Text(3), gym.spaces.MultiBinary(3), "Text"),
        (gym.spaces.Box(-1, 1, (3,)), gym.spaces.Tuple([gym.spaces.Discrete(2)]), "Tuple"),
        (gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-1, 1, (2, 2)), "1-D Box"),
    ],
)
def test_unsupported_spaces_get_one_line(obs, act, words):
    with pytest.raises(EnvError) as error:
        check_spaces("X-v0", obs, act)
    message = str(error.value)
    assert "\n" not in message and words in message and "supports" in message


def test_actor_acts_on_a_batch():
    actor = make_actor(2, gym.spaces.Box(-1, 1, (3,), dtype=np.float32), [8])
    assert actor.act(torch.randn(4, 2)).shape == (4, 3)
    assert torch.equal(actor.act(torch.ones(1, 2), True), actor.act(torch.ones(1, 2), True))


def test_numpy_actor_acts_like_the_torch_actor():
    from pglab.mirror import NumpyActor

    torch.manual_seed(0)
    obs = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    for space, hidden, head in [
        (gym.spaces.Discrete(3), [8, 8], "auto"),
        (gym.spaces.Discrete(2), [], "bernoulli"),
        (gym.spaces.Box(-1, 1, (2,), dtype=np.float32), [8], "auto"),
    ]:
        actor = make_actor(4, space, hidden, head=head)
        mirror = NumpyActor.build(actor)
        expected = actor.act(torch.from_numpy(obs), deterministic=True).detach().numpy()
        assert np.allclose(mirror.act(obs, deterministic=True), expected, atol=1e-5)
        # after an update the mirror follows once synced
        with torch.no_grad():
            for p in actor.parameters():
                p.add_(0.5)
        mirror.sync()
        expected = actor.act(torch.from_numpy(obs), deterministic=True).detach().numpy()
        assert np.allclose(mirror.act(obs, deterministic=True), expected, atol=1e-5)


def test_numpy_actor_samples_the_policy_distribution():
    from pglab.mirror import NumpyActor

    torch.manual_seed(1)
    actor = make_actor(2, gym.spaces.Discrete(3), [4])
    mirror = NumpyActor.build(actor)
    obs = np.tile(np.array([[0.3, -0.7]], dtype=np.float32), (60_000, 1))
    probs = torch.softmax(actor(torch.from_numpy(obs[:1])), -1).detach().numpy()[0]
    freq = np.bincount(mirror.act(obs), minlength=3) / len(obs)
    assert np.allclose(freq, probs, atol=0.01)
    gaussian = make_actor(2, gym.spaces.Box(-1, 1, (1,), dtype=np.float32), [], log_std_init=-1.0)
    samples = NumpyActor.build(gaussian).act(obs)
    assert abs(samples.std() - np.exp(-1.0)) < 0.01


def test_numpy_actor_declines_unknown_layers():
    from pglab.mirror import NumpyActor

    assert NumpyActor.build(make_actor(4, gym.spaces.Discrete(2), [8], activation="gelu")) is None


def test_tanh_gaussian_log_prob_is_a_change_of_variables():
    low, high = np.array([-2.0, 0.0], dtype=np.float32), np.array([2.0, 5.0], dtype=np.float32)
    head = TanhGaussianHead(3, low, high, log_std_init=-0.5)
    mean = torch.randn(7, 2, dtype=torch.float64)
    u = torch.randn(7, 2, dtype=torch.float64) * 1.5
    head = head.double()
    log_prob = head.log_prob(mean, u)
    # reference: density of u under N(mean, std) divided by |da/du|, by finite differences
    std = head.std()
    log_density_u = torch.distributions.Normal(mean, std).log_prob(u).sum(-1)
    h = 1e-6
    jacobian = (head.squash(u + h) - head.squash(u - h)) / (2 * h)
    reference = log_density_u - torch.log(jacobian).sum(-1)
    assert torch.allclose(log_prob, reference, atol=1e-5)
    actions = head.squash(u)
    assert (actions >= torch.as_tensor(low)).all() and (actions <= torch.as_tensor(high)).all()


def _gsde_params(head, rows, generator):
    mean = torch.randn(rows, head.action_dim, generator=generator, dtype=torch.float64)
    z = torch.randn(rows, head.log_std.shape[0], generator=generator, dtype=torch.float64)
    return torch.cat([mean, z], dim=-1), mean, z


def test_gsde_log_prob_entropy_and_kl_are_a_gaussians_with_state_dependent_std():
    generator = torch.Generator().manual_seed(0)
    head = GSDEHead(5, 2, log_std_init=-0.7).double()
    with torch.no_grad():
        head.log_std.add_(0.3 * torch.randn(5, 2, generator=generator, dtype=torch.float64))
    params, mean, z = _gsde_params(head, 6, generator)
    std = (z.square() @ head.std().square() + GSDEHead.EPSILON).sqrt()
    reference = torch.distributions.Normal(mean, std)
    actions = mean + std * torch.randn(6, 2, generator=generator, dtype=torch.float64)
    assert torch.allclose(head.log_prob(params, actions), reference.log_prob(actions).sum(-1))
    assert torch.allclose(head.entropy(params), reference.entropy().sum(-1))
    other, other_mean, other_z = _gsde_params(head, 6, generator)
    other_std = (other_z.square() @ head.std().square() + GSDEHead.EPSILON).sqrt()
    kl = torch.distributions.kl_divergence(
        reference, torch.distributions.Normal(other_mean, other_std)
    )
    assert torch.allclose(head.kl(params, other), kl.sum(-1))
    assert torch.allclose(head.kl(params, params), torch.zeros(6, dtype=torch.float64), atol=1e-12)


def test_gsde_noise_is_held_for_a_batch_and_redrawn_after_it():
    """Within a batch an env's noise weights stay: the same state gets the same action;
    the next batch (or every ``sample_every`` steps) draws new ones; envs differ."""
    torch.manual_seed(0)
    head = GSDEHead(4, 2, log_std_init=0.0)
    params = head(torch.randn(3, 4)).detach()
    head.start_rollout()
    first = head.sample(params)
    assert torch.equal(head.sample(params), first)
    assert not torch.allclose(first[0], first[1])  # each env its own weights
    head.start_rollout()
    assert not torch.allclose(head.sample(params), first)
    every_two = GSDEHead(4, 2, sample_every=2)
    every_two.start_rollout()
    draws = [every_two.sample(params) for _ in range(4)]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[2], draws[3])
    assert not torch.allclose(draws[1], draws[2])
    assert head.sample(params[:2]).shape == (2, 2)  # another batch size draws its own
    assert torch.equal(head.mode(params), params[:, :2])


def test_gsde_noise_does_not_train_the_body():
    """The noise's features are detached: the log-probability's gradient reaches the body
    only through the mean (as in the gSDE paper's default), so with the mean's weights at
    zero the body gets none."""
    torch.manual_seed(0)
    actor = make_actor(3, gym.spaces.Box(-1, 1, (2,)), [8], head="gsde", log_std_init=-1.0)
    obs = torch.randn(5, 3)
    with torch.no_grad():
        actions = actor.act(obs)
        actor.head.linear.weight.zero_()
    log_prob, entropy = actor.log_prob_entropy(obs, actions)
    (log_prob + entropy).sum().backward()
    assert all(not p.grad.any() for p in actor.body.parameters())
    assert actor.head.log_std.grad.abs().sum() > 0


def test_tanh_gaussian_needs_finite_bounds():
    with pytest.raises(ValueError, match="finite bounds"):
        make_actor(
            2, gym.spaces.Box(-np.inf, np.inf, (1,), dtype=np.float32), [], head="tanh_gaussian"
        )


@pytest.mark.parametrize("kind", ["categorical", "bernoulli", "gaussian"])
def test_head_kl_matches_torch(kind):
    torch.manual_seed(0)
    if kind == "categorical":
        head, old, new = CategoricalHead(3, 4), torch.randn(5, 4), torch.randn(5, 4)
        ref = torch.distributions.kl_divergence(
            torch.distributions.Categorical(logits=old), torch.distributions.Categorical(logits=new)
        )
        got = head.kl(old, new)
    elif kind == "bernoulli":
        head, old, new = BernoulliHead(3), torch.randn(5), torch.randn(5)
        ref = torch.distributions.kl_divergence(
            torch.distributions.Bernoulli(logits=old), torch.distributions.Bernoulli(logits=new)
        )
        got = head.kl(old, new)
    else:
        head, old, new = GaussianHead(3, 2, log_std_init=0.3), torch.randn(5, 2), torch.randn(5, 2)
        old_log_std = torch.tensor([-0.2, 0.1])
        ref = torch.distributions.kl_divergence(
            torch.distributions.Normal(old, old_log_std.exp()),
            torch.distributions.Normal(new, head.std().detach()),
        ).sum(-1)
        got = head.kl(old, new, old_log_std)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(head.kl(old, old), torch.zeros_like(ref), atol=1e-6)


def test_orthogonal_init_gains_and_shared_body():
    torch.manual_seed(0)
    actor = make_actor(4, gym.spaces.Discrete(2), [64, 64])
    critic = make_critic(4, [64, 64])
    orthogonal_init(actor, critic)
    first = actor.body[0].weight
    # orthogonal rows scaled by sqrt 2: W W^T = 2 I (4 inputs, 64 outputs: columns orthogonal)
    assert torch.allclose(first.T @ first, 2 * torch.eye(4), atol=1e-5)
    assert actor.head.linear.weight.norm(dim=1).max() <= 0.01 + 1e-6
    assert torch.allclose(critic.value.weight.norm(), torch.tensor(1.0), atol=1e-5)
    assert all((m.bias == 0).all() for m in actor.modules() if isinstance(m, torch.nn.Linear))
    shared = shared_critic(actor)
    assert shared.body is actor.body and shared(torch.randn(3, 4)).shape == (3,)


def _stack_of(actor_critics):
    """Parameters of several (actor, critic) pairs, by name, stacked [M, ...]."""
    named = [DenseActorCritic.parameters(a, c) for a, c in actor_critics]
    return {n: torch.stack([p[n].detach() for p in named]) for n in named[0]}


@pytest.mark.parametrize(
    ("space", "hidden", "activation"),
    [
        (gym.spaces.Discrete(3), [8, 8], "tanh"),
        (gym.spaces.Box(-1, 1, (2,), dtype=np.float32), [8], "relu"),
        (gym.spaces.Discrete(2), [], "tanh"),
    ],
)
def test_dense_actor_critic_backward_is_autograds(space, hidden, activation):
    """The written backward pass gives autograd's gradients, for one pair of networks
    and for several stacked."""
    torch.manual_seed(0)
    pairs = []
    for _ in range(2):
        actor = make_actor(3, space, hidden, activation=activation).double()
        critic = make_critic(3, [6], activation).double()
        if isinstance(actor.head, GaussianHead):
            with torch.no_grad():
                actor.head.log_std.copy_(torch.tensor([-0.5, 0.3]))
        pairs.append((actor, critic))
    net = DenseActorCritic.build(*pairs[0])
    obs = torch.randn(2, 10, 3, dtype=torch.float64)
    actions = torch.stack([a.act(o) for (a, _), o in zip(pairs, obs)]).detach()
    g_lp, g_ent, g_v = torch.randn(3, 2, 10, dtype=torch.float64)
    expected = []
    for (actor, critic), o, a, lp_, ent_, v_ in zip(pairs, obs, actions, g_lp, g_ent, g_v):
        log_probs, entropy = actor.log_prob_entropy(o, a)
        loss = (log_probs * lp_).sum() + (entropy * ent_).sum() + (critic(o) * v_).sum()
        named = DenseActorCritic.parameters(actor, critic)
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        expected.append({n: g for n, g in zip(named, grads) if g is not None})
        # one pair
        params = {n: p.detach() for n, p in named.items()}
        lp, ent, values, backward = net.forward(params, o, a)
        torch.testing.assert_close(lp, log_probs.detach())
        torch.testing.assert_close(ent, entropy.detach())
        torch.testing.assert_close(values, critic(o).detach())
        written = backward(lp_, ent_, v_)
        for name, want in expected[-1].items():
            torch.testing.assert_close(written[name], want)
    # both pairs at once
    written = net.forward(_stack_of(pairs), obs, actions)[3](g_lp, g_ent, g_v)
    for m in range(2):
        for name, want in expected[m].items():
            torch.testing.assert_close(written[name][m], want)


def test_gaussian_log_std_gradient_stops_where_the_clamp_holds():
    log_std = torch.tensor([-25.0, 0.0, 3.0])  # below, inside and above the clamp
    mean = torch.randn(5, 3)
    _, _, backward = gaussian_vjp(mean, torch.randn(5, 3), log_std)
    _, g_log_std = backward(torch.ones(5), torch.ones(5))
    assert g_log_std[0] == 0 and g_log_std[2] == 0 and g_log_std[1] != 0


def test_dense_actor_critic_declines_other_networks():
    box = gym.spaces.Box(-1, 1, (2,), dtype=np.float32)
    critic = make_critic(4, [8])
    assert DenseActorCritic.build(make_actor(4, gym.spaces.Discrete(2), [8]), critic)
    for actor, other in [
        (make_actor(4, gym.spaces.Discrete(2), [8], activation="gelu"), critic),
        (make_actor(4, gym.spaces.Discrete(2), [8], dropout=0.1), critic),
        (make_actor(4, gym.spaces.Discrete(2), [8], head="bernoulli"), critic),
        (make_actor(4, box, [8], head="tanh_gaussian"), critic),
        (make_actor(4, gym.spaces.Discrete(2), [8]), make_critic(4, [8], "elu")),
    ]:
        assert DenseActorCritic.build(actor, other) is None
    actor = make_actor(4, gym.spaces.Discrete(2), [8])
    assert DenseActorCritic.build(actor, shared_critic(actor)) is None
