"""Measuring a model's speed and memory, as paper.bench reports them (its docstring states the method): analytic
FLOPs per family, timed calls in interleaved rounds against a matmul peak, peak training memory in a fresh process,
the activations autograd saves."""
import contextlib
import dataclasses
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import torch
from tqdm import tqdm

from lowlevel import BackboneConfig, SwinConfig, ViTConfig
from lowlevel.swin_params import block_windows
from paper.models.dtypes import DTYPES
from paper.models.family import family_of
from paper.models.weights import perturbed
from paper.reports.contenders import build
from paper.reports.statistics import median_range

MIB = 2 ** 20


def block_macs(queries: int, tokens: int, d: int, m: int) -> int:
    """Multiply-accumulates of one encoder block in which `queries` of its `tokens` are computed (all of them, or the
    class token alone in the fast path's last block): keys and values of every token, then q, q kᵀ, A v, out-projection
    and MLP for the queries."""
    return tokens * d * 2 * d + queries * (d * d + 2 * tokens * d + d * d + 2 * d * m)


def resnet_macs(cfg: BackboneConfig, in_channels: int, image_size: tuple[int, int]) -> int:
    """Multiply-accumulates of the hybrid's ResNet (lowlevel/resnet.py) on one image: k²·C_in·C_out per output cell of
    every StdConv, on maps of ⌈n/stride⌉ ("SAME"); the max-pool, GroupNorm and the standardisation multiply nothing
    into the count."""
    h, w = (-(-n // 2) for n in image_size)                                   # the stem's 7×7/2
    macs = h * w * 49 * in_channels * cfg.width
    (h, w), channels = (-(-h // 2), -(-w // 2)), cfg.width                    # the 3×3/2 max-pool
    for s, (units, width) in enumerate(zip(cfg.layers, cfg.stage_widths, strict=True)):
        for u in range(units):
            stride = 2 if s > 0 and u == 0 else 1
            out = -(-h // stride) * -(-w // stride)
            macs += h * w * channels * width + out * 9 * width * width + out * width * 4 * width   # 1×1, 3×3/s, 1×1
            macs += out * channels * 4 * width if u == 0 else 0                                    # the projection
            h, w, channels = -(-h // stride), -(-w // stride), 4 * width
    return macs


def vit_forward_flops(cfg: ViTConfig, class_token_only: bool = False) -> float:
    """FLOPs of one image's forward pass: 2 × the multiply-accumulates of every matmul and convolution (LN, softmax,
    GELU not counted): a hybrid's ResNet, the patch embedding (of SPT's five images), per block qkv, q kᵀ, A v,
    out-projection and MLP, head. Checked against torch.utils.flop_counter's count of the operations each model runs
    (tests/lowlevel/test_fast_path.py, tests/models/test_hybrid_configs.py, tests/commands/test_compare.py).
    class_token_only: the count of the fast path with class-token pooling, whose last block computes one query."""
    n, t, d, m = cfg.num_patches, cfg.num_tokens, cfg.dim, cfg.mlp_dim
    macs = resnet_macs(cfg.backbone, cfg.in_channels, cfg.image_size) if cfg.backbone else 0
    shifted = 5 if cfg.patch_embed == "spt" else 1                            # SPT: the image and 4 shifted copies
    macs += n * shifted * cfg.patch_channels * cfg.patch_size ** 2 * d        # x_p E
    macs += (cfg.depth - class_token_only) * block_macs(t, t, d, m)
    macs += block_macs(1, t, d, m) if class_token_only else 0
    width = cfg.representation_size or d
    macs += d * width if cfg.representation_size else 0
    macs += width * cfg.num_classes
    return 2.0 * macs


def swin_forward_flops(cfg: SwinConfig, fast: bool = False) -> float:
    """FLOPs of one image's Swin forward, 2 × the multiply-accumulates of every matmul: the patch projection; per
    block q/k/v, q kᵀ and A v in every window (N·C each per token, Swin §3.2: linear in the tokens, where global
    attention's grows with them) and the output projection, all over the padded map, and the MLP over the tokens;
    the patch mergings; the head. The fast path projects the attention output after cropping the padding."""
    macs = cfg.num_tokens * cfg.in_channels * cfg.patch_size ** 2 * cfg.dim
    for (s, _), ((mh, mw), _) in block_windows(cfg).items():
        (h, w), c, m = cfg.stage_sizes[s], cfg.stage_dims[s], cfg.mlp_dims[s]
        padded = -(-h // mh) * mh * -(-w // mw) * mw
        macs += padded * (3 * c * c + 2 * mh * mw * c) + (h * w if fast else padded) * c * c + h * w * 2 * c * m
    for k in range(cfg.num_stages - 1):                              # 4C -> 2C at every token of the halved map
        macs += math.prod(cfg.stage_sizes[k + 1]) * 8 * cfg.stage_dims[k] ** 2
    return 2.0 * (macs + cfg.num_features * cfg.num_classes)


# Per family (paper/models/family.py): (cfg, fast) -> FLOPs of one image's forward, on the fast path if `fast`.
FLOPS = {"vit": lambda cfg, fast: vit_forward_flops(cfg, class_token_only=fast and cfg.pool == "token"),
         "swin": lambda cfg, fast: swin_forward_flops(cfg, fast)}


def forward_flops(cfg: ViTConfig | SwinConfig, fast: bool = False) -> float:
    """FLOPs of one image's forward, by its family's count; with `fast`, what the fast path computes."""
    return FLOPS[family_of(cfg).name](cfg, fast)


def executed_flops(name: str, cfg: ViTConfig | SwinConfig) -> float:
    """forward_flops of what contender `name` computes: the fast path skips work when only the class token is read
    (a Swin's, the padded tokens' output projection)."""
    return forward_flops(cfg, fast=name == "ours fast")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn, device: str) -> float:
    """Seconds for one call of fn()."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def matmul_gflops(a: torch.Tensor, b: torch.Tensor, device: str) -> float:
    """GFLOP/s of one (n × n) @ (n × n) product: the machine's practical matmul peak for this dtype and device."""
    n = a.shape[0]
    return 2 * n ** 3 / timed(lambda: a @ b, device) / 1e9


def weights(cfg: ViTConfig | SwinConfig) -> dict:
    """The weights every contender holds: the official initialisation perturbed (`paper.models.weights`), so that the
    logits, which the contenders must agree on, depend on every layer."""
    init_params = family_of(cfg).model.init_params
    return perturbed(init_params(cfg, torch.Generator().manual_seed(0)), seed=0, dtype=torch.float32)


def batch_of(cfg: ViTConfig, batch: int, dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(0, max(cfg.num_classes, 1), (batch,), generator=g).to(device)
    return images, labels


def mixed(device: str, bf16: bool):
    """bfloat16 autocast over the float32 weights (--bf16, as paper.train --bf16 trains), or nothing."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)


def time_rounds(contenders: list, images, labels, repeats: int, device: str, dtype, progress: tqdm,
                bf16: bool = False) -> dict:
    """Interleaved rounds -> {"infer": {name: [s, …]}, "train": {name: [s, …]}, "matmul": {name: [GFLOP/s, …]}},
    "matmul" being the peak measured just before each inference call (in bfloat16 under autocast)."""
    n = 4096 if device == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device).to(torch.bfloat16 if bf16 else dtype) for _ in range(2))
    matmul_gflops(a, b, device)                                                 # warm-up
    times = {kind: {c.name: [] for c in contenders} for kind in ("infer", "train", "matmul")}
    for r in range(repeats):
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for c in order:                                       # the inference calls of a round back to back, ...
            times["matmul"][c.name].append(max(matmul_gflops(a, b, device) for _ in range(3)))   # best of three
            with torch.inference_mode(), mixed(device, bf16):
                times["infer"][c.name].append(timed(lambda c=c: c.infer(images), device))
        for c in order:                                       # ... then its training steps, so paired calls are close
            with mixed(device, bf16):
                times["train"][c.name].append(timed(lambda c=c: c.train_step(images, labels), device))
            progress.update()
    return times


def resident_bytes() -> int:
    """The resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_growth(step, repeats: int = 2) -> int:
    """Bytes by which the resident set grows, at its peak, over `repeats` calls of step() (sampled every ms)."""
    peak, done = [resident_bytes()], threading.Event()
    base = peak[0]

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(repeats):
        step()
    done.set()
    sampler.join()
    return max(peak[0], resident_bytes()) - base


def in_fresh_process(code: str, what: str) -> str:
    """Run `code` in a new Python process with glibc's mmap threshold at 64 KiB (so that freed tensors go back to
    the system and the resident set follows the live tensors); -> the last word it printed."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measuring {what} failed:\n{done.stderr[-3000:]}")
    return done.stdout.split()[-1]


def training_memory_here(name: str, cfg: ViTConfig, batch: int, dtype_name: str, threads: int, compile: bool,
                         bf16: bool = False) -> int:
    """In a fresh process: bytes by which the resident set grows, at its peak, over two training steps."""
    torch.set_num_threads(threads)
    contender = build(name, weights(cfg), cfg, dtype=DTYPES[dtype_name], device="cpu", compile=compile)
    images, labels = batch_of(cfg, batch, DTYPES[dtype_name], "cpu")
    with mixed("cpu", bf16):
        return peak_resident_growth(lambda: contender.train_step(images, labels))


def training_memory(name: str, cfg: ViTConfig, batch: int, dtype, device: str, threads: int, compile: bool,
                    bf16: bool = False, contender=None, images=None, labels=None) -> int:
    """Peak training memory in bytes (see the module docstring for how it is measured)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with mixed(device, bf16):
            contender.train_step(images, labels)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
    config = f"{type(cfg).__name__}(**{dataclasses.asdict(cfg)!r})"                  # ViTConfig or SwinConfig
    call = (f"from paper.reports.measure import *; print(training_memory_here({name!r}, {config}, {batch}, {dtype_name!r}, "
            f"{threads}, {compile}, {bf16}))")
    return int(in_fresh_process(call, f"the training memory of {name!r}"))


def activation_bytes(contender, images: torch.Tensor, bf16: bool = False) -> int:
    """Bytes of the tensors autograd keeps from a training forward for the backward, parameters left out: the
    activation memory of the implementation, exact and independent of the allocator."""
    saved = {}

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), mixed(str(images.device), bf16):
        contender.train_logits(images)
    for p in contender.parameters:
        saved.pop(p.untyped_storage().data_ptr(), None)
    return sum(saved.values())


def measure(cfg: ViTConfig, names: tuple, args, progress: tqdm) -> dict:
    """Build the contenders, check they compute the same logits, time them in rounds, measure their memory."""
    dtype, device = DTYPES[args.dtype], args.device
    images, labels = batch_of(cfg, args.batch, dtype, device)
    params = weights(cfg)
    contenders, diffs = [], {}
    for name in names:
        c = build(name, params, cfg, dtype=dtype, device=device, compile=args.compile)
        with torch.inference_mode(), mixed(device, args.bf16):                 # warm-up (and compilation)
            logits = c.infer(images).float()
        with mixed(device, args.bf16):
            c.train_step(images, labels)
        if not contenders:
            reference = logits
        diffs[name] = {"max_abs_logit": logits.abs().max().item(),
                       "max_abs_logit_diff_vs_first": (logits - reference).abs().max().item()}
        contenders.append(c)
        progress.update()
    times = time_rounds(contenders, images, labels, args.repeats, device, dtype, progress, args.bf16)
    peaks = [p for ps in times["matmul"].values() for p in ps]
    result = {"tokens": cfg.num_tokens, "image_size": list(cfg.image_size), "forward_gflop_per_image":
              forward_flops(cfg) / 1e9, "matmul_peak_gflops": median_range(peaks), "contenders": {}}
    for c in contenders:
        infer, train, peak = times["infer"][c.name], times["train"][c.name], times["matmul"][c.name]
        flops = executed_flops(c.name, cfg) * args.batch
        memory = None if args.no_memory else \
            training_memory(c.name, cfg, args.batch, dtype, device, args.threads, args.compile, args.bf16, c, images,
                            labels) / MIB
        progress.update()
        result["contenders"][c.name] = {
            "infer_s": infer, "train_s": train, "forward_gflop_per_image": executed_flops(c.name, cfg) / 1e9,
            "infer_images_per_s": args.batch / statistics.median(infer),
            "train_images_per_s": args.batch / statistics.median(train),
            "infer_gflops": flops / statistics.median(infer) / 1e9,
            "train_gflops": 3 * flops / statistics.median(train) / 1e9,
            "matmul_peak_gflops": peak,
            "infer_fraction_of_peak": median_range([flops / t / 1e9 / p for t, p in zip(infer, peak, strict=True)]),
            "infer_fraction_of_run_peak": flops / statistics.median(infer) / 1e9 / max(peaks),
            "train_memory_mib": memory,
            "saved_activations_mib": None if args.compile else activation_bytes(c, images, args.bf16) / MIB,
            **diffs[c.name]}
    if "timm" in names:
        for c in contenders:
            result["contenders"][c.name]["vs_timm"] = {
                kind: median_range([t_timm / t for t, t_timm in zip(times[kind][c.name], times[kind]["timm"], strict=True)])
                for kind in ("infer", "train")}
    return result


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
