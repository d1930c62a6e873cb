"""python -m paper.bench --model mnist-vit --operators: the training step's time by kind of operator."""
import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import paper.bench as bench
from paper.reports.loop_measure import Phases
from paper.reports.loop_operators import KINDS, kind_of, operator_times


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, phase, kind", [
    ("aten::addmm", "forward", "matrix products"), ("aten::addmm_", "forward", "matrix products"),
    ("aten::mm", "backward", "matrix products"), ("aten::bmm", "forward", "matrix products"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "backward", "fused attention"),
    ("aten::_softmax_backward_data", "backward", "softmax"), ("aten::mkldnn_convolution", "forward", "convolution"),
    ("aten::native_layer_norm_backward", "backward", "normalisation"), ("aten::gelu_backward", "backward",
                                                                         "GELU and ReLU"),
    ("aten::copy_", "forward", "copies"), ("aten::cat", "backward", "copies"), ("aten::add", "forward", "other"),
    ("aten::mm", "optimizer", "optimizer"), ("aten::upsample_bilinear2d", "data", "data"),
    ("aten::stack", "data", "data"), ("aten::sum", None, "other")])
def test_each_operator_counts_to_its_phase_or_its_name(name, phase, kind):
    assert kind_of(name, phase) == kind


def test_kinds_split_the_profiled_self_time_and_count_the_products_flops():
    """Against the profiler's own aggregate (key_averages) and the product's multiply-adds counted by hand."""
    a, b, c = torch.randn(64, 96), torch.randn(96, 48), torch.randn(64, 48)
    phases = Phases()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        for _ in range(2):
            with phases("data"):
                torch.stack([a, a])
            with phases("forward"):
                torch.nn.functional.gelu(a @ b)
                c.addmm_(a, b)
    times = operator_times(prof.events(), steps=2)
    assert list(times["ms_per_step"]) == list(KINDS) and sum(times["share"].values()) == pytest.approx(1)
    recorded = sum(e.self_cpu_time_total for e in prof.key_averages() if not e.key.startswith("phase "))
    assert times["ms_per_step_total"] == pytest.approx(recorded / 1e3 / 2)
    mm_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm_"))
    assert times["ms_per_step"]["matrix products"] == pytest.approx(mm_us / 1e3 / 2)
    assert times["matmul_gflop_per_step"] == 2 * 2 * 64 * 96 * 48 / 1e9                     # 2 products a step
    assert times["matmul_gflops"] == pytest.approx(2 * 2 * 2 * 64 * 96 * 48 / (mm_us * 1e3))
    assert times["ms_per_step"]["data"] > 0 and times["ms_per_step"]["GELU and ReLU"] > 0
    assert times["ms_per_step"]["optimizer"] == 0


def test_the_operators_benchmark_writes_a_column_per_contender(tmp_path):
    bench.main(["--model", "mnist-vit", "--threads", "1", "--steps", "1", "--operators",
               "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop_operators.json", "loop_operators.md",
                                                          "loop_operators.png"]
    ops = json.loads((tmp_path / "loop_operators.json").read_text())["operators"]
    assert list(ops) == ["ours ViT", "timm ViT", "paper.train pretrain", "paper.train finetune"]
    for c in ops.values():
        assert c["ms_per_step"]["matrix products"] > 0 and c["ms_per_step"]["optimizer"] > 0
        assert c["matmul_gflops"] > 0
    assert ops["ours ViT"]["ms_per_step"]["fused attention"] > 0
    assert ops["paper.train pretrain"]["ms_per_step"]["fused attention"] == 0    # the explicit path
    table = (tmp_path / "loop_operators.md").read_text()
    assert all(f"| {kind} |" in table for kind in KINDS)
