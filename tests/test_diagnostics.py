"""Red-flag warnings: each symptom is named once, with its remedies."""

import math

from pglab.diagnostics import HealthMonitor


def feed(monitor, rows):
    found = []
    for step, row in enumerate(rows):
        found += monitor.check(row, step * 100)
    return found


def test_entropy_collapse_is_reported_once():
    rows = [{"entropy": 0.69}] + [{"entropy": 0.69 * 0.5**k} for k in range(1, 12)]
    warnings = feed(HealthMonitor(), rows)
    assert len(warnings) == 1 and "entropy collapsed" in warnings[0]
    assert "entropy_coef" in warnings[0]


def test_continuous_policies_are_judged_by_their_std():
    rows = [{"entropy": 1.4, "policy_std": 1.0}, {"entropy": -3.0, "policy_std": 0.5}]
    assert feed(HealthMonitor(), rows) == []
    rows.append({"entropy": -5.0, "policy_std": 0.01})
    (warning,) = feed(HealthMonitor(), rows)
    assert warning.startswith("policy std collapsed")


def test_kl_far_above_target_for_several_updates():
    monitor = HealthMonitor(target_kl=0.01)
    assert feed(monitor, [{"approx_kl": 0.05}] * 2) == []  # twice is not yet a pattern
    (warning,) = monitor.check({"approx_kl": 0.05}, 300)
    assert "approx KL" in warning and "target_kl" in warning


def test_negative_explained_variance_for_long():
    rows = [{"explained_variance": 0.5}] * 20 + [{"explained_variance": -0.2}] * 9
    monitor = HealthMonitor()
    assert feed(monitor, rows) == []
    (warning,) = monitor.check({"explained_variance": -0.3}, 5000)
    assert "explained variance" in warning and "value_lr" in warning


def test_exploding_gradient_and_flat_advantages_and_non_finite():
    rows = [{"grad_norm": 1.0 + 0.01 * k, "weights_var": 1.0} for k in range(12)]
    monitor = HealthMonitor(max_grad_norm=0.0)
    assert feed(monitor, rows) == []
    (warning,) = monitor.check({"grad_norm": 100.0}, 1)
    assert "gradient norm" in warning and "max_grad_norm" in warning
    (warning,) = monitor.check({"weights_var": 1e-15}, 2)
    assert "near-zero spread" in warning
    (warning,) = monitor.check({"value_loss": math.nan}, 3)
    assert "non-finite values in value_loss" in warning
    assert monitor.check({"value_loss": math.inf, "weights_var": 0.0}, 4) == []  # once each
    assert monitor.reported == {"grad", "flat", "non-finite"}


def test_vanishing_gradients_after_five_updates_far_below_the_start():
    monitor = HealthMonitor()
    assert feed(monitor, [{"grad_norm": 2.0}] * 10 + [{"grad_norm": 1e-4}] * 4) == []
    (warning,) = monitor.check({"grad_norm": 1e-4}, 1)
    assert "vanished" in warning and "activation" in warning
    assert feed(HealthMonitor(), [{"grad_norm": 2.0}] * 10 + [{"grad_norm": 0.01}] * 20) == []


def test_ratios_far_from_one_for_three_updates():
    monitor = HealthMonitor()
    rows = [{"clip_fraction": 0.32}] * 10 + [{"clip_fraction": 0.6}] * 2  # 0.32: Ant's preset
    assert feed(monitor, rows) == []
    (warning,) = monitor.check({"clip_fraction": 0.55}, 1)
    assert "55% of the probability ratios" in warning and "target_kl" in warning


def test_value_loss_on_the_scale_of_unnormalised_returns():
    monitor = HealthMonitor()
    rows = [{"value_loss": 5e4}, {"value_loss": 300.0}] + [{"value_loss": 2e4}] * 2
    assert feed(monitor, rows) == []  # a spike is not a pattern
    (warning,) = monitor.check({"value_loss": 4e4}, 1)
    assert "RMS error of 200" in warning and "normalize_reward" in warning


def test_a_batch_is_finite_unless_a_value_is_inf_or_nan_even_when_its_sum_overflows():
    import torch

    from pglab.member import all_finite

    big = torch.full((4,), 3e38)  # finite values whose float32 sum overflows
    assert all_finite(torch.zeros(3), big)
    for bad in (math.inf, -math.inf, math.nan):
        values = torch.zeros(5)
        values[2] = bad
        assert not all_finite(torch.ones(2), values)
        assert not all_finite(values, big)
