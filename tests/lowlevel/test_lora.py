"""LoRA (lowlevel/lora.py, lowlevel/linear.py, paper/formats/peft.py) against peft 0.21 on transformers' ViT and timm's
VisionTransformer holding the same weights: forward (dropout included), gradients, merge and unmerge, initialisation,
and peft's adapter files both ways.

float64 throughout, transformers with its sdpa attention (its eager path computes the softmax in float32). The two
sides compute the same products in other orders, ~1e-16 relative; 1e-10 (atol, rtol 0) leaves room for the sums."""
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from scipy.stats import ks_2samp

import lowlevel as vit
from lowlevel.lora import TARGETS, LoRAConfig, adapt, adapted_layers, adapted_weight, adapter_shapes, init_adapters, merge, unmerge
from paper.convert import main as convert_main
from paper.formats.huggingface import from_hf, to_hf
from paper.formats.peft import adapter_names, read_peft, write_peft
from paper.formats.timm import from_timm, to_timm
from paper.references.vit import hf_vit, timm_vit
from paper.training.lora import LoRAParams
from tests.helpers import random_images, random_params, vit_configs

CFG = vit.ViTConfig(image_size=8, patch_size=4, in_channels=3, dim=16, depth=3, num_heads=2, mlp_dim=24, num_classes=3)
HF_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
# timm's linear layers by exact pattern: a bare "proj" would also put a conv LoRA on patch_embed.proj (FAMILY.md §2.4)
TIMM_ALL = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"


