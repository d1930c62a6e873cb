"""`python -m paper.attention`: on tiny random-weight ViTs and DeiTs written in each format (and by paper.train's
save_checkpoint), the JSON's numbers are paper.analysis's on the original weights and the same prepared photo, the
PNGs are PNGs, and every bad input is refused in one line with nothing written."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lowlevel as vit
from lowlevel import SwinConfig
from paper import cli
from paper.analysis import maps
from paper.analysis.filters import embedding_filters, principal_components
from paper.attention import main
from paper.formats.checkpoints import read_preprocessing, write_checkpoint
from paper.references.on_photo import open_photo, prepare
from paper.training.recipes import DIGITS_PRETRAIN
from paper.training.state import save_checkpoint
from tests import helpers

PNG = b"\x89PNG\r\n\x1a\n"


def tiny(**kw) -> vit.ViTConfig:
    return vit.ViTConfig(**{"image_size": 32, "patch_size": 8, "dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64,
                            "num_classes": 5, **kw})


def photo(path, mode="RGB", size=(48, 40)):
    """A random photo, wider than tall (so a centre crop matters)."""
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return str(path)


def expected_numbers(params, cfg, x):
    """paper.analysis on forward_intermediates' attention: what the JSON must hold."""
    logits, out = vit.forward_intermediates({k: v.double() for k, v in params.items()}, x, cfg)
    attention, grid, prefix = out["attention"], cfg.grid_size, cfg.num_prefix_tokens
    return {"distance": [maps.mean_attention_distance(a, grid, cfg.patch_size, prefix).tolist() for a in attention],
            "class_token": [[maps.class_token_map(a[:, h], grid, prefix)[0].tolist() for h in range(cfg.num_heads)]
                            for a in attention],
            "rollout": maps.class_token_map(maps.attention_rollout(attention), grid, prefix)[0].tolist(),
            "probs": logits[0].softmax(-1)}


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m paper.attention")


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.run(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == cli.BAD_INPUT and err.count("\n") == 1 and err.startswith("error: "), err
    return err


# (where the checkpoint is written, format to write, extra flags, config): every format a ViT is written in, and a
# distilled DeiT in the two formats that hold one
CASES = {"timm": ("m.pth", "timm", ["--num-heads", "2"], tiny()),
         "hf": ("hf", "hf", [], tiny()),
         "torchvision": ("tv.pth", "torchvision", ["--num-heads", "2"], tiny()),
         "npz": ("m.npz", "npz", [], tiny(gelu="tanh")),             # an .npz is read as tanh GELU, as trained
         "deit-timm": ("d.pth", "timm", ["--num-heads", "2"], tiny(distilled=True)),
         "deit-hf": ("dhf", "hf", [], tiny(distilled=True))}


@pytest.mark.parametrize("case", CASES)
def test_numbers_equal_analysis_on_the_written_weights(tmp_path, capsys, case):
    name, fmt, flags, cfg = CASES[case]
    params = helpers.random_params(cfg, dtype=torch.float32, scale=0.3)
    written = write_checkpoint(params, cfg, tmp_path / name, fmt=fmt)
    image = photo(tmp_path / "cat.png")
    main([str(tmp_path / name), image, "--out", str(tmp_path / "out"), *flags])
    assert "wrote" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "attention.json").read_text())
    x = prepare(open_photo(image, 3), cfg, read_preprocessing(tmp_path / name, written))
    want = expected_numbers(params, cfg, x)
    got = report["images"][0]
    # the same float64 computation on the same weights (every format holds float32 exactly): equal to the bit
    assert got["attention_distance"] == want["distance"] == report["attention_distance"]
    assert got["class_token"] == want["class_token"] and got["rollout"] == want["rollout"]
    assert got["prediction"]["class"] == int(want["probs"].argmax())
    assert got["prediction"]["probability"] == float(want["probs"].max())
    assert report["num_prefix_tokens"] == cfg.num_prefix_tokens
    _, shares = principal_components(embedding_filters(params["patch.weight"].double(), 3, 8), 28)
    assert report["filters"]["variance_shares"] == shares.tolist()
    for png in ("cat_class_token.png", "cat_rollout.png", "attention_distance.png", "position_similarity.png",
                "filters_pca.png"):
        assert (tmp_path / "out" / png).read_bytes().startswith(PNG), png


def test_position_similarity_summary_equals_pairs_counted_by_hand(tmp_path, capsys):
    cfg = tiny(image_size=(24, 32))                                   # a 3×4 grid: rows and columns differ
    params = helpers.random_params(cfg, dtype=torch.float32, scale=0.3)
    write_checkpoint(params, cfg, tmp_path / "hf")
    main([str(tmp_path / "hf"), photo(tmp_path / "cat.png"), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "attention.json").read_text())["position_similarity"]
    s = maps.position_similarity(params["pos"].double(), (3, 4))
    pairs = {"neighbours": [], "same_row": [], "same_column": [], "other": [], "all": []}
    for (r, c) in np.ndindex(3, 4):
        for (q, d) in np.ndindex(3, 4):
            if (r, c) == (q, d):
                continue
            v = float(s[r, c, q, d])
            pairs["all"].append(v)
            if abs(r - q) + abs(c - d) == 1:
                pairs["neighbours"].append(v)
            pairs["same_row" if r == q else "same_column" if c == d else "other"].append(v)
    for key, values in pairs.items():
        assert summary[key] == pytest.approx(np.mean(values), rel=0, abs=1e-12), key   # summation order only


