"""derm.optim: optimisers, every schedule's lr trajectory, and exact resume."""

import io
import math

import pytest
import torch

from derm.config import OptimConfig, config_from_dict
from derm.errors import ConfigError
from derm.optim import build_optimizer, build_scheduler

SCHEDULES = ("none", "cosine", "cosine_restarts", "onecycle", "step", "exponential", "plateau")


def make_optimizer(cfg: OptimConfig, encoder_mult: float = 0.1) -> torch.optim.Optimizer:
    head, encoder = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    groups = [{"name": "decoder_and_heads", "params": [head], "lr": cfg.lr},
              {"name": "encoder", "params": [encoder], "lr": cfg.lr * encoder_mult}]
    return build_optimizer(groups, cfg)


def trajectory(schedule, optimizer, epochs, steps_per_epoch, scores=None):
    """The lr before each optimiser step, epoch by epoch, then the lr after the last one."""
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(schedule.current_lr())
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(None if scores is None else scores[epoch])
    return lrs + [schedule.current_lr()]


def run(epochs=6, steps_per_epoch=4, scores=None, **optim):
    cfg = OptimConfig(lr=1.0, **optim)
    optimizer = make_optimizer(cfg)
    schedule = build_scheduler(optimizer, cfg, epochs, steps_per_epoch)
    return trajectory(schedule, optimizer, epochs, steps_per_epoch, scores), optimizer


@pytest.mark.parametrize("scheduler", SCHEDULES)
def test_warmup_rises_linearly_to_the_lr(scheduler):
    lrs, _ = run(scheduler=scheduler, warmup_epochs=2, steps_per_epoch=4)
    warmup = lrs[:9]  # 8 warm-up steps, then the lr it reaches
    if scheduler == "onecycle":  # its own rise: from lr / 25 up to lr
        assert warmup[0] == pytest.approx(1 / 25)
        assert all(a < b for a, b in zip(warmup[:8], warmup[1:8]))
        assert max(lrs) == pytest.approx(1.0)
    else:
        assert warmup == pytest.approx([(t + 1) / 9 for t in range(9)])


def test_no_schedule_keeps_the_lr():
    lrs, optimizer = run(scheduler="none")
    assert lrs == [1.0] * len(lrs)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1)


def test_cosine_follows_the_formula_and_ends_at_min_lr():
    lrs, optimizer = run(scheduler="cosine", min_lr=0.01, epochs=5, steps_per_epoch=4)
    total = 20
    expected = [0.01 + 0.99 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total + 1)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(0.01)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01)  # every group anneals to min_lr


def test_cosine_after_warmup_starts_at_the_top():
    lrs, _ = run(scheduler="cosine", warmup_epochs=1, epochs=5, steps_per_epoch=4)
    cosine = lrs[4:]
    expected = [(1 + math.cos(math.pi * t / 16)) / 2 for t in range(17)]
    assert cosine == pytest.approx(expected)


def test_cosine_restarts_every_restart_epochs():
    lrs, _ = run(scheduler="cosine_restarts", restart_epochs=2, epochs=6, steps_per_epoch=4)
    for restart in (0, 8, 16, 24):
        assert lrs[restart] == pytest.approx(1.0)
    assert lrs[4] == pytest.approx(0.5)  # half-way through a cycle
    assert lrs[7] < lrs[6] < lrs[5] < lrs[4]


def test_step_decays_every_step_size_epochs():
    lrs, optimizer = run(scheduler="step", step_size=2, gamma=0.5, epochs=6, steps_per_epoch=4)
    per_epoch = lrs[::4]  # the lr during each epoch
    assert per_epoch == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125])
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.0125)  # the encoder keeps its ratio


def test_exponential_decays_by_gamma_per_epoch():
    lrs, _ = run(scheduler="exponential", gamma=0.5, epochs=3, steps_per_epoch=4)
    assert lrs[::4] == pytest.approx([1.0, 0.5, 0.25, 0.125])
    assert lrs[1] == pytest.approx(0.5 ** 0.25)


def test_onecycle_rises_then_falls_to_min_lr():
    lrs, _ = run(scheduler="onecycle", min_lr=1e-3, epochs=5, steps_per_epoch=4)
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(1 / 25) and max(lrs) == pytest.approx(1.0, rel=1e-2)
    assert 0 < peak < len(lrs) - 1
    assert lrs[-1] == pytest.approx(1e-3)


def test_plateau_cuts_the_lr_after_patience_epochs_without_improvement():
    scores = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4]
    lrs, _ = run(scheduler="plateau", gamma=0.1, plateau_patience=2, epochs=8, steps_per_epoch=1, scores=scores)
    # best 0.3 at epoch 3; epochs 4 and 5 are within patience, epoch 6 is the third bad one.
    assert lrs == pytest.approx([1.0] * 6 + [0.1, 0.1, 0.1])
    assert lrs == sorted(lrs, reverse=True)


