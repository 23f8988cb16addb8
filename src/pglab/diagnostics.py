"""Red flags in a run's diagnostics, each reported once with its usual remedies.

After every update the trainer passes the update's metrics to :class:`HealthMonitor`;
it returns the warnings that became true for the first time. The symptoms (and
what practitioners usually do about them):

==================  =====================================================  ==========================
symptom             when                                                   usual remedies
==================  =====================================================  ==========================
entropy collapse    entropy below 2% of its first value (discrete), or     entropy bonus, lower lr
                    policy std below 2% of its first value (continuous)
KL far off target   approx KL above 4x ``target_kl`` (above 0.1 without    lower lr, fewer epochs,
                    a target) for 3 updates in a row                       set or lower target_kl
critic useless      explained variance below 0 for 10 updates in a row     critic lr, more value
                    (after the first 20)                                   epochs, value_hidden,
                                                                           normalise rewards
exploding gradient  gradient norm above 20x the median so far (after 10)   max_grad_norm, lower lr
vanishing gradient  gradient norm below 1e-3 x the median of the first 10  check the loss's scale and
                    updates, for 5 updates in a row                        the activations (tanh
                                                                           saturation), raise the lr
ratio far from 1    PPO: over half the samples' probability ratios         lower lr, fewer epochs,
                    outside the clip range for 3 updates in a row          set target_kl
value scale         the critic's loss above 1e4 (an RMS error above 100)   normalise rewards, lower
                    for 3 updates in a row                                 vf_coef
flat advantages     standard deviation of the weights below 1e-6           reward scale, check the
                                                                           env's rewards
non-finite values   any metric NaN or infinite                             lower lr, clip gradients,
                                                                           normalise observations
==================  =====================================================  ==========================
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping


class HealthMonitor:
    """Watches update metrics and names each red flag once."""

    def __init__(self, target_kl: float = 0.0, max_grad_norm: float = 0.0) -> None:
        self.target_kl = target_kl
        self.max_grad_norm = max_grad_norm
        self.reported: set[str] = set()
        self.updates = 0
        self._first: dict[str, float] = {}
        self._streak: dict[str, int] = {}
        self._grad_norms: list[float] = []

    #: the share of PPO's ratios outside the clip range that counts as far from 1
    CLIP_FRACTION_LIMIT = 0.5
    #: a value loss above this (an RMS error above 100) says the returns are unscaled
    VALUE_LOSS_LIMIT = 1e4

    def _streak_of(self, name: str, condition: bool) -> int:
        self._streak[name] = self._streak.get(name, 0) + 1 if condition else 0
        return self._streak[name]

    def check(self, metrics: Mapping[str, float | None], step: int) -> list[str]:
        """The warnings (one line each) that first show at this update."""
        self.updates += 1
        found: dict[str, str] = {}
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        if bad:
            found["non-finite"] = (
                f"non-finite values in {', '.join(bad)} at step {step:,}; lower algo.lr, "
                "set algo.max_grad_norm, or normalise observations (env.normalize_obs)"
            )
        values = {k: v for k, v in values.items() if math.isfinite(v)}

        for key, label in (("policy_std", "policy std"), ("entropy", "entropy")):
            if key not in values:
                continue
            first = self._first.setdefault(key, values[key])
            if first > 0 and values[key] < 0.02 * first:
                found["entropy"] = (
                    f"{label} collapsed to {values[key]:.3g} ({values[key] / first:.1%} of its "
                    f"start) at step {step:,}: the policy stopped exploring; raise "
                    "algo.entropy_coef or lower algo.lr"
                )
            break  # a Gaussian policy is judged by its std, a discrete one by its entropy

        if "approx_kl" in values:
            limit = 4 * self.target_kl if self.target_kl > 0 else 0.1
            if self._streak_of("kl", values["approx_kl"] > limit) >= 3:
                found["kl"] = (
                    f"approx KL {values['approx_kl']:.3g} above {limit:.3g} for 3 updates at step "
                    f"{step:,}: the policy moves too far per update; lower algo.lr, algo.epochs, "
                    "or set a smaller algo.target_kl"
                )

        negative = values.get("explained_variance", 0.0) < 0 and self.updates > 20
        if self._streak_of("ev", negative) >= 10:
            found["ev"] = (
                f"explained variance below 0 for 10 updates at step {step:,}: the critic "
                "predicts worse than a constant; tune algo.value_lr and algo.value_epochs "
                "(reinforce, trpo) or algo.vf_coef (a2c, ppo), policy.value_hidden, or set "
                "env.normalize_reward"
            )

        if "grad_norm" in values:
            norm = values["grad_norm"]
            if len(self._grad_norms) >= 10:
                median = statistics.median(self._grad_norms)
                if median > 0 and norm > 20 * median:
                    remedy = (
                        "lower algo.lr or algo.max_grad_norm"
                        if self.max_grad_norm > 0
                        else "set algo.max_grad_norm (e.g. 0.5) or lower algo.lr"
                    )
                    found["grad"] = (
                        f"gradient norm {norm:.3g} is {norm / median:.0f}x its median at step "
                        f"{step:,}: {remedy}"
                    )
            if len(self._grad_norms) >= 10:
                start = statistics.median(self._grad_norms[:10])
                if self._streak_of("vanish", start > 0 and norm < 1e-3 * start) >= 5:
                    found["vanish"] = (
                        f"gradient norm {norm:.3g} is below 1e-3 of its start ({start:.3g}) for "
                        f"5 updates at step {step:,}: the gradients vanished; check the loss's "
                        "scale and saturated activations (policy.activation), or raise algo.lr"
                    )
            self._grad_norms.append(norm)

        clipped = values.get("clip_fraction", 0.0)
        if self._streak_of("ratio", clipped > self.CLIP_FRACTION_LIMIT) >= 3:
            found["ratio"] = (
                f"{clipped:.0%} of the probability ratios lie outside the clip range for 3 updates "
                f"at step {step:,}: the policy moves too far from the one that collected the "
                "batch; lower algo.lr or algo.epochs, or set algo.target_kl"
            )

        value_loss = values.get("value_loss", 0.0)
        if self._streak_of("value", value_loss > self.VALUE_LOSS_LIMIT) >= 3:
            found["value"] = (
                f"value loss {value_loss:.3g} (an RMS error of {math.sqrt(value_loss):.3g}) for 3 "
                f"updates at step {step:,}: the returns are on a large scale, so the critic's "
                "gradient swamps the policy's; set env.normalize_reward or lower algo.vf_coef"
            )

        if "weights_var" in values and math.sqrt(max(values["weights_var"], 0.0)) < 1e-6:
            found["flat"] = (
                f"the advantages (weights) have near-zero spread at step {step:,}: there is no "
                "signal to learn from; check the env's rewards or their scale"
            )

        new = [message for key, message in found.items() if key not in self.reported]
        self.reported.update(found)
        return new
