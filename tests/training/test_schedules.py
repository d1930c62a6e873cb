"""The learning-rate schedule against two implementations we did not write: timm's schedulers and transformers'
cosine schedule, which compute the same warm-up + decay (the official formula, vision_transformer utils.py)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from timm.scheduler import CosineLRScheduler, PolyLRScheduler
from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda

from paper.training.schedules import LINEAR_END, Schedule, learning_rate

lengths = st.integers(2, 400).flatmap(lambda total: st.tuples(st.just(total), st.integers(0, total - 1)))


def timm_rates(decay: str, base: float, total: int, warmup: int) -> list[float]:
    """timm's rate for update t = our step t: warm-up from 0 over `warmup` updates, then a decay over the rest."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    common = dict(t_initial=total - warmup, warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    if decay == "cosine":
        sched = CosineLRScheduler(opt, lr_min=0.0, **common)
    else:  # polynomial decay of power 1 is linear, to linear_end
        sched = PolyLRScheduler(opt, power=1.0, lr_min=LINEAR_END, **common)
    rates = []
    for t in range(1, total + 1):
        sched.step_update(num_updates=t)
        rates.append(opt.param_groups[0]["lr"])
    return rates


@given(lengths=lengths, decay=st.sampled_from(["linear", "cosine"]), base=st.sampled_from([3e-3, 0.03, 1.0]))
def test_schedule_equals_timm(lengths, decay, base):
    total, warmup = lengths
    ours = [learning_rate(s, base, total, warmup, decay) for s in range(1, total + 1)]
    assert ours == pytest.approx(timm_rates(decay, base, total, warmup), rel=1e-12, abs=1e-15)


@given(lengths=lengths)
def test_cosine_schedule_equals_transformers(lengths):
    total, warmup = lengths
    for s in range(1, total + 1):
        hf = _get_cosine_schedule_with_warmup_lr_lambda(s, num_warmup_steps=warmup, num_training_steps=total,
                                                        num_cycles=0.5)
        assert learning_rate(s, 0.1, total, warmup, "cosine") == pytest.approx(0.1 * hf, rel=1e-12, abs=1e-15)


def test_lambda_lr_gives_optimizer_step_s_the_rate_of_step_s():
    # Steps count from 1 as in the official code: the first update already has lr = base / warmup, not 0.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(0.03, 10, 4, "cosine"))
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.03 / 4, 0.03 / 2, 0.03 * 3 / 4, 0.03], rel=1e-12)
    assert seen == pytest.approx([learning_rate(s, 0.03, 10, 4, "cosine") for s in range(1, 11)], rel=1e-12)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="decay: expected one of .*got 'step'"):
        learning_rate(1, 0.1, 10, 1, "step")
    with pytest.raises(ValueError, match="warmup_steps: expected 0 <= warmup_steps < total_steps=10, got 10"):
        Schedule(0.1, 10, 10, "cosine")
