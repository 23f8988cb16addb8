"""The weights Psi_t: hand-computed cases, identities, slow references, vmap."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from pglab.returns import (
    baseline_return,
    discounted_reward_to_go,
    gae,
    masked_mean,
    policy_gradient_weights,
    reward_to_go,
    standardize,
    td_residual,
    total_return,
    weight_parameters,
)

T, F = torch.tensor(True), torch.tensor(False)


def col(*values, dtype=torch.float32):
    """A [T, 1] tensor from a list of values."""
    return torch.tensor(values, dtype=dtype).unsqueeze(1)


# ----------------------------------------------------------- hand-computed cases


def test_discounted_reward_to_go_by_hand():
    rewards = col(1.0, 2.0, 3.0, 4.0)
    ends = col(False, True, False, True, dtype=torch.bool)
    got = discounted_reward_to_go(rewards, ends, 0.5)
    # episode 1: [1 + 0.5*2, 2]; episode 2: [3 + 0.5*4, 4]
    assert got.squeeze(1).tolist() == [2.0, 2.0, 5.0, 4.0]


def test_reward_to_go_and_total_return_by_hand():
    rewards = col(1.0, 1.0, 1.0, 5.0, 5.0)
    ends = col(False, False, True, False, True, dtype=torch.bool)
    assert reward_to_go(rewards, ends).squeeze(1).tolist() == [3.0, 2.0, 1.0, 10.0, 5.0]
    assert total_return(rewards, ends).squeeze(1).tolist() == [3.0, 3.0, 3.0, 10.0, 10.0]


def test_total_return_skips_reset_step():
    # episode [1, 2] ends at t=1, t=2 is the autoreset step, episode [4] starts at t=3
    rewards = col(1.0, 2.0, 0.0, 4.0)
    ends = col(False, True, False, True, dtype=torch.bool)
    valid = col(True, True, False, True, dtype=torch.bool)
    assert total_return(rewards, ends, valid=valid).squeeze(1).tolist() == [3.0, 3.0, 0.0, 4.0]


def test_td_residual_by_hand_terminated_vs_truncated():
    rewards = col(1.0, 1.0)
    values = col(2.0, 3.0)
    next_values = col(10.0, 10.0)
    terminated = col(True, False, dtype=torch.bool)
    got = td_residual(rewards, values, next_values, terminated, 0.9).squeeze(1)
    # terminated: no bootstrap; the other step bootstraps from next_values
    assert torch.allclose(got, torch.tensor([1.0 - 2.0, 1.0 + 9.0 - 3.0]))


def test_gae_by_hand():
    rewards = col(1.0, 0.0)
    values = col(0.5, 1.0)
    next_values = col(1.0, 2.0)
    terminated = col(False, False, dtype=torch.bool)
    ends = col(False, True, dtype=torch.bool)  # truncated at t=1
    gamma, lam = 0.9, 0.8
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    d1 = 0.0 + 0.9 * 2.0 - 1.0
    got = gae(rewards, values, next_values, terminated, ends, gamma, lam).squeeze(1)
    assert torch.allclose(got, torch.tensor([d0 + gamma * lam * d1, d1]))


def test_truncation_bootstraps_from_final_observation():
    rewards = col(1.0, 1.0)
    values = col(0.0, 0.0)
    next_values = col(0.0, 7.0)  # V of the real final observation after a time limit
    ends = col(False, True, dtype=torch.bool)
    truncated_return = baseline_return(
        rewards, values, next_values, col(False, False, dtype=torch.bool), ends, 0.5
    )
    terminated_return = baseline_return(
        rewards, values, next_values, col(False, True, dtype=torch.bool), ends, 0.5
    )
    assert truncated_return.squeeze(1).tolist() == [1 + 0.5 * (1 + 0.5 * 7), 1 + 0.5 * 7]
    assert terminated_return.squeeze(1).tolist() == [1.5, 1.0]


def test_invalid_steps_get_zero_weight_and_do_not_leak():
    rewards = col(1.0, 99.0, 1.0)
    ends = col(True, False, True, dtype=torch.bool)
    valid = col(True, False, True, dtype=torch.bool)
    got = discounted_reward_to_go(rewards, ends, 0.9, valid=valid).squeeze(1)
    assert got.tolist() == [1.0, 0.0, 1.0]


def test_standardize_uses_valid_entries_only():
    x = col(1.0, 3.0, 1000.0)
    valid = col(True, True, False, dtype=torch.bool)
    z = standardize(x, valid)
    assert z[2].item() == 0.0
    assert torch.allclose(z[:2].squeeze(1), torch.tensor([-1.0, 1.0]), atol=1e-6)
    assert masked_mean(z, valid).abs() < 1e-6


# ------------------------------------------------------- random batches + references


@st.composite
def batches(draw):
    t = draw(st.integers(1, 12))
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(t, n, generator=g)
    values = torch.randn(t, n, generator=g)
    terminated = torch.rand(t, n, generator=g) < 0.2
    truncated = (torch.rand(t, n, generator=g) < 0.2) & ~terminated
    truncated[-1] |= ~terminated[-1]  # the rollout ends
    # next_values[t] = values[t+1] inside an episode, anything after an end
    next_values = torch.cat([values[1:], torch.randn(1, n, generator=g)])
    ends = terminated | truncated
    next_values = torch.where(ends, torch.randn(t, n, generator=g), next_values)
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return rewards, values, next_values, terminated, truncated, gamma, lam


def slow_discounted_return(rewards, terminated, truncated, gamma, bootstrap=None):
    t_max, n = rewards.shape
    out = torch.zeros(t_max, n, dtype=torch.float64)
    for i in range(n):
        for t in range(t_max):
            total, discount = 0.0, 1.0
            for k in range(t, t_max):
                total += discount * rewards[k, i].item()
                discount *= gamma
                if terminated[k, i] or truncated[k, i]:
                    if bootstrap is not None and not terminated[k, i]:
                        total += discount * bootstrap[k, i].item()
                    break
            out[t, i] = total
    return out


def slow_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    t_max, n = rewards.shape
    out = torch.zeros(t_max, n, dtype=torch.float64)
    for i in range(n):
        for t in range(t_max):
            total, weight = 0.0, 1.0
            for k in range(t, t_max):
                bootstrap = 0.0 if terminated[k, i] else gamma * next_values[k, i].item()
                delta = rewards[k, i].item() + bootstrap - values[k, i].item()
                total += weight * delta
                weight *= gamma * lam
                if terminated[k, i] or truncated[k, i]:
                    break
            out[t, i] = total
    return out


def close(a, b):
    return torch.allclose(a.double(), b.double(), atol=1e-4, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_discounted_reward_to_go_matches_reference(batch):
    rewards, _, next_values, terminated, truncated, gamma, _ = batch
    ends = terminated | truncated
    assert close(
        discounted_reward_to_go(rewards, ends, gamma),
        slow_discounted_return(rewards, terminated, truncated, gamma),
    )
    bootstrap = next_values * (~terminated)
    assert close(
        discounted_reward_to_go(rewards, ends, gamma, bootstrap=bootstrap),
        slow_discounted_return(rewards, terminated, truncated, gamma, next_values),
    )


@settings(max_examples=60, deadline=None)
@given(batches())
def test_gae_matches_reference(batch):
    rewards, values, next_values, terminated, truncated, gamma, lam = batch
    got = gae(rewards, values, next_values, terminated, terminated | truncated, gamma, lam)
    assert close(got, slow_gae(rewards, values, next_values, terminated, truncated, gamma, lam))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_total_return_matches_reference(batch):
    rewards, _, _, terminated, truncated, _, _ = batch
    ends = terminated | truncated
    to_go = slow_discounted_return(rewards, terminated, truncated, 1.0)
    expected = to_go.clone()
    for i in range(rewards.shape[1]):
        start = 0
        for t in range(rewards.shape[0]):
            expected[t, i] = to_go[start, i]
            if ends[t, i]:
                start = t + 1
    assert close(total_return(rewards, ends), expected)


# --------------------------------------------------------------- identities


@settings(max_examples=60, deadline=None)
@given(batches())
def test_identities(batch):
    rewards, values, next_values, terminated, truncated, gamma, _ = batch
    ends = terminated | truncated
    # gae(lambda=1) == dfrb
    assert close(
        gae(rewards, values, next_values, terminated, ends, gamma, 1.0),
        baseline_return(rewards, values, next_values, terminated, ends, gamma),
    )
    # gae(lambda=0) == td
    assert close(
        gae(rewards, values, next_values, terminated, ends, gamma, 0.0),
        td_residual(rewards, values, next_values, terminated, gamma),
    )
    # fr == dfr with gamma = 1
    assert close(reward_to_go(rewards, ends), discounted_reward_to_go(rewards, ends, 1.0))
    # r == fr at the first step of each episode
    starts = torch.ones_like(ends)
    starts[1:] = ends[:-1]
    assert close(total_return(rewards, ends)[starts], reward_to_go(rewards, ends)[starts])


def test_pure_inputs_not_modified():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    next_values = torch.randn(6, 3, generator=g)
    terminated = torch.zeros(6, 3, dtype=torch.bool)
    ends = terminated.clone()
    ends[-1] = True
    copies = [x.clone() for x in (rewards, values, next_values, terminated, ends)]
    gae(rewards, values, next_values, terminated, ends, 0.9, 0.9)
    total_return(rewards, ends)
    for original, copy in zip((rewards, values, next_values, terminated, ends), copies):
        assert torch.equal(original, copy)


def test_functions_run_under_vmap_over_a_population():
    g = torch.Generator().manual_seed(1)
    pop, t, n = 3, 7, 2
    rewards = torch.randn(pop, t, n, generator=g)
    values = torch.randn(pop, t, n, generator=g)
    next_values = torch.randn(pop, t, n, generator=g)
    terminated = torch.rand(pop, t, n, generator=g) < 0.3
    ends = terminated | (torch.rand(pop, t, n, generator=g) < 0.3)
    batched = torch.func.vmap(lambda r, v, nv, d, e: gae(r, v, nv, d, e, 0.99, 0.95))(
        rewards, values, next_values, terminated, ends
    )
    looped = torch.stack(
        [
            gae(rewards[i], values[i], next_values[i], terminated[i], ends[i], 0.99, 0.95)
            for i in range(pop)
        ]
    )
    assert torch.allclose(batched, looped, atol=1e-6)
    r_batched = torch.func.vmap(lambda r, e: total_return(r, e))(rewards, ends)
    assert torch.allclose(
        r_batched, torch.stack([total_return(rewards[i], ends[i]) for i in range(pop)])
    )


@pytest.mark.parametrize("kind", ["r", "fr", "dfr", "dfrb", "td", "gae"])
def test_policy_gradient_weights_dispatch(kind):
    rewards = col(1.0, 1.0, 1.0)
    values = col(0.5, 0.5, 0.5)
    terminated = col(False, False, True, dtype=torch.bool)
    truncated = torch.zeros_like(terminated)
    psi = policy_gradient_weights(
        kind,
        rewards=rewards,
        terminated=terminated,
        truncated=truncated,
        gamma=0.9,
        lam=0.5,
        values=values,
        next_values=values,
    )
    assert psi.shape == rewards.shape and torch.isfinite(psi).all()


def test_critic_weights_need_values():
    with pytest.raises(ValueError, match="need values"):
        policy_gradient_weights(
            "gae",
            rewards=col(1.0),
            terminated=col(True, dtype=torch.bool),
            truncated=col(False, dtype=torch.bool),
            gamma=0.9,
        )


def test_a_function_of_ones_own_is_given_what_it_names_and_zeroed_off_the_samples():
    seen = {}

    def doubled(rewards, valid, gamma):
        seen.update(valid=valid, gamma=gamma)
        return 2 * rewards + 1

    rewards, valid = col(1.0, 2.0, 0.0), col(True, True, False, dtype=torch.bool)
    ends = col(False, True, False, dtype=torch.bool)
    psi = policy_gradient_weights(
        doubled, rewards=rewards, terminated=ends, truncated=~ends & ends, gamma=0.9, valid=valid
    )
    torch.testing.assert_close(psi, col(3.0, 5.0, 0.0))
    assert seen["valid"] is valid and seen["gamma"] == 0.9
    with pytest.raises(ValueError, match="takes 'extra', which it is not given"):
        weight_parameters(lambda rewards, extra: rewards)
    assert weight_parameters(lambda rewards, extra=1, **rest: rewards)[-1] == "valid"