def peft_model(library: str, cfg: vit.ViTConfig, params: dict, seed: int = 3, **lora_kwargs):
    """peft's LoRA on transformers' ViTForImageClassification (ViTModel without classes) or timm's VisionTransformer
    holding `params`, every adapter (and a head trained whole) set to random values, so that B ≠ 0 counts."""
    if library == "transformers":
        model = hf_vit(cfg).double()
        assert model.config._attn_implementation == "sdpa"
        model.load_state_dict(to_hf(params, cfg)[0])
    else:
        model = timm_vit(cfg).double()
        model.load_state_dict(to_timm(params, cfg))
    model = get_peft_model(model, LoraConfig(**lora_kwargs)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def peft_logits(model, images):
    out = model(pixel_values=images) if hasattr(model, "config") else model(images)
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state[:, 0] if hasattr(out, "last_hidden_state") else out


def trained_by_peft(model, cfg: vit.ViTConfig, library: str) -> dict:
    """peft's trainable parameters under our names: the adapters, and "head.*" for a modules_to_save head."""
    names, out = adapter_names(cfg, library), {}
    for key, p in model.named_parameters():
        if p.requires_grad:
            key = key.removeprefix("base_model.model.").removeprefix("vit.")
            if ".modules_to_save.default." in key:
                out["head." + key.rsplit(".", 1)[1]] = p
            else:
                module, ab = key.split(".lora_")
                out[f"{names[module]}.lora_{ab[0]}"] = p
    return out


def ours_for(model, cfg, library, params, lora) -> LoRAParams:
    """Our training module (the frozen base, trainable adapters and head) with peft's adapter values."""
    trained = {k: v.detach().clone() for k, v in trained_by_peft(model, cfg, library).items()}
    head = {k: trained.pop(k) for k in ("head.weight", "head.bias")}
    return LoRAParams({**params, **head}, trained, cfg, lora)


CASES = {   # library, our config, peft's LoraConfig, peft's modules_to_save
    "transformers q,v (the paper's W_q, W_v)":
        ("transformers", LoRAConfig(4, 8, ("q", "v")), dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "transformers q,k,v,o,fc1,fc2, rsLoRA, blocks 0 and 2":
        ("transformers", LoRAConfig(2, 3, ("q", "k", "v", "proj", "fc1", "fc2"), blocks=(0, 2), rslora=True),
         dict(r=2, lora_alpha=3, target_modules=HF_ALL, use_rslora=True, layers_to_transform=[0, 2],
              layers_pattern="layers")),
    "timm qkv as a whole, proj, fc1, fc2":
        ("timm", LoRAConfig(4, 8, ("qkv", "proj", "fc1", "fc2")), dict(r=4, lora_alpha=8, target_modules=TIMM_ALL)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradients_equal_peft_and_only_adapters_and_the_new_head_train(case):
    library, lora, kwargs = CASES[case]
    params, images = random_params(CFG, 0), random_images(CFG, 3, 1)
    labels = torch.tensor([0, 2, 1])
    head = "classifier" if library == "transformers" else "head"
    model = peft_model(library, CFG, params, lora_dropout=0.0, modules_to_save=[head], **kwargs)
    ours = ours_for(model, CFG, library, params, lora).eval()
    expected = {**adapter_shapes(CFG, lora), "head.weight": (3, 16), "head.bias": (3,)}
    assert {k: tuple(p.shape) for k, p in ours.as_dict().items()} == expected            # what we train ...
    assert set(trained_by_peft(model, CFG, library)) == set(expected)                      # ... is what peft trains
    assert {k.removeprefix("params.") for k, _ in ours.named_parameters()} == {k.replace(".", "/") for k in expected}
    assert not any(t.requires_grad for t in ours.base.values())                            # the base: no gradient

    F.cross_entropy(peft_logits(model, images), labels).backward()
    logits = ours(images)
    F.cross_entropy(logits, labels).backward()
    torch.testing.assert_close(logits, peft_logits(model, images), rtol=0, atol=1e-10)
    for k, p in trained_by_peft(model, CFG, library).items():
        torch.testing.assert_close(ours.as_dict()[k].grad, p.grad, rtol=0, atol=1e-10, msg=k)
        assert p.grad.abs().max() > 1e-6, k                                                   # a real gradient


@pytest.mark.parametrize("library", ["transformers", "timm"])
def test_adapter_dropout_draws_the_same_masks_as_peft(library):
    """Dropout on each adapter's input (loralib, peft): in training mode, from the same seed, peft's nn.Dropout and
    ours draw the same masks in the same order (q, k, v, o, fc1, fc2 of each block), so the logits agree."""
    kwargs = dict(target_modules=HF_ALL) if library == "transformers" else dict(target_modules=TIMM_ALL)
    targets = ("q", "k", "v", "proj", "fc1", "fc2") if library == "transformers" else ("qkv", "proj", "fc1", "fc2")
    lora = LoRAConfig(4, 8, targets, dropout=0.3)
    params, images = random_params(CFG, 1), random_images(CFG, 2, 2)
    model = peft_model(library, CFG, params, r=4, lora_alpha=8, lora_dropout=0.3, **kwargs).train()
    adapters = {k: v.detach() for k, v in trained_by_peft(model, CFG, library).items()}
    torch.manual_seed(5)
    expected = peft_logits(model, images)
    torch.manual_seed(5)
    ours = vit.forward(adapt(params, adapters, CFG, lora, train=True), images, CFG, train=True)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)
    evaluated = vit.forward(adapt(params, adapters, CFG, lora), images, CFG)
    assert (evaluated - ours).abs().max() > 1e-3                                              # the masks mattered


def test_vit_model_without_a_classifier_equals_peft():
    """transformers' ViTModel (no classifier, names without "vit."): the class token's final LayerNorm state."""
    cfg = vit.ViTConfig(**{**CFG.__dict__, "num_classes": 0})
    params, images = random_params(cfg, 2), random_images(cfg, 2, 3)
    lora = LoRAConfig(3, 5, ("q", "v"), blocks=(1,))
    model = peft_model("transformers", cfg, params, r=3, lora_alpha=5, target_modules=["q_proj", "v_proj"],
                       layers_to_transform=[1], layers_pattern="layers")
    adapters = {k: v.detach() for k, v in trained_by_peft(model, cfg, "transformers").items()}
    assert set(adapters) == set(adapter_shapes(cfg, lora))
    ours = vit.forward(adapt(params, adapters, cfg, lora), images, cfg)
    torch.testing.assert_close(ours, peft_logits(model, images), rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_equals_peft_merge_and_unmerge_returns_the_base(case):
    library, lora, kwargs = CASES[case]
    params = random_params(CFG, 4)
    model = peft_model(library, CFG, params, **kwargs)
    adapters = {k: v.detach() for k, v in trained_by_peft(model, CFG, library).items()}
    merged = merge(params, adapters, CFG, lora)
    base = model.merge_and_unload()
    read = from_hf if library == "transformers" else from_timm
    _, expected = read(base.state_dict(), num_heads=CFG.num_heads)      # a state dict does not store the head count
    for k in params:   # peft: W + (B @ A)·s, the same products in the same order: equal to the last bit
        assert torch.equal(merged[k], expected[k]), k
    adapted = {adapted_weight(name, CFG)[0] for name in adapted_layers(CFG, lora)}
    assert {k for k in params if not torch.equal(merged[k], params[k])} == adapted
    restored = unmerge(merged, adapters, CFG, lora)
    assert max((restored[k] - params[k]).abs().max().item() for k in params) < 1e-15      # W + Δ − Δ: rounding only
    assert all(restored[k] is params[k] for k in params if k not in adapted)              # the rest: not even copied


@given(cfg=vit_configs(max_depth=2), targets=st.sets(st.sampled_from(TARGETS), min_size=1),
       rank=st.integers(1, 4), rslora=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_adapted_forward_equals_the_merged_model_for_any_targets(cfg, targets, rank, rslora, seed):
    """The low-rank path (x W₀ᵀ + s·x Aᵀ Bᵀ, W₀ + BA never formed) and the merged weights are one function, for every
    config and every set of targets, the nested q/k/v slices of one qkv included."""
    if "qkv" in targets:
        targets -= {"q", "k", "v"}
    if not cfg.num_classes:
        targets.discard("head")
    if not targets:
        targets = {"proj"}
    sides = [cfg.dim] + [cfg.mlp_dim] * bool(targets & {"fc1", "fc2"}) + [cfg.num_classes] * ("head" in targets)
    lora = LoRAConfig(min(rank, *sides), 2.0, tuple(sorted(targets)), rslora=rslora)    # at most min(rows, in)
    params, images = random_params(cfg, seed), random_images(cfg, 2, seed)
    g = torch.Generator().manual_seed(seed)
    adapters = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in adapter_shapes(cfg, lora).items()}
    adapted = vit.forward(adapt(params, adapters, cfg, lora), images, cfg)
    torch.testing.assert_close(adapted, vit.forward(merge(params, adapters, cfg, lora), images, cfg), rtol=0, atol=1e-10)
    if targets - {"q", "k"}:   # (q and k change nothing when a sequence has one token)
        assert (adapted - vit.forward(params, images, cfg)).abs().max() > 1e-8


def test_zero_b_leaves_the_model_unchanged_and_b_is_what_moves_it():
    """§4.1: B = 0 at the start, so ΔW = BA = 0 and the adapted model is the base model, bit for bit."""
    params, images = random_params(CFG, 5), random_images(CFG, 2, 5)
    lora = LoRAConfig(4, 8, ("q", "v", "fc1"))
    for init in ("peft", "paper"):
        adapters = {k: v.double() for k, v in init_adapters(CFG, lora, init, torch.Generator().manual_seed(0)).items()}
        assert all(not v.any() for k, v in adapters.items() if k.endswith("lora_B"))
        assert all(v.abs().min() > 0 for k, v in adapters.items() if k.endswith("lora_A"))
        assert torch.equal(vit.forward(adapt(params, adapters, CFG, lora), images, CFG), vit.forward(params, images, CFG))


@pytest.mark.parametrize("init", ["peft", "paper"])
def test_initialisation_has_the_distribution_peft_draws(init):
    """"peft": Kaiming-uniform a=√5, U(±1/√in); "paper": peft's init_lora_weights="gaussian", N(0, 1/r²). A two-sample
    Kolmogorov-Smirnov test of our A against the A peft draws for a layer of the same shape."""
    cfg = vit.ViTConfig(image_size=8, patch_size=4, dim=256, depth=1, num_heads=4, mlp_dim=32, num_classes=0)
    lora = LoRAConfig(8, 8, ("q",))
    ours = init_adapters(cfg, lora, init, torch.Generator().manual_seed(0))["blocks.0.q.lora_A"]
    layer = torch.nn.Sequential(torch.nn.Linear(256, 256))
    torch.manual_seed(0)
    theirs = get_peft_model(layer, LoraConfig(r=8, lora_alpha=8, target_modules=["0"],
                                              init_lora_weights=True if init == "peft" else "gaussian"))
    theirs = theirs.base_model.model[0].lora_A["default"].weight.detach()
    assert ours.shape == theirs.shape == (8, 256)
    assert ks_2samp(ours.flatten().numpy(), theirs.flatten().numpy()).pvalue > 0.01
    if init == "peft":
        assert ours.abs().max() <= 1 / 16 and ours.abs().max() > 0.99 / 16                  # bound 1/√in, in = 256
    else:
        assert abs(ours.std().item() - 1 / 8) < 0.01


def test_scaling_is_alpha_over_r_or_over_root_r():
    assert LoRAConfig(rank=4, alpha=8).scaling == 2.0 and LoRAConfig(rank=4, alpha=8, rslora=True).scaling == 4.0


@pytest.mark.parametrize("library,lora,head", [
    ("transformers", LoRAConfig(4, 8, ("q", "k", "v", "proj", "fc1", "fc2"), rslora=True, dropout=0.1), True),
    ("transformers", LoRAConfig(2, 2, ("v", "head"), blocks=(1,)), False),
    ("timm", LoRAConfig(4, 6, ("qkv", "proj", "fc1", "fc2"), blocks=(0, 2)), True)])
def test_our_adapter_files_load_in_peft_and_back(tmp_path, library, lora, head):
    """write_peft -> `PeftModel.from_pretrained(base, DIR)` computes our model; read_peft gives back the same tensors."""
    params, images = random_params(CFG, 6), random_images(CFG, 2, 6)
    g = torch.Generator().manual_seed(6)
    adapters = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in adapter_shapes(CFG, lora).items()}
    new_head = {"head.weight": torch.randn(3, 16, generator=g, dtype=torch.float64),
                "head.bias": torch.randn(3, generator=g, dtype=torch.float64)} if head else None
    write_peft(adapters, CFG, lora, tmp_path / "adapter", library, new_head)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    if library == "transformers":
        base = hf_vit(CFG).double()
        base.load_state_dict(to_hf(params, CFG)[0])
    else:
        base = timm_vit(CFG).double()
        base.load_state_dict(to_timm(params, CFG))
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ours = vit.forward(adapt({**params, **(new_head or {})}, adapters, CFG, lora), images, CFG)
    torch.testing.assert_close(ours, peft_logits(loaded, images), rtol=0, atol=1e-10)
    got_lora, got_adapters, got_head = read_peft(tmp_path / "adapter", CFG)
    assert got_lora == lora
    assert all(torch.equal(got_adapters[k], adapters[k]) for k in adapters) and got_adapters.keys() == adapters.keys()
    assert (got_head is None) == (new_head is None)
    assert new_head is None or all(torch.equal(got_head[k], new_head[k]) for k in new_head)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_adapter_files_read_into_our_adapters(tmp_path, case):
    library, lora, kwargs = CASES[case]
    params = random_params(CFG, 7)
    head = "classifier" if library == "transformers" else "head"
    model = peft_model(library, CFG, params, modules_to_save=[head], **kwargs)
    model.save_pretrained(tmp_path / "adapter")
    got_lora, adapters, got_head = read_peft(tmp_path / "adapter", CFG)
    assert got_lora == lora
    for k, p in trained_by_peft(model, CFG, library).items():
        assert torch.equal((got_head if k.startswith("head.") else adapters)[k], p.detach()), k


def test_convert_merges_a_peft_adapter_and_writes_any_format(tmp_path, capsys):
    """`python -m paper.convert BASE OUT --adapter DIR`: a transformers base with 5 classes and peft's adapter (q_proj,
    v_proj) with a new 3-class classifier, written in every format convert writes, computes what peft's model
    computes when read back."""
    from paper.formats.checkpoints import read_checkpoint
    from paper.formats.huggingface import write_hf
    base_cfg = vit.ViTConfig(**{**CFG.__dict__, "num_classes": 5})
    params, images = random_params(base_cfg, 8), random_images(base_cfg, 2, 8)
    write_hf(params, base_cfg, tmp_path / "base")
    model = peft_model("transformers", base_cfg, params, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                       modules_to_save=["classifier"])
    new_head = torch.nn.Linear(16, 3).double()            # the new head: 3 classes where the base has 5
    torch.nn.init.normal_(new_head.weight, generator=torch.Generator().manual_seed(8))
    model.base_model.model.classifier.modules_to_save["default"] = new_head
    model.save_pretrained(tmp_path / "adapter")
    # destination, its flags, and what reading it back needs: the GELU an .npz does not record, the head count a
    # state dict does not store
    outputs = [("tuned.npz", [], {"gelu": "exact"}, "npz"), ("tuned.pth", [], {"num_heads": 2}, "timm"),
               ("tuned-hf", [], {}, "hf"), ("tv.pth", ["--to", "torchvision"], {"num_heads": 2}, "torchvision"),
               ("hub", ["--to", "timm-hub"], {}, "timm-hub")]
    for name, flags, reading, written in outputs:
        convert_main([str(tmp_path / "base"), str(tmp_path / name), *flags, "--adapter", str(tmp_path / "adapter")])
        assert f"(hf) + LoRA {tmp_path / 'adapter'} -> " in capsys.readouterr().out
        cfg, tuned, fmt = read_checkpoint(tmp_path / name, **reading)
        assert fmt == written and cfg.num_classes == 3
        torch.testing.assert_close(vit.forward({k: v.double() for k, v in tuned.items()}, images, cfg),
                                   peft_logits(model, images), rtol=0, atol=1e-10, msg=written)


def test_what_our_lora_or_peft_cannot_express_is_refused(tmp_path):
    params = random_params(CFG, 9)
    adapters = init_adapters(CFG, LoRAConfig(2, 2, ("q", "v")))
    with pytest.raises(ValueError, match="peft on the timm ViT has no module for adapter 'blocks.0.q'"):
        write_peft(adapters, CFG, LoRAConfig(2, 2, ("q", "v")), tmp_path / "x", "timm")
    with pytest.raises(ValueError, match="peft on the transformers ViT has no module for adapter 'blocks.0.qkv'"):
        write_peft(init_adapters(CFG, LoRAConfig(2, 2, ("qkv",))), CFG, LoRAConfig(2, 2, ("qkv",)), tmp_path / "x",
                   "transformers")
    assert not (tmp_path / "x").exists()
    # peft's bare "proj" also adapts timm's patch embedding, a conv: refused with the reason, not dropped
    peft_model("timm", CFG, params, r=2, target_modules=["qkv", "proj"]).save_pretrained(tmp_path / "trap")
    with pytest.raises(ValueError, match="got 'base_model.model.patch_embed.proj.lora_A.weight' .*patch_embed.proj"):
        read_peft(tmp_path / "trap", CFG)
    peft_model("transformers", CFG, params, r=2, target_modules=["q_proj"], use_dora=True).save_pretrained(
        tmp_path / "dora")
    with pytest.raises(ValueError, match="use_dora: .*this project's LoRA cannot express use_dora=True"):
        read_peft(tmp_path / "dora", CFG)
    config = json.loads((tmp_path / "trap" / "adapter_config.json").read_text())
    (tmp_path / "trap" / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"qkv": 4}}))
    with pytest.raises(ValueError, match="rank_pattern: .*cannot express"):
        read_peft(tmp_path / "trap", CFG)


