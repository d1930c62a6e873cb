"""The workbooks and their checker: every solution passes, every untouched workbook fails every task with a hint,
typical mistakes planted in copies of the solutions are caught with their hints, the checker survives broken
learner code, and the solutions' plots and model are what they claim to be."""
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

import lowlevel as vit
from exercises.__main__ import main
from exercises.checker import check_workbook, sections, workbooks
from exercises.grading import GRADERS
from exercises.runner import run_tasks
from paper import analysis

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "exercises" / "solutions"
NAMES = ["01_patch_embedding", "02_attention_maps", "03_position_embeddings", "04_fine_tuning", "05_vit_vs_cnn"]

# Each copy of a solution gets typical mistakes by text substitution, in tasks whose code does not depend on each
# other, and states the hint each mistaken task must get. `only`: grade just that task (earlier ones still run).
MISTAKES = {
    "01-a": ("01_patch_embedding", None, [
        (1, "x = x.permute(0, 2, 4, 1, 3, 5)", "x = x.permute(0, 2, 4, 3, 5, 1)", "(P, P, C) order"),
        (3, "return out.flatten(2).transpose(1, 2)", "return out.flatten(2)", "flatten(2) then transpose(1, 2)"),
        (5, "out = torch.ones(", "out = torch.zeros(", "filled with 1.0 between tiles")]),
    "01-b": ("01_patch_embedding", None, [
        (2, "@ weight.T + bias    #", "@ weight.T    #", "the bias is missing"),
        (4, "return (h // patch_size) * (w // patch_size) + 1", "return (h // patch_size) * (w // patch_size)",
         "the class token is a token too")]),
    "02-a": ("02_attention_maps", None, [
        (1, "scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5", "scores = q @ k.transpose(-2, -1)",
         "the scores are not scaled"),
        (4, "attention.mean(dim=1)[:, 0, 1:]", "attention.mean(dim=1)[:, 1:, 0]", "the map is row 0"),
        (5, "a_hat = 0.5 * a.mean(dim=1) + 0.5 * eye", "a_hat = a.mean(dim=1)", "the residual is missing")]),
    "02-b": ("02_attention_maps", None, [
        (1, "probs = scores.softmax(dim=-1)", "probs = scores.softmax(dim=-2)", "softmax is over the wrong axis"),
        (5, "a_hat if rollout is None else a_hat @ rollout", "a_hat if rollout is None else rollout @ a_hat",
         "multiply later layers from the left"),
        (6, ".float() * patch_size   #", ".float()   #", "the distance is in pixels")]),
    "02-c": ("02_attention_maps", 2, [
        (2, "(t.reshape(b, n, num_heads, dh).transpose(1, 2) for", "(t.reshape(b, num_heads, n, dh) for",
         "heads are split wrongly")]),
    "02-d": ("02_attention_maps", 3, [
        (3, "z = z + a                                                                 # eq. (2)", "z = a",
         "the residual connection of eq. (2) is missing")]),
    "03-a": ("03_position_embeddings", None, [
        (1, "/ (quarter - 1))", "/ quarter)", "divide by D/4 - 1"),
        (2, "torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)",
         "torch.cat([x, cls.expand(x.shape[0], -1, -1)], dim=1)", "the class token goes first"),
        (3, "    e = e / e.norm(dim=-1, keepdim=True)\n", "", "divides by both norms"),
        (4, "grid.permute(2, 0, 1)[None]", "grid.reshape(1, d, *old_grid)", "a plain reshape")]),
    "04-a": ("04_fine_tuning", None, [
        (1, "torch.zeros(num_classes, cfg.dim)", "torch.zeros(cfg.dim, num_classes)", "(K, D), not (D, K)"),
        (2, "cfg.grid_size, new_cfg.grid_size, 1", "cfg.grid_size, cfg.grid_size, 1", "interpolate the patch rows"),
        (3, "scale = min(1.0, max_norm / (norm.item() + 1e-6))", "scale = 1.0", "clip the gradients first"),
        (4, "steps=200, base_lr=0.1)", "steps=1, base_lr=0.1)", "")]),     # keeps this copy's run short
    "04-b": ("04_fine_tuning", None, [
        (1, 'if not k.startswith(("pre_logits.", "head."))', 'if not k.startswith("head.")', "pre_logits"),
        (3, "velocity = {k: momentum * velocity[k] + scale * grads[k] for k in p}",
         "velocity = {k: scale * grads[k] for k in p}", "momentum: v = 0.9·v + g"),
        (4, "steps=200, base_lr=0.1)", "steps=1, base_lr=0.1)", ""),          # a short run: the mistake is below
        (4, "params, velocity, _ = sgd_step(", "_, velocity, _ = sgd_step(", "gradients that are never applied")]),
    "05-a": ("05_vit_vs_cnn", None, [
        (1, "    tokens = d + (n + 1) * d ", "    tokens = n * d ", "E_pos has a row for it"),
        (2, "2 * t * t * d + t * d * d", "t * d * d", "attention itself multiplies too"),
        (3, "weight_decay=0.0)", ")", "default weight decay is 0.01"),
        (3, "sizes, steps = (100, 1000), 80", "sizes, steps = (100, 1000), 1", ""),     # keeps this copy's run short
        (4, "test_pixels[:300], test_labels[:300]", "test_pixels[:20], test_labels[:20]", ""),
        (4, "    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))\n",
         "    return torch.roll(images, (dy, dx), dims=(-2, -1))\n", "torch.roll wraps around")]),
    "05-b": ("05_vit_vs_cnn", None, [
        (1, "        shortcut = c * 2 * c + 2 * 2 * c ", "        shortcut = 0 ", "a 1×1 stride-2 shortcut"),
        (2, "        s = math.ceil(s / 2)                                                  # the first conv",
         "        s = s // 2                                                  # the first conv", "⌈s/2⌉, not ⌊s/2⌋"),
        (3, "        optimizer.zero_grad()\n", "", "zero the gradients"),
        (3, "sizes, steps = (100, 1000), 80", "sizes, steps = (100, 1000), 1", ""),
        (4, "test_pixels[:300], test_labels[:300]", "test_pixels[:20], test_labels[:20]", ""),
        (4, "for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))])", "for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))])",
         "in the order down, up, right, left")]),
    "05-c": ("05_vit_vs_cnn", 3, [
        (3, "    g = torch.Generator().manual_seed(seed)\n    for _ in range(steps):\n",
         "    for _ in range(steps):\n        g = torch.Generator().manual_seed(seed)\n", "seeded once"),
        (3, "sizes, steps = (100, 1000), 80", "sizes, steps = (100, 1000), 1", "")]),
}


