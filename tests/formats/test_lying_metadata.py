"""Metadata that the tensors contradict is refused, never believed nor ignored: each lie is planted in the metadata
of a file our own writer wrote, and reading it is a ValueError naming the file and the field (paper.convert: one
line `error: …`, exit 2). What the tensors cannot tell (a non-square image size of the same patch count, a Swin's
image size) is believed."""
import json
import shutil

import pytest
import torch

import lowlevel as vit
from lowlevel import SwinConfig
from lowlevel.lora import LoRAConfig, adapter_shapes
from paper import cli
from paper.convert import main as convert
from paper.formats.checkpoints import read_checkpoint, read_preprocessing, write_checkpoint
from paper.formats.fields import Preprocessing
from paper.formats.peft import read_peft, write_peft
from paper.training.recipes import DIGITS_PRETRAIN
from paper.training.state import load_checkpoint, save_checkpoint
from tests import helpers

CFG = vit.ViTConfig(image_size=32, patch_size=8, dim=16, depth=2, num_heads=2, mlp_dim=32, num_classes=5)
DEIT = vit.ViTConfig(image_size=32, patch_size=8, dim=16, depth=2, num_heads=2, mlp_dim=32, num_classes=5,
                     distilled=True)
SWIN = SwinConfig(image_size=32, patch_size=4, dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4, num_classes=5,
                  layer_norm_eps=1e-5)
PREP = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9, "test")


def written(tmp_path, cfg, name, fmt=None, preprocessing=None):
    write_checkpoint(helpers.random_params(cfg, dtype=torch.float32), cfg, tmp_path / name, fmt=fmt,
                     preprocessing=preprocessing)
    return tmp_path / name


def planted(directory, edit, file="config.json"):
    """A copy of `directory` whose `file` is edited by `edit`."""
    lie = directory.parent / f"{directory.name}_lie"
    shutil.copytree(directory, lie)
    config = json.loads((lie / file).read_text())
    edit(config)
    (lie / file).write_text(json.dumps(config))
    return lie


def refused(path, field, **kw):
    with pytest.raises(ValueError) as e:
        read_checkpoint(path, **kw)
    assert str(path) in str(e.value) and field in str(e.value), str(e.value)
    return str(e.value)


def labels(n):
    return {"id2label": {str(i): f"c{i}" for i in range(n)}, "label2id": {f"c{i}": i for i in range(n)}}


# ---------------------------------------------------------------- transformers ViT / DeiT config.json

HF_LIES = {"hidden_size": {"hidden_size": 32}, "num_hidden_layers": {"num_hidden_layers": 3},
           "intermediate_size": {"intermediate_size": 64}, "patch_size": {"patch_size": 4},
           "image_size": {"image_size": 64}, "num_channels": {"num_channels": 1}, "qkv_bias": {"qkv_bias": False},
           "num_attention_heads": {"num_attention_heads": 3}, "num_labels": {"num_labels": 7},
           "id2label": labels(7), "label2id": {"label2id": labels(3)["label2id"]},
           "architectures": {"architectures": ["ViTModel"]}, "model_type": {"model_type": "deit"}}


@pytest.mark.parametrize("field", HF_LIES)
def test_transformers_config_json_that_the_weights_contradict_is_refused(tmp_path, field):
    source = written(tmp_path, CFG, "hf")
    refused(planted(source, lambda c: c.update(HF_LIES[field])), field)


@pytest.mark.parametrize("field, lie", [("architectures", ["ViTForImageClassification"]), ("model_type", "vit")])
def test_a_distilled_deit_said_to_be_a_vit_is_refused(tmp_path, field, lie):
    source = written(tmp_path, DEIT, "deit")
    refused(planted(source, lambda c: c.update({field: lie})), field)


def test_what_the_weights_cannot_tell_is_believed(tmp_path):
    source = written(tmp_path, CFG, "hf")                  # [16, 64] has the 16 patches of 32×32
    cfg, _, _ = read_checkpoint(planted(source, lambda c: c.update(image_size=[16, 64], layer_norm_eps=1e-12)))
    assert cfg.image_size == (16, 64) and cfg.layer_norm_eps == 1e-12


@pytest.mark.parametrize("key, lie", [("image_mean", [0.5]), ("image_std", [0, 0.5, 0.5])])
def test_preprocessor_config_of_another_channel_count_or_a_zero_std_is_refused(tmp_path, key, lie):
    source = written(tmp_path, CFG, "hf", preprocessing=PREP)
    lie = planted(source, lambda c: c.update({key: lie}), "preprocessor_config.json")
    with pytest.raises(ValueError, match=f"{lie}/preprocessor_config.json: {key}"):
        read_preprocessing(lie, "hf", CFG.in_channels)


