"""What a training step spends its time on, kind of operator by kind: `python -m paper.bench --model mnist-vit
--operators` (paper/results/loop_operators.md).

Every contender of the training loop (loop_measure.py) trains one turn to warm up, then `steps` steps under
torch.profiler, one contender after the other. Each operator's self time (its time less that of the operators it
calls) goes to one kind: the data phase's and the optimizer phase's operators to `data` and `optimizer` whatever they
are (`Phases` opens a profiler range per phase), the rest by name. The matrix products' GFLOP/s divide their FLOPs
(2 per multiply-add: the profiler's count, and for the in-place C += A·B, which it does not count, the count from its
recorded shapes) by their self time. The profiler records no Python and adds a little to every operator, so its
times run above the loop's; compare kinds within a contender, and contenders by kind.
"""
from torch.profiler import ProfilerActivity, profile

from paper.reports.loop_measure import TURN, Phases, contenders

KINDS = ("matrix products", "fused attention", "softmax", "convolution", "normalisation", "GELU and ReLU",
         "copies", "data", "optimizer", "other")
BY_NAME = (("fused attention", ("scaled_dot_product",)), ("softmax", ("softmax",)),
           ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
           ("convolution", ("convolution",)), ("normalisation", ("norm",)),
           ("GELU and ReLU", ("gelu", "relu", "threshold_backward")),
           ("copies", ("aten::copy_", "aten::cat", "aten::clone", "aten::stack", "aten::_to_copy")))


def phase_of(event) -> str | None:
    """The loop phase whose profiler range holds `event`, or None."""
    while event is not None:
        if event.name.startswith("phase "):
            return event.name.removeprefix("phase ")
        event = event.cpu_parent
    return None


def kind_of(name: str, phase: str | None) -> str:
    """The kind an operator's self time counts to: its phase's for data and optimizer, else by its name."""
    if phase in ("data", "optimizer"):
        return phase
    return next((kind for kind, marks in BY_NAME if any(m in name for m in marks)), "other")


def product_flops(event) -> int:
    """The FLOPs of one matrix product: the profiler's count, or for the in-place aten::addmm_ (C += A·B), which it
    does not count, 2·M·K·N from the recorded shapes of A (M, K) and B (K, N)."""
    if event.name == "aten::addmm_":
        (m, k), (_, n) = event.input_shapes[1:3]
        return 2 * m * k * n
    return event.flops or 0


def operator_times(events, steps: int) -> dict:
    """Profiler events -> per kind, milliseconds of self time per step and share; the matrix products' GFLOP per
    step and GFLOP/s."""
    ms = dict.fromkeys(KINDS, 0.0)
    flops = 0
    for e in events:
        if e.name.startswith("phase "):
            continue                                    # a range: its self time is the profiler's and Python's
        kind = kind_of(e.name, phase_of(e))
        ms[kind] += e.self_cpu_time_total / 1e3 / steps
        flops += product_flops(e) if kind == "matrix products" else 0
    total = sum(ms.values())
    return {"ms_per_step": ms, "share": {k: v / total for k, v in ms.items()}, "ms_per_step_total": total,
            "matmul_gflop_per_step": flops / steps / 1e9,
            "matmul_gflops": flops / (ms["matrix products"] * steps * 1e6) if ms["matrix products"] else None}


def profile_operators(models: list[str], steps: int, bf16: bool, compiled: bool, folder: str) -> dict:
    """-> per contender of `contenders(models, …)` (their files in `folder`), `operator_times` of `steps` profiled
    training steps."""
    result = {}
    for c in contenders(models, TURN + steps, folder, bf16, compiled):
        c.train_steps(TURN, Phases())                                          # warm-up, not recorded
        with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
            c.train_steps(steps, Phases())
        result[c.name] = operator_times(prof.events(), steps)
    return result