def plant(name: str, substitutions) -> str:
    text = (SOLUTIONS / f"{name}.md").read_text()
    for _, old, new, _ in substitutions:
        assert text.count(old) == 1, f"the solution of {name} changed: {old!r} must occur once"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Every solution checked as a learner checks it, each in its own process, two at a time."""
    out = tmp_path_factory.mktemp("graded")

    def run(name):
        return name, check_workbook(SOLUTIONS / f"{name}.md", timeout=120, output_dir=out / name)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, NAMES)), out


@pytest.fixture(scope="module")
def mistaken(tmp_path_factory):
    """The mistaken copies, run and graded by the checker's runner in this process (no process start per copy;
    process isolation is tested on the solutions and the untouched workbooks)."""
    matplotlib.use("Agg")
    out = tmp_path_factory.mktemp("mistaken")
    results, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)   # as the runner's child process does: small tensors, one thread is faster
    try:
        for key, (name, only, substitutions) in MISTAKES.items():
            setup, found = sections(plant(name, substitutions))
            tasks = {n: found[n][1] for n in sorted(found) if only is None or n <= only}
            got = results[key] = {}
            run_tasks(name, setup, tasks, out, 120.0, only, lambda n, failure, got=got: got.__setitem__(n, failure))
    finally:
        torch.set_num_threads(threads)
    return results


def test_workbooks_and_solutions_have_the_same_tasks_as_their_graders():
    assert [p.stem for p in workbooks()] == NAMES
    for name in NAMES:
        for path in (REPO / "exercises" / f"{name}.md", SOLUTIONS / f"{name}.md"):
            _, tasks = sections(path.read_text())
            assert sorted(tasks) == sorted(GRADERS[name]), path


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_solution_passes_every_task(graded, name):
    results = graded[0][name]
    assert [r.task for r in results] == sorted(GRADERS[name])
    assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


@pytest.mark.slow
def test_untouched_workbooks_fail_every_task_with_a_hint(tmp_path):
    """Through the command line, as a learner runs it: `python -m exercises check --all`."""
    proc = subprocess.run([sys.executable, "-m", "exercises", "check", "--all", "--output-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  task ")]
    assert len(lines) == sum(len(t) for t in GRADERS.values())
    for line in lines:
        assert ": FAIL: " in line and "Hint: " in line and line.split("Hint: ")[1].strip(), line
    assert proc.stdout.strip().endswith(f"{len(lines)} task(s) failed")


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(MISTAKES))
def test_planted_mistakes_are_caught_with_their_hint(mistaken, key):
    for task, _, _, hint in MISTAKES[key][2]:
        if hint:
            failure = mistaken[key][task]
            assert failure is not None, f"{key}: task {task} passed with a planted mistake"
            assert hint in failure[1], f"{key}: task {task}: {failure}"


BROKEN = {   # one copy of workbook 03 that breaks in every way learner code can, task by task
    1: ("    quarter = dim // 4\n", "    quarter = dim // 4)\n"),                                  # syntax error
    2: ("    return tokens + pos", "    return (tokens + pos)[:, 1:]"),                          # wrong shape
    3: ("    e = e / e.norm(dim=-1, keepdim=True)\n", "    while True:\n        pass\n"),           # a hang
    4: ("    d = pos.shape[-1]\n", "    d = pos.shape[-1]\n    os._exit(3)\n"),                  # kills Python
}


def test_checker_reports_syntax_errors_wrong_shapes_hangs_and_crashes_per_task(tmp_path):
    text = (SOLUTIONS / "03_position_embeddings.md").read_text()
    for old, new in BROKEN.values():
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = tmp_path / "03_position_embeddings.md"
    path.write_text(text)
    results = {r.task: r for r in check_workbook(path, timeout=2, output_dir=tmp_path)}
    assert "syntax error in task 1, line" in results[1].message
    assert "wrong shape: expected (2, 7, 8), got (2, 6, 8)" in results[2].message
    assert "task 3 did not finish within 2 s" in results[3].message
    assert "exit code 3" in results[4].message
    assert all(not r.passed and r.hint for r in results.values())



def test_checker_reports_missing_sections_and_unknown_workbooks(tmp_path):
    unknown = tmp_path / "99_unknown.md"
    unknown.write_text("## Task 1: x\n```python\nx = 1\n```\n")
    assert "no grader" in check_workbook(unknown)[0].message
    empty = tmp_path / "03_position_embeddings.md"
    empty.write_text("# nothing here\n")
    results = check_workbook(empty, output_dir=tmp_path)
    assert len(results) == 4 and all("no '## Task" in r.message and r.hint for r in results)
    assert [r.task for r in check_workbook(empty, output_dir=tmp_path, only=2)] == [2]     # `--task 2`


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_help:
        main(["check", "--help"])
    assert exit_help.value.code == 0 and "--all" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_usage:
        main(["check"])
    assert exit_usage.value.code == 2 and "expected workbook paths or --all" in capsys.readouterr().err


# The solutions' plots and model are real: their numbers, not just their files.

def test_solution_patch_grid_png_holds_the_photos_patches(graded):
    png = np.asarray(Image.open(graded[1] / "01_patch_embedding" / "patch_grid.png")).astype(float) / 255
    photo = load_sample_image("china.jpg")
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = Image.fromarray(photo[top:top + side, left:left + side]).resize((224, 224), Image.BICUBIC)
    image = torch.from_numpy(np.asarray(square).copy()).float() / 255
    assert png.shape == (14 * 16 + 13 * 2, 14 * 16 + 13 * 2, 3)
    patches = vit.patchify(image.permute(2, 0, 1)[None], 16)[0].reshape(14, 14, 3, 16, 16)   # independent cut
    for i, j in [(0, 0), (3, 11), (13, 13)]:
        tile = png[i * 18:i * 18 + 16, j * 18:j * 18 + 16]                                     # (16, 16, 3)
        assert np.abs(tile - patches[i, j].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    assert (png[16:18] == 1.0).all() and (png[:, 16:18] == 1.0).all()                          # the white gaps


@pytest.fixture(scope="module")
def fine_tuned(graded):
    """The model the 04 solution fine-tuned on the digits 5-9 at 16×16, and its attention on held-out digits."""
    saved = torch.load(graded[1] / "04_fine_tuning" / "fine_tuned_digits.pt")
    cfg = vit.ViTConfig(**saved["config"])
    from exercises.grading.fine_tuning import digits
    images, labels = digits(5, 16, "test")
    with torch.no_grad():
        logits, out = vit.forward_intermediates(saved["params"], images, cfg)
    return cfg, logits, labels, out["attention"]


@pytest.mark.slow
def test_fine_tuned_model_is_trained(fine_tuned):
    _, logits, labels, _ = fine_tuned
    assert (logits.argmax(-1) == labels).float().mean() >= 0.8


@pytest.mark.slow
def test_fine_tuned_rollout_rows_sum_to_one_and_favour_the_token_itself(fine_tuned):
    cfg, _, _, attention = fine_tuned
    rollout = analysis.attention_rollout(attention)                  # (B, 65, 65)
    assert torch.allclose(rollout.sum(-1), torch.ones(rollout.shape[:2]), atol=1e-5)   # float32 sums of 65 terms
    assert (rollout >= 0).all()
    # every token keeps at least (1/2)^L of itself through the residual path
    assert (rollout.diagonal(dim1=-2, dim2=-1) >= 0.5 ** cfg.depth).all()


@pytest.mark.slow
def test_fine_tuned_attention_distance_grows_with_depth(fine_tuned):
    """Fig. 7 right, in pixels on the 16×16 digits (P = 2): the last layer attends farther than the first."""
    cfg, _, _, attention = fine_tuned
    distance = torch.stack([analysis.mean_attention_distance(a, cfg.grid_size, cfg.patch_size) for a in attention])
    per_layer = distance.mean(dim=1)                                  # (L,), mean over heads
    longest = math.dist((0, 0), (14, 14))                             # farthest pair of patch centres, pixels
    assert ((distance > 0) & (distance < longest)).all()
    assert per_layer[-1] > per_layer[0]
    assert per_layer[cfg.depth // 2:].mean() > per_layer[:cfg.depth // 2].mean()


def test_position_similarity_of_sincos_peaks_at_own_position_and_falls_with_distance():
    grid = (7, 7)
    pos = torch.cat([torch.zeros(1, 64), vit.sincos_2d(grid, 64)])[None]
    sim = analysis.position_similarity(pos, grid)                     # (7, 7, 7, 7)
    for r in range(7):
        for c in range(7):
            tile = sim[r, c]
            assert tile.argmax().item() == r * 7 + c
            assert tile[r, c] == pytest.approx(1.0, abs=1e-6)
    centre = sim[3, 3]
    assert centre[3, 4] > centre[3, 6] and centre[4, 3] > centre[6, 3]   # nearer patches are more similar


def test_untrained_model_attends_almost_uniformly():
    """What workbook 02 shows with random weights: distances near the uniform-attention value."""
    cfg = vit.ViTConfig(image_size=32, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=0)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, out = vit.forward_intermediates(params, images, cfg)
    uniform = analysis.patch_distances(cfg.grid_size, cfg.patch_size).mean().item()
    for a in out["attention"]:
        d = analysis.mean_attention_distance(a, cfg.grid_size, cfg.patch_size)
        # 64 of the 65 keys are patches, so uniform attention over all 65 tokens gives 64/65 of the uniform value
        assert torch.allclose(d, torch.full_like(d, uniform * 64 / 65), rtol=0.05)


# The numbers the workbooks state.

def test_workbook_01_vit_b16_counts():
    """86,567,656 is the count the official code's models_test.py pins for ViT-B/16 at 224 px, 1000 classes."""
    cfg = vit.ViTConfig()
    assert sum(math.prod(s) for s in vit.param_shapes(cfg).values()) == 86_567_656
    assert cfg.num_tokens == 197


