"""Our model as a file that runs without this project: an ONNX graph (onnxruntime and every ONNX runtime) or a
torch.export `ExportedProgram` (`.pt2`, run by `torch.export.load(path).module()`). Either holds one function,
float32 images (batch, C, H, W) -> logits (batch, K): `forward(params, images, cfg, fast=fast)` of the model's family
(paper/models/family.py), the weights inside as constants, the batch dynamic and C, H, W the config's.

    ours                           in the file                            why
    params["blocks.0.qkv.weight"]  ONNX initializer / program constant    buffers of `Forward` under their own dotted
                                     "blocks.0.qkv.weight"                names, so the file reads like a checkpoint
    images (B, C, H, W), float32   input "images", dims (batch, C, H, W)  the batch a torch.export.Dim; the example
                                                                          traced has batch 2 (torch.export fixes a
                                                                          dimension of size 0 or 1 it is shown)
    forward's output               output "logits" (batch, K)             a distilled DeiT's two heads fused, as
                                                                          forward returns them; features (batch, D)
                                                                          when num_classes = 0

Nothing is kept unchecked: the file is written beside its destination (paper/formats/atomic.py), loaded back from
there (onnxruntime's InferenceSession; torch.export.load) and run on new images of batch sizes the trace never saw;
above the tolerance it is removed and the export refused. The reference is the explicit path (`fast=False`), the
paper's definition, so a fast export is checked against it too.
"""
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from paper.formats.atomic import write_atomically
from paper.models.family import family_of, param_count

SUFFIXES = (".onnx", ".pt2")
EXAMPLE_BATCH = 2               # traced; torch.export would specialise a batch of 0 or 1 to a constant
CHECK_BATCHES = (1, 3)          # run on the written file: neither is the traced batch
# float32 logits from two implementations of the same graph differ by rounding: onnxruntime fuses LayerNorm, GELU and
# attention into its own kernels and blocks its GEMMs differently, and the fast path sums in another order than the
# explicit one. Measured on small ViT, DeiT and Swin models: 1e-7 to 2e-6, about 10 float32 ulps of the logits'
# largest value. 1e-4 of that value (at least 1e-4) leaves room for depth and width, while a wrong graph is above it:
# in a ViT-Ti/16 of random weights one dropped bias moves the logits by 1.5e-2 of their scale, tanh GELU for exact
# by 2.3e-4.
RELATIVE_TOLERANCE = 1e-4
ONNX_LIMIT = 2 ** 31            # bytes: protobuf's limit on one .onnx file, weights included


@dataclass(frozen=True)
class Exported:
    """What `export` wrote and how well the file agrees with our forward."""
    format: str                 # "ONNX opset 20" or "torch.export ExportedProgram"
    runner: str                 # what ran the written file: "onnxruntime 1.32.0", "torch.export.load"
    batches: tuple[int, ...]    # the batch sizes run
    max_abs_difference: float   # over every logit of every batch
    tolerance: float            # RELATIVE_TOLERANCE × max(1, largest |logit|)
    seconds: float              # exporting, writing and checking


class Forward(torch.nn.Module):
    """`forward(params, images, cfg, fast=fast)` as the module the exporters trace: the params are buffers named as
    in our checkpoints ("blocks.0.qkv.weight" is buffer `weight` of submodule blocks.0.qkv)."""

    def __init__(self, params: dict, cfg, fast: bool):
        super().__init__()
        for name, tensor in params.items():
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, tensor)
        self.cfg, self.fast = cfg, fast

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return family_of(self.cfg).model.forward(dict(self.named_buffers()), images, self.cfg, fast=self.fast)


