"""python -m paper.export: a ViT, a distilled DeiT and a Swin written as .onnx and .pt2, each file loaded on its own
(onnxruntime's InferenceSession, torch.export.load) and run on a batch size neither the trace nor the command's check
used, against lowlevel's forward; the fast and explicit paths export the same function; bad input ends in one line,
exit code 2, and nothing written."""
import os

import onnxruntime
import pytest
import torch

import lowlevel
import paper.formats.export as exporting
from lowlevel import SwinConfig, ViTConfig
from paper import cli
from paper.export import main
from paper.formats.checkpoints import write_checkpoint
from paper.models.family import family_of
from tests.helpers import random_images, random_params

# Float32 files against lowlevel's forward in float64 on the same float32 weights: rounding alone, onnxruntime's fused
# kernels and the fast path summing in another order, measured at most 2e-6 on these models' logits (about 2 in
# size). 1e-5 leaves a margin of 5; a wrong graph is off by more (one dropped bias: about 1e-2).
F32 = dict(rtol=1e-5, atol=1e-5)
BATCH = 5                       # the trace saw 2, the command's check 1 and 3

VIT = ViTConfig(image_size=16, patch_size=4, dim=16, depth=1, num_heads=2, mlp_dim=32, num_classes=5)
DEIT = ViTConfig(image_size=16, patch_size=4, dim=16, depth=1, num_heads=2, mlp_dim=32, num_classes=5, distilled=True)
# A 6 x 10 patch grid and windows of 4: the second block's windows shifted (torch.roll and the attention mask), the
# grid padded to 8 x 12; not square. One stage keeps the four exports quick (a stage is exported alike, merged or not)
SWIN = SwinConfig(image_size=(12, 20), patch_size=2, dim=6, depths=(2,), num_heads=(2,), window_size=4, num_classes=3)
# What the timm state_dict files below cannot tell the reader (paper.convert's flags)
TELLS = {"vit": ["--num-heads", "2", "--image-size", "16", "16"], "swin": ["--image-size", "12", "20"]}


def checkpoint(cfg, tmp_path, family: str) -> tuple[dict, list[str]]:
    """A timm state_dict of random float32 weights (every tensor moved well away from its init) -> (params, the
    command's arguments for it)."""
    params = random_params(cfg, dtype=torch.float32, scale=0.3)
    write_checkpoint(params, cfg, tmp_path / f"{family}.pth")
    return params, [str(tmp_path / f"{family}.pth")] + TELLS["swin" if family == "swin" else "vit"]


def expected(params: dict, cfg, x: torch.Tensor) -> torch.Tensor:
    """lowlevel's explicit forward, in float64."""
    return family_of(cfg).model.forward({k: v.double() for k, v in params.items()}, x.double(), cfg)


def run_file(path, x: torch.Tensor) -> torch.Tensor:
    """The exported file's logits, loaded by its own runtime alone."""
    if str(path).endswith(".onnx"):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (images,), (logits,) = session.get_inputs(), session.get_outputs()
        assert (images.name, logits.name) == ("images", "logits") and isinstance(images.shape[0], str)   # dynamic
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0]).double()
    return torch.export.load(str(path)).module()(x).double()


def export(args: list[str], capsys) -> list[str]:
    main(args)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("family, cfg, explicit_to, fast_to", [("vit", VIT, "onnx", "pt2"),
                                                               ("deit", DEIT, "pt2", "onnx")])