def test_plateau_ignores_scores_during_warmup_and_missing_scores():
    scores = [0.9, 0.5, None, None, 0.6, 0.6]
    lrs, _ = run(scheduler="plateau", warmup_epochs=2, gamma=0.5, plateau_patience=0, epochs=6,
                 steps_per_epoch=2, scores=scores)
    # Epoch 1's 0.9 is during warm-up and does not count; epoch 2 sets the best (0.5);
    # 3 and 4 have no score; 5 improves; only 6 is bad, and cuts the lr after the run.
    assert lrs[-1] == pytest.approx(0.5) and lrs[-2] == pytest.approx(1.0)


def test_steps_past_the_plan_hold_the_final_lr():
    cfg = OptimConfig(lr=1.0, scheduler="cosine", min_lr=0.1)
    optimizer = make_optimizer(cfg)
    schedule = build_scheduler(optimizer, cfg, epochs=2, steps_per_epoch=2)
    lrs = trajectory(schedule, optimizer, epochs=3, steps_per_epoch=2)
    assert lrs[4:] == pytest.approx([0.1, 0.1, 0.1])


@pytest.mark.parametrize("scheduler", SCHEDULES)
@pytest.mark.parametrize("optimizer_state_first", [True, False])
def test_state_dict_round_trip_reproduces_the_next_lrs(scheduler, optimizer_state_first):
    cfg = OptimConfig(lr=0.5, scheduler=scheduler, warmup_epochs=1, min_lr=0.01, step_size=1, gamma=0.5,
                      restart_epochs=2, plateau_patience=0)
    epochs, steps = 6, 3
    scores = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3]
    optimizer = make_optimizer(cfg)
    schedule = build_scheduler(optimizer, cfg, epochs, steps)
    trajectory(schedule, optimizer, 3, steps, scores[:3])
    buffer = io.BytesIO()  # as a checkpoint stores it
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict()}, buffer)
    expected = trajectory(schedule, optimizer, 3, steps, scores[3:])
    expected_encoder_lr = optimizer.param_groups[1]["lr"]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh_optimizer = make_optimizer(cfg)
    if optimizer_state_first:  # the training loop's order
        fresh_optimizer.load_state_dict(saved["optimizer"])
    resumed = build_scheduler(fresh_optimizer, cfg, epochs, steps)
    if not optimizer_state_first:
        fresh_optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert trajectory(resumed, fresh_optimizer, 3, steps, scores[3:]) == pytest.approx(expected)
    assert fresh_optimizer.param_groups[1]["lr"] == pytest.approx(expected_encoder_lr)
    assert resumed.steps == 6 * steps and resumed.epochs == 6


def test_optimisers_get_their_settings():
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.02}]
    sgd = build_optimizer(params, OptimConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.02, 0.8, True, 1e-4)
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    rms = build_optimizer(params, OptimConfig(name="rmsprop", lr=0.1, momentum=0.5))
    assert isinstance(rms, torch.optim.RMSprop) and rms.param_groups[0]["momentum"] == 0.5
    assert rms.param_groups[0]["lr"] == 0.1  # cfg.lr for a group without its own
    adamw = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(name="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    adam = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(name="adam"))
    assert type(adam) is torch.optim.Adam


def test_config_mistakes_are_config_errors():
    # Found when the config is loaded, before an optimiser is built.
    with pytest.raises(ConfigError, match="a.yaml: optim.nesterov needs optim.momentum > 0"):
        config_from_dict({"optim": {"name": "sgd", "momentum": 0.0, "nesterov": True}}, "a.yaml")
    cfg = OptimConfig(warmup_epochs=5)
    with pytest.raises(ConfigError, match=r"optim.warmup_epochs \(5\) must be less than train.epochs \(5\)"):
        build_scheduler(make_optimizer(cfg), cfg, epochs=5, steps_per_epoch=2)
    with pytest.raises(ConfigError, match=r"^x.yaml: optim.warmup_epochs: 5 must be less than train.epochs \(5\)"):
        config_from_dict({"optim": {"warmup_epochs": 5}, "train": {"epochs": 5}}, "x.yaml")
    cfg = OptimConfig(scheduler="plateau", gamma=1.0)
    with pytest.raises(ConfigError, match="optim.gamma must be < 1 for scheduler plateau"):
        build_scheduler(make_optimizer(cfg), cfg, epochs=5, steps_per_epoch=2)


def test_every_optimiser_the_config_allows_is_one_registry_entry():
    from typing import get_args

    from derm.config import OptimConfig as Config
    from derm.optim import OPTIMIZERS

    assert set(OPTIMIZERS) == set(get_args(Config.model_fields["name"].annotation))