def export(params: dict, cfg, path, fast: bool = False) -> Exported:
    """Write `path` (*.onnx or *.pt2) computing our forward of (params, cfg) in float32, `fast` or explicit; refused
    (nothing written) if the file's logits differ from ours by more than the tolerance."""
    suffix = destination_suffix(path)
    if suffix == ".onnx" and param_count(cfg) * 4 >= ONNX_LIMIT:
        raise ValueError(f"OUT: one .onnx file holds at most 2 GiB (protobuf's limit), got {param_count(cfg):,} "
                         f"float32 parameters ({param_count(cfg) * 4 / 2 ** 30:.1f} GiB); export it as a .pt2")
    params = {k: v.detach().to(torch.float32) for k, v in params.items()}
    module = Forward(params, cfg, fast).eval()
    example = images(cfg, EXAMPLE_BATCH, seed=0)
    dynamic = {"images": {0: torch.export.Dim("batch")}}
    done = {}

    def write(tmp: str) -> None:
        start = time.perf_counter()
        if suffix == ".onnx":
            done["format"] = f"ONNX opset {write_onnx(module, example, dynamic, tmp)}"
            done["runner"], run = onnxruntime_runner(tmp)
        else:
            # through file objects: torch.export warns of a path that does not end in .pt2, as the temporary's
            with open(tmp, "wb") as f:
                torch.export.save(torch.export.export(module, (example,), dynamic_shapes=dynamic), f)
            with open(tmp, "rb") as f:
                run = torch.export.load(f).module()
            done["format"], done["runner"] = "torch.export ExportedProgram", "torch.export.load"
        done["agreement"] = agreement(run, params, cfg, path)
        done["seconds"] = time.perf_counter() - start

    write_atomically(path, write)
    return Exported(done["format"], done["runner"], CHECK_BATCHES, *done["agreement"], done["seconds"])


def destination_suffix(path) -> str:
    """".onnx" or ".pt2", read in any case; any other name is refused, naming its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"OUT: expected a file named *.onnx (ONNX) or *.pt2 (torch.export), got {path} "
                         f"(suffix {suffix or 'none'!r})")
    return suffix


def write_onnx(module: Forward, example: torch.Tensor, dynamic: dict, path: str) -> int:
    """torch.onnx.export's dynamo exporter into one file (no external .data beside it); returns the opset."""
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding.level
    folding.setLevel(logging.ERROR)     # its warning that a Split with several outputs is not folded says nothing wrong
    try:
        program = torch.onnx.export(module, (example,), path, dynamo=True, external_data=False, verbose=False,
                                    dynamic_shapes=dynamic, input_names=["images"], output_names=["logits"])
    finally:
        folding.setLevel(level)
    return program.model.opset_imports[""]


def onnxruntime_runner(path: str):
    """(name, images -> logits) running the ONNX file at `path` in onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return (f"onnxruntime {onnxruntime.__version__}",
            lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0]))


def agreement(run, params: dict, cfg, path) -> tuple[float, float]:
    """(max |run(x) − forward(x)|, tolerance) over new images of each CHECK_BATCHES size; a ValueError above it."""
    worst, scale = 0.0, 0.0
    for seed, batch in enumerate(CHECK_BATCHES, start=1):
        x = images(cfg, batch, seed)
        ours = family_of(cfg).model.forward(params, x, cfg)
        theirs = run(x)
        if theirs.shape != ours.shape:
            raise ValueError(f"{path}: expected logits of shape {tuple(ours.shape)} from the exported file, got "
                             f"{tuple(theirs.shape)}")
        worst = max(worst, (theirs - ours).abs().max().item())
        scale = max(scale, ours.abs().max().item())
    tolerance = RELATIVE_TOLERANCE * max(1.0, scale)
    if not worst <= tolerance:          # NaN fails too
        raise ValueError(f"{path}: the exported file's logits differ from our forward's by {worst:.1e} (max abs, "
                         f"batches {CHECK_BATCHES}), above the tolerance {tolerance:.1e}; nothing was kept")
    return worst, tolerance


def images(cfg, batch: int, seed: int) -> torch.Tensor:
    """Standard-normal float32 images (batch, C, H, W) of the config's size, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=g)