def test_preprocessing_flags_replace_the_formats_default(tmp_path, capsys):
    cfg = tiny()
    params = helpers.random_params(cfg, dtype=torch.float32, scale=0.3)
    write_checkpoint(params, cfg, tmp_path / "m.npz")
    image = photo(tmp_path / "cat.png")
    main([str(tmp_path / "m.npz"), image, "--out", str(tmp_path / "out"), "--mean", "0.4", "--std", "0.2", "0.25",
          "0.3", "--crop-pct", "0.875"])
    report = json.loads((tmp_path / "out" / "attention.json").read_text())
    assert report["preprocessing"]["mean"] == [0.4] * 3 and report["preprocessing"]["crop_pct"] == 0.875
    x = prepare(open_photo(image, 3), cfg, read_preprocessing(tmp_path / "m.npz", "npz").__class__(
        (0.4,) * 3, (0.2, 0.25, 0.3), 0.875, "flags"))
    assert report["images"][0]["rollout"] == expected_numbers(params, tiny(gelu="tanh"), x)["rollout"]


def test_our_own_checkpoint_with_its_recorded_preprocessing(tmp_path, capsys):
    """A paper.train checkpoint (one grey channel, as the digits job): resized straight, (x − 0.5) / 0.5."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2, mlp_dim=32,
                        num_classes=3)
    params = helpers.random_params(cfg, dtype=torch.float32, scale=0.3)
    opt = torch.optim.SGD([torch.nn.Parameter(v) for v in params.values()], lr=0.1)
    save_checkpoint(str(tmp_path / "finetune.pt"), cfg=cfg, recipe=DIGITS_PRETRAIN, params=params,
                    optimizer=opt.state_dict(), scheduler={}, step=1, rng=[], log={}, seed=0, dtype="float32")
    image = photo(tmp_path / "seven.png", "L", (20, 12))
    main([str(tmp_path / "finetune.pt"), image, "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "attention.json").read_text())
    assert report["format"] == "paper.train"
    pixels = torch.tensor(np.asarray(Image.open(image)), dtype=torch.float64)[None, None] / 255
    x = (F.interpolate(pixels, size=(8, 8), mode="bilinear", align_corners=False) - 0.5) / 0.5
    want = expected_numbers(params, cfg, x)
    assert report["images"][0]["rollout"] == want["rollout"]
    assert report["images"][0]["attention_distance"] == want["distance"]
    assert refused([str(tmp_path / "finetune.pt"), image, "--out", str(tmp_path / "o2"), "--mean", "0"], capsys) \
        .startswith("error: --mean: expected none for a checkpoint of paper.train")


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(tmp_path, capsys):
    cfg = tiny()
    write_checkpoint(helpers.random_params(cfg, dtype=torch.float32, scale=0.3), cfg, tmp_path / "hf")
    out = tmp_path / "out"
    (tmp_path / "notes.png").write_text("not an image")
    err = refused([str(tmp_path / "hf"), str(tmp_path / "notes.png"), "--out", str(out)], capsys)
    assert "notes.png: expected a readable photo" in err
    err = refused([str(tmp_path / "hf"), photo(tmp_path / "grey.png", "L"), "--out", str(out)], capsys)
    assert "expected a colour photo for a 3-channel model, got a grey one (PIL mode L)" in err
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    err = refused([str(tmp_path / "hf"), photo(first / "cat.png"), photo(second / "cat.png"), "--out", str(out)],
                  capsys)
    assert "expected distinct file names" in err

    gap = tiny(class_token=False, pool="avg")
    write_checkpoint(helpers.random_params(gap, dtype=torch.float32, scale=0.3), gap, tmp_path / "gap.pth")
    err = refused([str(tmp_path / "gap.pth"), photo(tmp_path / "cat.png"), "--out", str(out), "--num-heads", "2"],
                  capsys)
    assert "no class token (pool 'avg')" in err and "--no-class-token" in err

    swin = SwinConfig(image_size=224, dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), num_classes=5)
    write_checkpoint(helpers.random_params(swin, dtype=torch.float32), swin, tmp_path / "swin.pth")
    err = refused([str(tmp_path / "swin.pth"), photo(tmp_path / "cat.png"), "--out", str(out), "--image-size", "224",
                   "224"], capsys)
    assert "expected a ViT or DeiT, got a Swin" in err and "windows" in err
    assert not out.exists()

    # what a model pooled without a class token does have: distance, position similarity, filters
    main([str(tmp_path / "gap.pth"), str(tmp_path / "cat.png"), "--out", str(out), "--num-heads", "2",
          "--no-class-token"])
    assert sorted(p.name for p in out.iterdir()) == ["attention.json", "attention_distance.png", "filters_pca.png",
                                                     "position_similarity.png"]
    report = json.loads((out / "attention.json").read_text())
    assert report["images"][0]["class_token"] is None and report["notes"]