# ---------------------------------------------------------------- timm hub config.json

def args(**kw):
    return lambda c: c["model_args"].update(kw)


HUB_LIES = {"architecture": lambda c: c.pop("model_args"),         # vit_base_patch16_224 over a tiny model
            "num_classes": lambda c: c.update(num_classes=7), "num_features": lambda c: c.update(num_features=32),
            "global_pool": lambda c: c.update(global_pool="avg"),
            "pretrained_cfg num_classes": lambda c: c["pretrained_cfg"].update(num_classes=7),
            "pretrained_cfg input_size": lambda c: c["pretrained_cfg"].update(input_size=[3, 64, 64]),
            "model_args embed_dim": args(embed_dim=32), "model_args depth": args(depth=3),
            "model_args num_heads": args(num_heads=3), "model_args patch_size": args(patch_size=4),
            "model_args img_size": args(img_size=64), "model_args in_chans": args(in_chans=1),
            "model_args num_classes": args(num_classes=7), "model_args class_token": args(class_token=False),
            "model_args global_pool": args(global_pool="avg"), "model_args qkv_bias": args(qkv_bias=False),
            "model_args mlp_ratio": args(mlp_ratio=4.0), "model_args pos_embed": args(pos_embed="none"),
            "no_embed_class": args(no_embed_class=True), "reg_tokens": args(reg_tokens=4)}


@pytest.mark.parametrize("field", HUB_LIES)
def test_timm_hub_config_json_that_the_weights_contradict_is_refused(tmp_path, field):
    source = written(tmp_path, CFG, "hub", fmt="timm-hub", preprocessing=PREP)
    lie = planted(source, HUB_LIES[field])
    assert f"{lie}/config.json" in refused(lie, field.split()[-1])


@pytest.mark.parametrize("key, lie", [("mean", [0.5]), ("std", [0, 0.5, 0.5]), ("crop_pct", -1)])
def test_hub_preprocessing_of_another_channel_count_or_not_positive_is_refused(tmp_path, key, lie):
    source = written(tmp_path, CFG, "hub", fmt="timm-hub", preprocessing=PREP)
    lie = planted(source, lambda c: c["pretrained_cfg"].update({key: lie}))
    with pytest.raises(ValueError, match=f"{lie}/config.json pretrained_cfg: {key}"):
        read_preprocessing(lie, "timm-hub", CFG.in_channels)


# ---------------------------------------------------------------- transformers Swin config.json

SWIN_LIES = {"embed_dim": {"embed_dim": 16}, "depths": {"depths": [1, 2]}, "num_heads": {"num_heads": [2, 2]},
             "window_size": {"window_size": 2}, "patch_size": {"patch_size": 2}, "num_channels": {"num_channels": 1},
             "mlp_ratio": {"mlp_ratio": 2.0}, "qkv_bias": {"qkv_bias": False}, "id2label": labels(7),
             "architectures": {"architectures": ["SwinModel"]}, "num_heads[0]": {"num_heads": [3, 2]}}


@pytest.mark.parametrize("field", SWIN_LIES)
def test_swin_config_json_that_the_weights_contradict_is_refused(tmp_path, field):
    source = written(tmp_path, SWIN, "swin", fmt="hf")
    refused(planted(source, lambda c: c.update(SWIN_LIES[field])), field)


def test_a_swins_image_size_is_believed(tmp_path):
    source = written(tmp_path, SWIN, "swin", fmt="hf")
    assert read_checkpoint(planted(source, lambda c: c.update(image_size=64)))[0].image_size == (64, 64)


# ---------------------------------------------------------------- peft adapter_config.json

def adapter_dir(tmp_path, library):
    lora = LoRAConfig(rank=2, alpha=4.0, targets=("qkv" if library == "timm" else "q", "fc1"), blocks=(1,))
    g = torch.Generator().manual_seed(0)
    adapters = {k: torch.randn(*s, generator=g) for k, s in adapter_shapes(CFG, lora).items()}
    head = {"head.weight": torch.randn(5, 16, generator=g), "head.bias": torch.randn(5, generator=g)}
    write_peft(adapters, CFG, lora, tmp_path / library, library, head=head)
    return tmp_path / library


def suffixes(library):
    return ["q_proj", "fc1"] if library == "transformers" else ["qkv", "fc1"]


