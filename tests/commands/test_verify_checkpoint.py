"""`python -m paper.verify --checkpoint`: a user's own weights on a real photo through ours, timm, transformers and
torchvision. The printed numbers are checked against a direct computation with the model the checkpoint came from,
and the prepared image against the library's own preprocessing."""
import pytest
import torch
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.transforms._presets import ImageClassification
from transformers import ViTForImageClassification, ViTImageProcessor

import lowlevel as vit
from paper import cli
from paper.formats.checkpoints import read_checkpoint
from paper.formats.huggingface import hf_config
from paper.references.on_photo import sample_photo, verify_checkpoint
from paper.verify import main as verify_main
from tests.helpers import randomised


def check_rows(result, theirs_name: str, their_logits: dict, ours: dict):
    """Every row of `theirs_name` holds max |ours − theirs|, max |ours − theirs| / max |theirs| and the top-5 as
    computed here from the original model."""
    for row in result["rows"]:
        if row["implementation"] != theirs_name:
            continue
        a, b = ours[row["dtype"]][0], their_logits[row["dtype"]][0]
        assert row["max_abs"] == (a - b).abs().max().item()
        assert row["max_rel"] == pytest.approx((a - b).abs().max().item() / b.abs().max().item(), rel=1e-12)
        assert row["top5_agree"] == len(set(a.topk(5).indices.tolist()) & set(b.topk(5).indices.tolist()))
        assert row["max_abs"] < (1e-5 if row["dtype"] == "float32" else 1e-12)


def test_verify_a_torchvision_saved_model_on_the_sample_photo(tmp_path):
    model = randomised(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                         mlp_dim=96, num_classes=10)).eval()
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    result = verify_checkpoint(tmp_path / "vit.pth", num_heads=4)
    # torchvision's preset for its ViT weights: resize to 256/224 of the crop, centre-crop, ImageNet mean and std
    preset = ImageClassification(crop_size=32, resize_size=37)
    expected_image = preset(Image.open(sample_photo()).convert("RGB"))[None]
    torch.testing.assert_close(result["image"].float(), expected_image, rtol=0, atol=1e-6)   # their float32 normalise
    cfg, params, _ = read_checkpoint(tmp_path / "vit.pth", num_heads=4)
    ours, theirs = {}, {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        x = result["image"].to(dtype)
        with torch.no_grad():
            ours[name] = vit.forward({k: v.to(dtype) for k, v in params.items()}, x, cfg)
            theirs[name] = model.to(dtype)(x)
    check_rows(result, "torchvision", theirs, ours)
    assert [r["implementation"] for r in result["rows"]] == ["ours", "timm", "transformers", "torchvision"] * 2
    assert "heads (--num-heads)" in result["header"][0] and "ImageClassification" in result["header"][1]


def test_verify_a_transformers_directory_prints_its_table(tmp_path, capsys):
    """A directory written by transformers itself, with a preprocessor_config.json and class names: the command
    prints the table, with the labels; the numbers equal the transformers model's own."""
    cfg = vit.ViTConfig(image_size=32, patch_size=8, dim=64, depth=2, num_heads=4, mlp_dim=96, num_classes=6)
    config = hf_config(cfg)
    config.id2label = {i: name for i, name in enumerate(["cat", "dog", "temple", "car", "tree", "sky"])}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = randomised(ViTForImageClassification(config)).eval()
    model.save_pretrained(tmp_path / "hf")
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                  image_std=[0.2, 0.3, 0.25])
    processor.save_pretrained(tmp_path / "hf")

    result = verify_checkpoint(tmp_path / "hf")
    pixels = processor(Image.open(sample_photo()), return_tensors="pt")["pixel_values"]
    levels = (result["image"].float() - pixels).abs() * torch.tensor([0.2, 0.3, 0.25])[:, None, None] * 255
    assert levels.max() < 1 + 1e-4 and (levels > 1e-4).float().mean() < 0.01   # ≤ 1 grey level in a few pixels:
    # transformers resizes by PIL too, and rounds one pixel of this photo the other way
    cfg2, params, _ = read_checkpoint(tmp_path / "hf")
    ours, theirs = {}, {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        x = result["image"].to(dtype)
        with torch.no_grad():
            ours[name] = vit.forward({k: v.to(dtype) for k, v in params.items()}, x, cfg2)
            theirs[name] = model.to(dtype)(x).logits
    check_rows(result, "transformers", theirs, ours)
    assert "preprocessor_config.json" in result["header"][1] and "(0.4, 0.5, 0.6)" in result["header"][1]

    with pytest.raises(SystemExit) as done:
        cli.run(verify_main, ["--checkpoint", str(tmp_path / "hf"), "--dtypes", "float64"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "4 heads (config.json)" in out and "| ours | float64 | - | - | - |" in out
    for name in ("timm", "transformers", "torchvision"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} | float64 | "))
        assert "5/5" in row
    best = theirs["float64"][0].softmax(-1).argmax().item()
    ours_row = next(line for line in out.splitlines() if line.startswith("| ours | float64"))
    assert f"{best} {config.id2label[best]} (" in ours_row                    # the top-5, with the labels


def test_verify_refuses_flags_it_cannot_use():
    with pytest.raises(SystemExit):
        verify_main(["--image", "x.jpg"])
    with pytest.raises(ValueError, match="does not exist"):
        verify_main(["--checkpoint", "nowhere.pth"])