def test_bad_configs_and_adapters_name_the_field():
    with pytest.raises(ValueError, match="rank: expected a positive integer, got 0"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="targets: expected distinct names among"):
        LoRAConfig(targets=("q", "query"))
    with pytest.raises(ValueError, match="targets: 'qkv' adapts q, k and v together"):
        LoRAConfig(targets=("qkv", "v"))
    with pytest.raises(ValueError, match="dropout: expected a rate in"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match="blocks: expected indices below depth=3, got"):
        adapter_shapes(CFG, LoRAConfig(blocks=(3,)))
    adapters = init_adapters(CFG, LoRAConfig(2, 2))
    with pytest.raises(ValueError, match=r"mis-shaped keys, the first: blocks.0.q.lora_A: expected \(4, 16\), got \(2, 16\)"):
        adapt(random_params(CFG, 0), adapters, CFG, LoRAConfig(4, 2))


@pytest.mark.parametrize("fields, message", [
    (dict(alpha="8"), "alpha: expected a finite positive number, got '8'"),
    (dict(alpha=float("inf")), "alpha: expected a finite positive number, got inf"),     # the loss would be NaN
    (dict(targets="qkv"), "targets: expected a tuple of names among .*, got 'qkv'"),      # not ('q', 'k', 'v')
    (dict(targets=3), "targets: expected a tuple of names among .*, got 3"),
    (dict(blocks=1), r"blocks: expected None \(every block\) or a tuple of block indices, got 1"),
    (dict(blocks=("0",)), r"blocks: expected None \(every block\) or a tuple of block indices, got \('0',\)"),
    (dict(rslora="no"), "rslora: expected True or False, got 'no'"),                    # "no" is truthy
    (dict(dropout=None), r"dropout: expected a rate in \[0, 1\), got None"),
])
def test_wrongly_typed_config_values_name_the_field(fields, message):
    """A ValueError naming the field, never a TypeError from a comparison, nor a string taken for a tuple of its
    letters."""
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**fields)


