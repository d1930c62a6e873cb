"""The commands: `python -m paper.convert` and `python -m paper.verify`."""
import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import ViTForImageClassification

import lowlevel as vit
import paper.verify
from paper import cli
from paper.convert import main as convert_main
from paper.formats.checkpoints import read_checkpoint
from paper.formats.npz import write_npz
from paper.references import equivalence
from paper.references.equivalence import verify_config
from paper.reports.verify_tables import format_table
from tests import helpers

# helpers.random_params' scale in these tests: every tensor perturbed well away from its initial value,
# so no mapping error can hide.
FAR = 0.3


def tiny_cfg(**kw):
    return vit.ViTConfig(**{"image_size": 32, "patch_size": 8, "dim": 128, "depth": 2, "num_heads": 2, "mlp_dim": 256,
                            "num_classes": 5, **kw})


@pytest.mark.parametrize("module", ["paper.convert", "paper.verify", "paper.gradient_norms"])
def test_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith(f"usage: python -m {module}")


def test_convert_npz_to_hf_directory_then_timm(tmp_path, capsys):
    """An official npz (tanh GELU) becomes a directory transformers loads offline and that computes our model."""
    cfg = tiny_cfg(gelu="tanh")
    params = helpers.random_params(cfg, dtype=torch.float32, scale=FAR)
    write_npz(params, cfg, tmp_path / "m.npz")
    convert_main([str(tmp_path / "m.npz"), str(tmp_path / "hf")])
    assert "(npz) ->" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["hidden_act"] == "gelu_pytorch_tanh" and config["layer_norm_eps"] == 1e-6
    model = ViTForImageClassification.from_pretrained(tmp_path / "hf", local_files_only=True).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ours = vit.forward({k: v.double() for k, v in params.items()}, x, cfg)
    torch.testing.assert_close(ours, model(x).logits, rtol=0, atol=1e-10)   # float64: rounding order only

    convert_main([str(tmp_path / "hf"), str(tmp_path / "m.safetensors")])
    cfg2, params2, fmt = read_checkpoint(tmp_path / "m.safetensors", num_heads=cfg.num_heads)
    assert fmt == "timm" and all(torch.equal(params[k], params2[k]) for k in params)


def test_convert_refuses_and_writes_nothing(tmp_path, capsys):
    cfg = tiny_cfg()
    write_npz(helpers.random_params(cfg, dtype=torch.float32, scale=FAR), cfg, tmp_path / "m.npz")
    with pytest.raises(SystemExit) as e:
        cli.run(convert_main, [str(tmp_path / "m.npz"), str(tmp_path / "out.pth"), "--model", "ViT-B/16"])
    assert e.value.code == 2
    err = capsys.readouterr().err                     # a tiny ViT's tensors against ViT-B/16's: counted
    assert "mis-shaped keys, the first: Transformer/encoder_norm/bias: expected (768,), got (128,)" in err
    (tmp_path / "bad.npz").write_bytes((tmp_path / "m.npz").read_bytes()[:500])
    with pytest.raises(SystemExit):
        cli.run(convert_main, [str(tmp_path / "bad.npz"), str(tmp_path / "out.pth")])
    assert "bad.npz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "m.npz"]


def test_verify_config_finds_equality_on_a_tiny_model():
    row64 = verify_config(tiny_cfg(), torch.float64, batch=2)
    row32 = verify_config(tiny_cfg(), torch.float32, batch=2)
    for key in ("timm_logits", "timm_features", "hf_logits", "hf_features"):
        assert 0 <= row64[key][0] < 1e-10
        assert row32[key][0] < 1e-5            # fp32: summation order in matmuls/SDPA, ~1e-7 relative per op
    assert row64["ours"] == row64["timm"] == row64["hf"] == sum(math.prod(s) for s in vit.param_shapes(tiny_cfg()).values())
    table = format_table([row64, row32])
    assert table.count("\n") == 3 and "| custom | float64 |" in table


def test_verify_reports_what_does_not_fit(monkeypatch, capsys):
    monkeypatch.setattr(equivalence, "available_bytes", lambda: 0)
    paper.verify.main(["--models", "ViT-H/14", "--dtypes", "float64"])
    out = capsys.readouterr().out
    assert "| ViT-H/14 | float64 | not run: needs ~" in out and "632,045,800" in out


def test_verify_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.run(paper.verify.main, ["--models", "ViT-Q/16"])
    assert "name: expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper.verify.main(["--batch", "0"])