PEFT_LIES = {"r": lambda c, lib: c.update(r=4),
             "target_modules": lambda c, lib: c.update(target_modules=c["target_modules"][:1]),
             "target_modules regex": lambda c, lib: c.update(target_modules=r".*\.fc1"),
             "target_modules suffixes": lambda c, lib: c.update(target_modules=suffixes(lib)),
             "layers_to_transform": lambda c, lib: c.update(target_modules=suffixes(lib), layers_to_transform=[0]),
             "exclude_modules": lambda c, lib: c.update(exclude_modules=["fc1"]),
             "modules_to_save": lambda c, lib: c.update(modules_to_save=None),
             "modules_to_save other": lambda c, lib: c.update(modules_to_save=["pooler"]),
             "fan_in_fan_out": lambda c, lib: c.update(fan_in_fan_out=True),
             "bias": lambda c, lib: c.update(bias="all"), "target_parameters": lambda c, lib: c.update(
                 target_parameters=["x"])}


@pytest.mark.parametrize("library", ["transformers", "timm"])
@pytest.mark.parametrize("field", PEFT_LIES)
def test_adapter_config_json_that_the_tensors_contradict_is_refused(tmp_path, library, field):
    lie = planted(adapter_dir(tmp_path, library), lambda c: PEFT_LIES[field](c, library), "adapter_config.json")
    with pytest.raises(ValueError) as e:
        read_peft(lie, CFG)
    assert f"{lie}/adapter_config.json" in str(e.value) and field.split()[0] in str(e.value), str(e.value)


@pytest.mark.parametrize("library", ["transformers", "timm"])
def test_adapter_config_json_matching_by_peft_rules_is_read(tmp_path, library):
    """Suffixes limited to the adapted block by layers_to_transform, and a regex, match exactly the adapted modules
    (timm's "blocks.1.…" has no segment before the layer number, which peft's default layers_pattern needs)."""
    source = adapter_dir(tmp_path, library)
    pattern = {"layers_pattern": "blocks"} if library == "timm" else {}
    for edit in (lambda c: c.update(target_modules=suffixes(library), layers_to_transform=[1], **pattern),
                 lambda c: c.update(target_modules=r".*\.1\.(attention\.q_proj|attn\.qkv|mlp\.fc1)")):
        lie = planted(source, edit, "adapter_config.json")
        assert read_peft(lie, CFG)[0].blocks == (1,)
        shutil.rmtree(lie)


# ---------------------------------------------------------------- this project's training checkpoints

def training_checkpoint(path, cfg, params, **extra):
    save_checkpoint(str(path), cfg=cfg, recipe=DIGITS_PRETRAIN, params=params, optimizer={"state": {}, "param_groups": []},
                    scheduler={}, step=0, rng=[], log={}, seed=0, dtype="float32", **extra)


@pytest.mark.parametrize("lie", ["num_classes", "depth", "rank"])
def test_training_checkpoint_whose_recorded_config_its_params_contradict_is_refused(tmp_path, lie):
    params = helpers.random_params(CFG, dtype=torch.float32)
    path = tmp_path / "c.pt"
    if lie == "rank":
        lora = LoRAConfig(rank=2, alpha=2.0)
        adapters = {k: torch.zeros(s) for k, s in adapter_shapes(CFG, LoRAConfig(rank=4, alpha=2.0)).items()}
        training_checkpoint(path, CFG, {**adapters, "head.weight": params["head.weight"], "head.bias":
                                        params["head.bias"]}, lora=vars(lora), base={"path": "b", "sha256": "0"})
    else:
        from dataclasses import replace
        training_checkpoint(path, replace(CFG, **{lie: {"num_classes": 7, "depth": 3}[lie]}), params)
    with pytest.raises(ValueError, match=f"{path}: params .against its recorded config"):
        load_checkpoint(str(path))


# ---------------------------------------------------------------- through the command

def test_convert_refuses_a_lying_config_in_one_line(tmp_path, capsys):
    lie = planted(written(tmp_path, CFG, "hf"), lambda c: c.update(labels(7)))
    with pytest.raises(SystemExit) as e:
        cli.run(convert, [str(lie), str(tmp_path / "out.pth")])
    line = capsys.readouterr().err.strip().splitlines()[-1]                 # (above it, the progress bar)
    assert e.value.code == 2 and line == f"error: {lie}/config.json: id2label says 7 labels, the weights hold 5 classes"
    assert not (tmp_path / "out.pth").exists()