def test_an_absurd_rank_or_a_config_of_another_type_is_refused():
    """ΔW = BA of a (rows × in) matrix has rank at most min(rows, in): a larger r adds parameters and nothing else."""
    with pytest.raises(ValueError, match=r"rank: expected at most 16, the smaller side of blocks.0.q's \(16 × 16\) "
                                         r"update, got 1000"):
        init_adapters(CFG, LoRAConfig(1000))
    with pytest.raises(ValueError, match=r"rank: expected at most 3, the smaller side of head's \(3 × 16\) update"):
        adapter_shapes(CFG, LoRAConfig(4, targets=("head",)))
    assert adapter_shapes(CFG, LoRAConfig(16))["blocks.0.q.lora_A"] == (16, 16)          # min(rows, in) itself is fine
    with pytest.raises(ValueError, match="cfg: expected a ViTConfig, got dict"):
        init_adapters(vars(CFG), LoRAConfig())
    with pytest.raises(ValueError, match="lora: expected a LoRAConfig, got dict"):
        adapt(random_params(CFG, 0), {}, CFG, {"rank": 8})


@pytest.mark.parametrize("field, value, message", [
    ("r", "8", "r: expected an integer, got '8'"),
    ("lora_alpha", None, "lora_alpha: expected a finite number, got None"),
    ("use_rslora", "false", "use_rslora: expected true or false, got 'false'"),     # bool("false") is True
    ("lora_dropout", "0.1", "lora_dropout: expected a finite number, got '0.1'"),
    ("r", 64, "rank: expected at most 16"),
])
def test_an_adapter_config_with_wrongly_typed_values_is_refused_naming_the_file(tmp_path, field, value, message):
    lora = LoRAConfig(2, 2)
    write_peft(init_adapters(CFG, lora), CFG, lora, tmp_path / "adapter", "transformers")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=f"adapter_config.json: {message}"):
        read_peft(tmp_path / "adapter", CFG)


