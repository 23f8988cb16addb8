"""pglab's optimizers follow PyTorch's Adam, AdamW, RMSprop and SGD step for step."""

import pytest
import torch

from pglab.optim import FlatOptimizer, StackedOptimizer

TORCH = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


def _torch(name, params, lr, weight_decay):
    extra = {} if name == "sgd" else {"eps": 1e-5}
    return TORCH[name](params, lr=lr, weight_decay=weight_decay, **extra)


@pytest.mark.parametrize("name", list(TORCH))
def test_flat_optimizer_is_torchs(name):
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    flat = FlatOptimizer(name, ours, lr=0.01, weight_decay=0.01, eps=1e-5)
    reference = _torch(name, theirs, 0.01, 0.01)
    for _ in range(5):
        _step_both(flat, reference, theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    # a torch state dict (checkpoints of older runs) continues where it left off
    resumed = [p.detach().clone().requires_grad_() for p in theirs]
    again = FlatOptimizer(name, resumed, lr=0.01, weight_decay=0.01, eps=1e-5)
    again.load_state_dict(reference.state_dict())
    _step_both(again, reference, theirs)
    for a, b in zip(resumed, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _step_both(flat, reference, reference_params):
    """One step of both optimizers with the same random gradient."""
    grads = [torch.randn_like(p) for p in reference_params]
    flat.step(flat.flatten(grads))
    for p, g in zip(reference_params, grads):
        p.grad = g.clone()
    reference.step()


def test_flat_optimizer_state_round_trips():
    params = [torch.randn(3, requires_grad=True)]
    first = FlatOptimizer("adam", params, lr=0.1)
    first.step(torch.ones(3))
    second = FlatOptimizer("adam", [torch.zeros(3, requires_grad=True)], lr=0.1)
    second.load_state_dict(first.state_dict())
    assert second.steps == 1
    assert torch.equal(second.state["exp_avg"], first.state["exp_avg"])


@pytest.mark.parametrize("name", list(TORCH))
def test_stacked_optimizer_is_one_torch_optimizer_per_member(name):
    torch.manual_seed(0)
    lrs = [1e-2, 3e-3, 1e-1]
    singles = [torch.randn(15, requires_grad=True) for _ in lrs]
    stacked = torch.stack([p.detach() for p in singles])
    torch_opts = [_torch(name, [p], lr, 0.01) for p, lr in zip(singles, lrs)]
    ours = StackedOptimizer(name, stacked, eps=1e-5, weight_decay=0.01)
    for step in range(6):
        grads = torch.randn(3, 15)
        members = [0, 1, 2] if step % 2 == 0 else [2, 0]  # member 1 skips, rows in any order
        for m in members:
            singles[m].grad = grads[m].clone()
            torch_opts[m].step()
        ours.step(grads[members], members, [lrs[m] for m in members])
    for m in range(3):
        torch.testing.assert_close(stacked[m], singles[m].detach(), rtol=1e-4, atol=1e-5)


def test_a_members_row_steps_the_same_in_any_stack():
    """Every row is stepped on its own: a member's row is bit for bit what a stack of
    one would make of it, whatever the other rows and the other learning rates."""
    torch.manual_seed(0)
    rows = torch.randn(4, 1000)
    grads = [torch.randn(4, 1000) for _ in range(3)]
    lrs = [1e-3, 1e-3, 5e-2, 1e-3]
    for name in TORCH:
        big = StackedOptimizer(name, rows.clone(), eps=1e-5)
        alone = StackedOptimizer(name, rows[2:3].clone(), eps=1e-5)
        for g in grads:
            big.step(g, [0, 1, 2, 3], lrs)
            alone.step(g[2:3], [0], [lrs[2]])
        assert torch.equal(big.flat[2], alone.flat[0]), name


def test_moving_a_stacked_parameter_is_refused():
    from pglab.errors import TrainingError

    layer = torch.nn.Linear(3, 2)
    optimizer = FlatOptimizer("adam", layer.parameters(), lr=0.1)
    layer.double()  # new storage: the optimizer's vector no longer holds the layer
    with pytest.raises(TrainingError, match="moved or replaced"):
        optimizer.step(torch.ones(8))


def test_flat_optimizer_parameters_are_views_of_its_vector():
    layer = torch.nn.Linear(3, 2)
    weight = layer.weight.detach().clone()
    optimizer = FlatOptimizer("sgd", layer.parameters(), lr=0.5)
    assert torch.equal(layer.weight, weight)  # moved, not changed
    optimizer.step(torch.ones(8))
    torch.testing.assert_close(layer.weight, weight - 0.5)
    with torch.no_grad():  # a module's load_state_dict writes in place: the vector sees it
        layer.bias.fill_(3.0)
    assert torch.equal(optimizer.flat[-2:], torch.full((2,), 3.0))
    assert layer.weight.grad_fn is None and layer.weight.requires_grad


def test_unknown_optimizer_is_refused():
    from pglab.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer must be one of"):
        FlatOptimizer("lbfgs", [torch.zeros(1, requires_grad=True)], lr=0.1)


def test_adamws_written_rule_is_its_fused_kernel():
    torch.manual_seed(0)
    start = torch.randn(2, 12)
    fused, written = start.clone(), start.clone()
    by_kernel = StackedOptimizer("adamw", fused, eps=1e-5, weight_decay=0.1)
    by_rule = StackedOptimizer("adamw", written, eps=1e-5, weight_decay=0.1)
    by_rule._fused = False
    for _ in range(4):
        grads = torch.randn(2, 12)
        by_kernel.step(grads, [0, 1], [0.01, 0.03])
        by_rule.step(grads, [0, 1], [0.01, 0.03])
    torch.testing.assert_close(fused, written, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("constant", [1.0, 1.0, 1.0, 1.0]),
        ("linear", [1.0, 0.75, 0.5, 0.0]),
        ("cosine", [1.0, 0.8535533905932737, 0.5, 0.0]),
        ("step", [1.0, 0.5, 0.25, 0.0625]),
    ],
)
def test_schedules_over_the_budget(schedule, expected):
    from pglab.algos.base import scheduled_lr

    got = [scheduled_lr(1.0, schedule, p, every=0.25, gamma=0.5) for p in (0, 0.25, 0.5, 1)]
    assert got == pytest.approx(expected)


def test_ppo_trains_with_adamw_and_a_step_schedule(tmp_path):
    import csv

    import pglab

    run = pglab.train(
        "CartPole-v1", "ppo", out=str(tmp_path), progress="off", checkpoint_every=0,
        total_steps=1024, batch_size=256, num_envs=2, optimizer="adamw", weight_decay=0.01,
        lr=0.01, lr_schedule="step", schedule_every=0.5, schedule_gamma=0.1,
        stop_at_return="none",
    )  # fmt: skip
    with open(run.path / "metrics.csv", newline="") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert rates[0] == 0.01 and rates[-1] == pytest.approx(0.001)


def test_any_torch_optimizer_by_name_trains_members_as_alone_and_resumes(tmp_path):
    import csv

    import pglab

    def numbers(run):
        with open(run.path / "metrics.csv", newline="") as handle:
            return [
                {k: v for k, v in r.items() if "second" not in k} for r in csv.DictReader(handle)
            ]

    options = {
        "progress": "off", "checkpoint_every": 0, "total_steps": 512, "batch_size": 128,
        "num_envs": 2, "stop_at_return": "none", "optimizer": "nadam",
        "optimizer_kwargs": {"momentum_decay": 0.002},
    }  # fmt: skip
    runs = pglab.train("CartPole-v1", "ppo", out=str(tmp_path / "p"), seeds=[0, 1], **options)
    alone = pglab.train("CartPole-v1", "ppo", out=str(tmp_path / "a"), seed=1, **options)
    assert runs[0].agent.config.algo.optimizer == "torch.optim.NAdam"
    assert numbers(runs[1]) == numbers(alone)
    longer = pglab.resume(alone.path, total_steps=768)  # the optimizer's state comes back
    assert longer.summary["total_steps"] >= 768


def test_a_torch_optimizer_steps_like_torch_itself():
    from pglab.optim import make_optimizer

    torch.manual_seed(0)
    start = torch.randn(2, 6)
    ours = start.clone()
    stacked = make_optimizer("torch.optim.Adagrad", ours, weight_decay=0.01)
    singles = [start[m].clone().requires_grad_() for m in range(2)]
    theirs = [
        torch.optim.Adagrad([p], lr=lr, weight_decay=0.01) for p, lr in zip(singles, (0.1, 0.2))
    ]
    for _ in range(3):
        grads = torch.randn(2, 6)
        stacked.step(grads, [0, 1], [0.1, 0.2])
        for p, g, optimizer in zip(singles, grads, theirs):
            p.grad = g.clone()
            optimizer.step()
    assert torch.equal(ours, torch.stack([p.detach() for p in singles]))


def test_unknown_optimizers_and_misplaced_kwargs_are_one_line():
    from pglab.config import build_config
    from pglab.errors import ConfigError
    from pglab.optim import make_optimizer

    with pytest.raises(ConfigError, match="torch.optim optimizer"):
        build_config(overrides=["optimizer=lbfgs"])
    with pytest.raises(ConfigError, match="optimizer_kwargs go with a torch.optim"):
        make_optimizer("adam", torch.zeros(1, 3), kwargs={"betas": (0.8, 0.9)})
