"""Losses: weights carry no gradient, and the gradient points the right way."""

import pytest
import torch

from pglab.losses import (
    actor_critic_loss,
    entropy_loss,
    explained_variance,
    policy_gradient_loss,
    value_loss,
)


def test_weights_carry_no_gradient():
    log_probs = torch.randn(4, 2, requires_grad=True)
    weights = torch.randn(4, 2, requires_grad=True)
    policy_gradient_loss(log_probs, weights).backward()
    assert weights.grad is None
    assert log_probs.grad is not None


def test_value_targets_carry_no_gradient():
    values = torch.randn(3, 2, requires_grad=True)
    targets = torch.randn(3, 2, requires_grad=True)
    value_loss(values, targets).backward()
    assert targets.grad is None
    assert torch.allclose(values.grad, 2 * (values - targets).detach() / 6)


def test_gradient_step_raises_log_prob_of_positive_weight_actions():
    logits = torch.zeros(2, requires_grad=True)
    log_pi = logits.log_softmax(-1)
    # action 0 had a positive weight: descending the loss must make it likelier
    loss = policy_gradient_loss(log_pi[0].view(1, 1), torch.tensor([[1.0]]))
    loss.backward()
    with torch.no_grad():
        new = (logits - 0.1 * logits.grad).softmax(-1)
    assert new[0] > 0.5


def test_losses_average_over_valid_samples_only():
    log_probs = torch.tensor([[1.0], [100.0]])
    weights = torch.tensor([[2.0], [2.0]])
    valid = torch.tensor([[True], [False]])
    assert policy_gradient_loss(log_probs, weights, valid).item() == -2.0
    assert entropy_loss(torch.tensor([[0.5], [9.0]]), valid).item() == -0.5


def test_explained_variance():
    targets = torch.tensor([[1.0], [2.0], [3.0]])
    assert explained_variance(targets, targets).item() == 1.0
    assert abs(explained_variance(torch.full_like(targets, 2.0), targets).item()) < 1e-6


def test_actor_critic_loss_weighs_its_terms():
    p, v, h = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0, requires_grad=True)
    assert actor_critic_loss(p, v, h, 0.5, 0.1).item() == pytest.approx(1.0 + 1.0 - 0.3)
    assert not actor_critic_loss(p, v, h, 0.5, 0.0).requires_grad  # entropy left out
    members = actor_critic_loss(p, v, h, torch.tensor([0.5, 1.0]), torch.tensor([0.0, 0.1]))
    torch.testing.assert_close(members, torch.tensor([2.0, 2.7]))


def test_summed_losses_add_the_valid_samples_only():
    log_probs = torch.tensor([[1.0, 3.0], [100.0, 0.5]])
    weights = torch.tensor([[2.0, -1.0], [2.0, 4.0]])
    valid = torch.tensor([[True, True], [False, True]])
    assert policy_gradient_loss(log_probs, weights, valid, "sum").item() == -(2.0 - 3.0 + 2.0)
    assert entropy_loss(torch.tensor([[0.5], [9.0]]), valid[:, :1], "sum").item() == -0.5
    with pytest.raises(ValueError, match="reduction must be one of mean, sum; got 'max'"):
        policy_gradient_loss(log_probs, weights, valid, "max")