def test_forward_checks_lora_weights_as_it_checks_plain_ones():
    """The forward's input check reads through a LowRank: adapters in another dtype than the images are refused,
    naming the weight and the rows they adapt, before torch would fail deep in a matmul."""
    params, images = random_params(CFG, 0), random_images(CFG, 1, 0)                  # float64
    lora = LoRAConfig(2, 2)
    adapted = adapt(params, init_adapters(CFG, lora), CFG, lora)                       # float32 adapters
    with pytest.raises(ValueError, match=r"got blocks\.0\.qkv\.weight\[32:48\]\.lora_A on cpu as torch\.float32"):
        vit.forward(adapted, images, CFG)


def test_the_fast_path_refuses_lora_weights_with_a_clear_error():
    params, images = random_params(CFG, 0), random_images(CFG, 1, 0)
    lora = LoRAConfig(2, 2)
    adapters = {k: v.double() for k, v in init_adapters(CFG, lora).items()}           # the params' dtype
    adapted = adapt(params, adapters, CFG, lora)
    with pytest.raises(ValueError, match=r"the fast path expected plain weight tensors, got LoRA weights at "
                                         r"\['blocks.0.qkv.weight'"):
        vit.forward(adapted, images, CFG, fast=True)
    vit.forward(merge(params, adapters, CFG, lora), images, CFG, fast=True)            # merged: plain tensors