def test_vit_and_distilled_deit_files_compute_our_forward_either_path(family, cfg, explicit_to, fast_to, tmp_path,
                                                                      capsys):
    params, args = checkpoint(cfg, tmp_path, family)
    x = random_images(cfg, BATCH, seed=7, dtype=torch.float32)
    explicit, fast = tmp_path / f"explicit.{explicit_to}", tmp_path / f"fast.{fast_to}"
    lines = export([args[0], str(explicit), *args[1:]], capsys) + export([args[0], str(fast), "--fast", *args[1:]],
                                                                         capsys)
    runners = {"onnx": "onnxruntime ", "pt2": "torch.export.load "}
    assert lines[1].startswith(runners[explicit_to]) and lines[3].startswith(runners[fast_to])
    assert all("agrees with our forward to" in line and "batches 1 and 3" in line for line in lines[1::2])
    assert "explicit path" in lines[0] and "fast path" in lines[2]
    want = expected(params, cfg, x)          # a distilled DeiT's two heads fused, as forward returns them
    torch.testing.assert_close(run_file(explicit, x), want, **F32)
    torch.testing.assert_close(run_file(fast, x), want, **F32)


def test_swin_exports_with_shifted_windows_and_a_mask_on_either_path_in_either_format(tmp_path, capsys):
    params, args = checkpoint(SWIN, tmp_path, "swin")
    x = random_images(SWIN, BATCH, seed=7, dtype=torch.float32)
    want = expected(params, SWIN, x)
    for suffix in ("onnx", "pt2"):
        for fast in (False, True):
            out = tmp_path / f"swin-{fast}.{suffix}"
            lines = export([args[0], str(out), *args[1:]] + ["--fast"] * fast, capsys)
            assert "agrees with our forward" in lines[1], lines
            torch.testing.assert_close(run_file(out, x), want, **F32)


def test_a_file_that_disagrees_with_our_forward_is_refused_and_not_kept(tmp_path, capsys, monkeypatch):
    _, args = checkpoint(VIT, tmp_path, "vit")
    real = exporting.onnxruntime_runner

    def off_by_a_wrong_graph(path):                      # as a dropped bias would be: 1e-2 on every logit
        name, run = real(path)
        return name, lambda x: run(x) + 1e-2

    monkeypatch.setattr(exporting, "onnxruntime_runner", off_by_a_wrong_graph)
    with pytest.raises(SystemExit) as ended:
        cli.run(main, [args[0], str(tmp_path / "vit.onnx"), *args[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert ended.value.code == 2 and len(err) == 1 and "above the tolerance" in err[0], err
    assert os.listdir(tmp_path) == ["vit.pth"]


def test_bad_input_ends_in_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    _, args = checkpoint(VIT, tmp_path, "vit")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "taken.onnx").write_text("")
    before = sorted(os.listdir(tmp_path))
    for argv, words in (([args[0], str(tmp_path / "vit.tflite"), *args[1:]], "expected a file named *.onnx (ONNX) or "
                                                                             "*.pt2 (torch.export)"),
                        ([args[0], str(tmp_path / "vit"), *args[1:]], "(suffix 'none')"),
                        ([str(tmp_path / "nothing.pth"), str(tmp_path / "vit.pt2")], "nothing.pth: expected a "
                                                                                     "checkpoint file or directory"),
                        ([args[0], str(tmp_path / "a_file" / "vit.pt2"), *args[1:]], "could not write"),
                        ([args[0], str(tmp_path / "taken.onnx"), *args[1:]], "pass --force to replace it")):
        with pytest.raises(SystemExit) as ended:
            cli.run(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert ended.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
        assert sorted(os.listdir(tmp_path)) == before


def test_help_names_both_formats(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["--help"])
    text = capsys.readouterr().out
    assert ended.value.code == 0 and ".onnx" in text and ".pt2" in text and "--fast" in text


def test_the_check_refuses_logits_off_by_more_than_1e_4_of_their_scale():
    params = random_params(VIT, dtype=torch.float32, scale=0.3)
    ours = lambda x: lowlevel.forward(params, x, VIT)                          # noqa: E731
    assert exporting.agreement(ours, params, VIT, "ours")[0] == 0.0
    with pytest.raises(ValueError, match="above the tolerance"):               # 3e-4 of every logit, 1e-4 allowed
        exporting.agreement(lambda x: ours(x) * (1 + 3 * exporting.RELATIVE_TOLERANCE), params, VIT, "scaled")