def test_workbook_02_random_vit_ti_attends_about_116_pixels():
    from paper.configs import paper_config
    cfg = paper_config("ViT-Ti/16", num_classes=10)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        _, out = vit.forward_intermediates(params, images, cfg)
    uniform = analysis.patch_distances(cfg.grid_size, 16).mean().item() * 196 / 197   # 196 of 197 keys are patches
    assert uniform == pytest.approx(115.9, abs=0.05)
    for a in out["attention"]:
        assert torch.allclose(analysis.mean_attention_distance(a, cfg.grid_size, 16), torch.tensor(uniform),
                              rtol=0.03)


def test_workbook_04_zero_head_starts_at_log_k():
    from paper.heads import finetuning_head
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=2, num_heads=4, mlp_dim=64,
                        num_classes=10, representation_size=32)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    params, cfg = finetuning_head(params, cfg, 5)
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    logits = vit.forward(params, images, cfg)
    assert torch.equal(logits, torch.zeros(6, 5))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4, 0]))
    assert loss.item() == pytest.approx(math.log(5), abs=1e-6)


def test_workbook_05_grader_formulas_equal_the_libraries_when_nothing_is_wrong():
    """The hand formulas the 05 grader bends into known mistakes are right when unbent: parameters equal
    param_count and torchvision's, multiply-adds equal torch.utils.flop_counter's."""
    from exercises.grading import vit_vs_cnn as g
    from paper.compare import multiply_adds
    from paper.configs import param_count

    for cfg in g.VIT_CASES:
        assert g.vit_params_by_hand(cfg) == param_count(cfg)
        params = vit.init_params(cfg)
        assert g.vit_macs_by_hand(cfg) == multiply_adds(lambda x, p=params, c=cfg: vit.forward(p, x, c), cfg)
    for cfg in g.CNN_CASES:
        net = g.resnet18(cfg).eval()
        assert g.resnet_params_by_hand(cfg) == sum(p.numel() for p in net.parameters())
        assert g.resnet_macs_by_hand(cfg) == multiply_adds(net, cfg)
