"""python -m paper.bench --model mnist-vit: the training loop's benchmark, in miniature (one round of one step)."""
import json
import re
from pathlib import Path

import pytest
import torch

import paper.bench as bench
from paper.reports.loop_measure import PHASES, turns

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_loop_benchmark_writes_speeds_the_ratio_to_timm_and_phase_shares_that_sum_to_one(tmp_path, bf16):
    result = bench.main(["--model", "mnist-vit", "--threads", "1", "--steps", "1", "--repeats", "1",
                         "--out", str(tmp_path)] + ["--bf16"] * bf16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.json", "loop.md", "loop.png"]
    assert json.loads((tmp_path / "loop.json").read_text())["loop"].keys() == result["loop"].keys()
    loop = result["loop"]
    names = ["ours ViT", "timm ViT", "paper.train pretrain", "paper.train finetune"]
    assert list(loop) == names + [f"{n} bf16" for n in names] * bf16
    assert loop["ours ViT"]["batch"] == 32 and loop["paper.train pretrain"]["image_size"] == [16, 16]
    assert loop["ours ViT"]["vs_timm"]["median"] > 0 and "vs_timm" not in loop["timm ViT"]
    if bf16:
        assert all(loop[n]["vs_timm"]["median"] > 0 for n in ("ours ViT bf16", "timm ViT bf16"))
    for c in loop.values():
        assert list(c["phase_share"]) == list(PHASES) and sum(c["phase_share"].values()) == pytest.approx(1)
        assert all(s > 0 for s in c["phase_s"].values())
    table = (tmp_path / "loop.md").read_text()
    assert "× timm" in table and "warm-up s" in table
    assert ("under bfloat16 autocast" in table) == bf16 and result["run"]["bf16"] == bf16
    assert all(c["warm_up_s"] > 0 for c in loop.values())


def test_the_loop_refuses_bfloat16_weights():
    with pytest.raises(ValueError, match="--dtype: the training loop trains float32 weights"):
        bench.main(["--model", "mnist-vit", "--dtype", "bfloat16"])


def test_training_loop_names_mixed_with_a_model_name_are_refused():
    with pytest.raises(ValueError, match="--model: expected training-loop names among"):
        bench.main(["--model", "mnist-vit,ViT-B/16"])


@pytest.mark.parametrize("marker, tables", [
    ("loop results", ("loop_before.md", "loop.md", "loop_bf16.md", "loop_compile.md", "loop_operators.md",
                      "bf16_main_job.md")),
    ("bf16 results", ("bench_amd.md", "bench_autocast.md", "bench_bf16_weights.md"))])
def test_every_number_a_results_section_states_is_in_its_committed_tables(marker, tables):
    """paper/reports/README.md's training-loop and bfloat16 results (between their markers) type no number of their
    own: each is one the committed tables they cite print."""
    readme = (REPO / "paper" / "reports" / "README.md").read_text()
    section = readme[readme.index(f"<!-- {marker} -->"):readme.index(f"<!-- /{marker} -->")]
    section = re.sub(r"\[[^]]*\]\([^)]*\)|`[^`]*`|<!--[^>]*-->", "", section)       # links, code and markers
    printed_tables = "".join((REPO / "paper" / "results" / name).read_text() for name in tables)
    number = r"\d+(?:,\d{3})*(?:\.\d+)?"
    stated, printed = re.findall(number, section), set(re.findall(number, printed_tables))
    missing = [n for n in stated if n not in printed]
    assert len(stated) > 10 and not missing, missing


@pytest.mark.parametrize("steps, expected", [(100, [10] * 10), (25, [10, 10, 5]), (1, [1]), (10, [10])])
def test_a_round_is_taken_in_turns_that_add_up_to_its_steps(steps, expected):
    assert turns(steps) == expected
