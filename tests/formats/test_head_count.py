"""The head count is never guessed: timm checkpoints with head dimensions 32, 64 and 80 converted by
`python -m paper.convert` to every format either load, in the library that reads that format, as a model computing
the source's logits (float64), or the command refuses, naming --num-heads, and writes nothing."""
import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT
from transformers import ViTForImageClassification

from paper import cli
from paper.convert import main as convert
from paper.formats.huggingface import from_hf, to_hf
from paper.formats.timm import from_timm
from paper.formats.torchvision import from_torchvision, to_torchvision
from paper.models.family import model_name
from tests.helpers import randomised

F64 = dict(rtol=0, atol=1e-10)    # float64, the same arithmetic in another order
# destination name, extra flags, and how the library that reads the format loads it into a model
DESTINATIONS = ["m.pth", "m.safetensors", "m.npz", "hf", "hub", "tv.pth"]
FLAGS = {"hub": ["--to", "timm-hub"], "tv.pth": ["--to", "torchvision"]}


def source_model(head_dim: int, num_heads: int = 2, depth: int = 1, patch: int = 8, image: int = 16):
    """A timm VisionTransformer of D = head_dim · heads with every weight random (timm's own init leaves LN at 1/0)."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image, patch_size=patch,
                              embed_dim=head_dim * num_heads, depth=depth, num_heads=num_heads, num_classes=7)
    return randomised(model.double().eval())


def loaded_by_its_library(path, dst: str, model) -> torch.nn.Module:
    """The converted checkpoint (float64 weights) in a float64 model of the library that reads its format."""
    d, heads, depth = model.embed_dim, model.blocks[0].attn.num_heads, len(model.blocks)
    image, patch = model.patch_embed.img_size[0], model.patch_embed.patch_size[0]
    if dst == "hf":
        return ViTForImageClassification.from_pretrained(path, local_files_only=True, attn_implementation="sdpa",
                                                         dtype=torch.float64)
    torch.set_default_dtype(torch.float64)                 # built in float64, so loading rounds nothing
    try:
        if dst == "hub":
            return timm.create_model(f"local-dir:{path}", pretrained=True)
        if dst == "tv.pth":
            theirs = TorchvisionViT(image, patch, depth, heads, d, model.blocks[0].mlp.fc1.out_features, num_classes=7)
            theirs.load_state_dict(torch.load(path, weights_only=True))
            return theirs
        theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image, patch_size=patch,
                                   embed_dim=d, depth=depth, num_heads=heads, num_classes=7)
    finally:
        torch.set_default_dtype(torch.float32)
    if dst.endswith(".npz"):
        _load_weights(theirs, str(path))                   # timm's loader of the official format
    else:
        theirs.load_state_dict(timm.models.load_state_dict(str(path)))
    return theirs


def logits(model, x):
    out = model.eval()(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("head_dim", [32, 64, 80])
def test_convert_never_writes_a_model_with_another_head_count(tmp_path, capsys, head_dim):
    model = source_model(head_dim)
    torch.save(model.state_dict(), tmp_path / "src.pth")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = model(x)
    for dst in DESTINATIONS:
        args = [str(tmp_path / "src.pth"), str(tmp_path / dst), *FLAGS.get(dst, [])]
        with pytest.raises(SystemExit) as refused:                 # 2 heads of this D: no known architecture
            cli.run(convert, args)
        assert refused.value.code == 2 and "--num-heads" in capsys.readouterr().err
        assert not (tmp_path / dst).exists()
        with pytest.raises(SystemExit) as done:
            cli.run(convert, [*args, "--num-heads", "2"])
        summary = capsys.readouterr().out
        assert done.value.code == 0 and "2 heads (--num-heads)" in summary
        # the .npz records no GELU, and the official code computes tanh: the summary says how to read it back
        assert ("read it back with --gelu exact" in summary) == dst.endswith(".npz")
        theirs = loaded_by_its_library(tmp_path / dst, dst, model)
        torch.testing.assert_close(logits(theirs, x), expected, **F64, msg=dst)


def test_a_known_architecture_gives_its_head_count_and_is_named(tmp_path, capsys):
    """timm's test_vit (D = 64, 6 layers, MLP 192, patch 16, 2 heads of 32) is in the table: no flag needed."""
    model = randomised(timm.create_model("test_vit", pretrained=False, img_size=32).double().eval())
    torch.save(model.state_dict(), tmp_path / "src.pth")
    with pytest.raises(SystemExit) as done:
        cli.run(convert, [str(tmp_path / "src.pth"), str(tmp_path / "hf")])
    assert done.value.code == 0 and "2 heads (known architecture test_vit)" in capsys.readouterr().out
    theirs = ViTForImageClassification.from_pretrained(tmp_path / "hf", local_files_only=True,
                                                       attn_implementation="sdpa", dtype=torch.float64)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(logits(theirs, x), model(x), **F64)


def test_the_issues_d64_four_head_model_is_refused_not_read_with_one_head(tmp_path, capsys):
    """The issue's first example: D = 64 with 4 heads (D_h = 16) came out as 1 head, logits off by 0.70."""
    model = source_model(16, num_heads=4)
    torch.save(model.state_dict(), tmp_path / "src.pth")
    with pytest.raises(SystemExit) as refused:
        cli.run(convert, [str(tmp_path / "src.pth"), str(tmp_path / "out.safetensors")])
    assert refused.value.code == 2 and "--num-heads" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_heads=... in the API"):
        from_timm(model.state_dict())
    cfg, _ = from_timm(model.state_dict(), num_heads=4)           # the API's way to say it
    assert cfg.num_heads == 4


def test_vit_h14_shapes_read_with_16_heads_in_every_state_dict_format():
    """ViT-H/14 (D_h = 80) on the meta device: no weights allocated. timm's, transformers' and torchvision's state
    dicts do not store the head count: each comes back with 16 heads from the table. (The official .npz stores it in
    its kernels' shapes, (D, H, D_h), which the small models above check.)"""
    with torch.device("meta"):
        model = timm.create_model("vit_huge_patch14_224", pretrained=False, weight_init="skip", num_classes=1000)
    cfg, params = from_timm(model.state_dict())
    assert cfg.num_heads == 16 and cfg.head_dim == 80
    assert from_torchvision(to_torchvision(params, cfg))[0] == cfg
    assert from_hf(to_hf(params, cfg)[0], layer_norm_eps=1e-6)[0] == cfg      # no config.json: the table alone



@pytest.mark.parametrize("name, heads, paper_name", [("vit_base_r50_s16_224", 12, "R50+ViT-B/16"),
                                                     ("vit_large_r50_s32_384", 16, "R50+ViT-L/32"),
                                                     ("vit_small_r26_s32_224", 6, "R26+ViT-S/32")])
def test_the_papers_hybrids_read_with_their_head_count_from_the_table(name, heads, paper_name):
    """A timm hybrid's bare state dict (on the meta device) shows (D, depth, MLP size, patch 1 on the ResNet's feature
    map): the table gives its head count, where it once asked for --num-heads, and the hybrid is named."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, weight_init="skip", num_classes=1000)
    cfg, _ = from_timm(model.state_dict())
    assert cfg.num_heads == heads and model_name(cfg) == paper_name
