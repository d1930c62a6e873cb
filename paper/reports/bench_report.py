"""Reporting a benchmark result (`paper.bench.measure`'s dict): the markdown table (paper/results/bench.md) and the PNG;
the training loop's (`paper.reports.loop_measure`): paper/results/loop.md and its PNG."""
import math
import statistics

from paper.formats.atomic import write_atomically
from paper.reports.loop_measure import PHASES
from paper.reports.loop_operators import KINDS


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def fmt_percent(r: dict) -> str:
    return f"{100 * r['median']:.0f}% ({100 * r['min']:.0f}–{100 * r['max']:.0f})"


def fmt_gflops(r: dict) -> str:
    return f"median {r['median']:.0f} GFLOP/s (range {r['min']:.0f}–{r['max']:.0f})"


def precision(run: dict) -> str:
    """How a run computed: its weights' dtype, and bfloat16 autocast over them (--bf16)."""
    return run.get("dtype", "float32") + (" weights, bfloat16 autocast" if run.get("bf16") else "")


def markdown(result: dict) -> str:
    """The table: one row per contender, then the sweep."""
    run, main = result["run"], result["main"]
    lines = [f"{run['model']} @{main['image_size'][0]}×{main['image_size'][1]}, batch {run['batch']}, {precision(run)}, "
             f"{run['device_name']}, {run['threads']} threads, torch {run['torch']}, "
             f"{'torch.compile, ' if run['compile'] else ''}{run['repeats']} interleaved rounds; "
             f"matmul peak {fmt_gflops(main['matmul_peak_gflops'])} "
             f"({main['forward_gflop_per_image']:.1f} GFLOP per image forward).",
             f"Command: `{run['command']}`", "",
             "| contender | inference img/s | × timm (median, range) | train step img/s | × timm (median, range) "
             "| peak train memory MiB | activations saved MiB | inference GFLOP/s "
             "| % of matmul peak, paired (median, range) | % of the run's best peak |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in main["contenders"].items():
        vs = c.get("vs_timm")
        lines.append(f"| {name} | {c['infer_images_per_s']:.2f} | {fmt_ratio(vs['infer']) if vs else '–'} "
                     f"| {c['train_images_per_s']:.2f} | {fmt_ratio(vs['train']) if vs else '–'} "
                     f"| {mib(c['train_memory_mib'])} | {mib(c['saved_activations_mib'])} | {c['infer_gflops']:.1f} "
                     f"| {fmt_percent(c['infer_fraction_of_peak'])} | {100 * c['infer_fraction_of_run_peak']:.0f}% |")
    if result.get("sweep"):
        lines += ["", "| model | resolution | tokens | contender | inference s/batch | train step s/batch "
                  "| peak train memory MiB | activations saved MiB |", "|---|---:|---:|---|---:|---:|---:|---:|"]
        for point in result["sweep"]:
            for name, c in point["contenders"].items():
                lines.append(f"| {point['model']} | {point['image_size'][0]} | {point['tokens']} | {name} "
                             f"| {statistics.median(c['infer_s']):.3f} | {statistics.median(c['train_s']):.3f} "
                             f"| {mib(c['train_memory_mib'])} | {mib(c['saved_activations_mib'])} |")
        lines += growth(result["sweep"])
    return "\n".join(lines) + "\n"


def growth(sweep: list[dict]) -> list[str]:
    """From each model's smallest to its largest image: how much inference and a training step grow, and the slope
    of log time against log pixels (1: linear in the tokens, 2: quadratic)."""
    lines = ["", "| model | contender | pixels × | inference × (slope) | train step × (slope) |", "|---|---|---:|---:|---:|"]
    for model in dict.fromkeys(p["model"] for p in sweep):
        points = [p for p in sweep if p["model"] == model]
        first, last = points[0], points[-1]
        pixels = math.prod(last["image_size"]) / math.prod(first["image_size"])
        if len(points) < 2 or pixels == 1:
            continue
        for name in first["contenders"]:
            cells = []
            for key in ("infer_s", "train_s"):
                ratio = statistics.median(last["contenders"][name][key]) / statistics.median(first["contenders"][name][key])
                cells.append(f"{ratio:.1f}× ({math.log(ratio) / math.log(pixels):.2f})")
            lines.append(f"| {model} | {name} | {pixels:.1f} | {cells[0]} | {cells[1]} |")
    return lines if len(lines) > 3 else []


def plot(result: dict, path: str) -> None:
    """Images/s with their range for inference and training; with a sweep, time and memory against the image's
    pixels, one line per model and attention path, on log-log axes where cost linear in the tokens has slope 1 and
    quadratic slope 2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = result.get("sweep")
    fig, axes = plt.subplots(1, 4 if sweep else 1, figsize=(20 if sweep else 6, 4.5), squeeze=False)
    ax = axes[0][0]
    names = list(result["main"]["contenders"])
    batch = result["run"]["batch"]
    for offset, kind in ((-0.2, "infer"), (0.2, "train")):
        per = [result["main"]["contenders"][n][f"{kind}_s"] for n in names]
        mid = [batch / statistics.median(t) for t in per]
        low = [m - batch / max(t) for m, t in zip(mid, per, strict=True)]
        high = [batch / min(t) - m for m, t in zip(mid, per, strict=True)]
        ax.bar([i + offset for i in range(len(names))], mid, 0.4, yerr=[low, high], capsize=3,
               label="inference" if kind == "infer" else "training step")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("images/s (median, range over rounds)")
    ax.set_title(f"{result['run']['model']}, batch {batch}, {precision(result['run'])}, {result['run']['device_name']}")
    ax.legend()
    if sweep:
        models = list(dict.fromkeys(p["model"] for p in sweep))
        for ax, key, label in ((axes[0][1], "infer_s", "inference s/batch"),
                               (axes[0][2], "train_s", "training step s/batch"),
                               (axes[0][3], "saved_activations_mib", "activations saved for backward, MiB")):
            if any(p["contenders"][n][key] is None for p in sweep for n in p["contenders"]):
                continue                                                        # not measured under torch.compile
            for model in models:
                points = [p for p in sweep if p["model"] == model]
                for name in points[0]["contenders"]:
                    pixels = [p["image_size"][0] * p["image_size"][1] for p in points]
                    values = [p["contenders"][name][key] for p in points]
                    values = [statistics.median(v) if isinstance(v, list) else v for v in values]
                    ax.plot(pixels, values, "o-", label=f"{model} {name.removeprefix('ours ')}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("pixels per image (tokens ∝ pixels)")
            ax.set_ylabel(label)
            ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def loop_how(run: dict, side_by_side: str) -> str:
    """A training-loop run's precision: float32, or with --bf16 both (`side_by_side` says how the bf16 ones are
    named), and whether compiled."""
    return (f"float32, and under bfloat16 autocast {side_by_side}" if run.get("bf16") else
            "float32") + (", torch.compile" if run.get("compile") else "")


def stacked_bars(path: str, names: list[str], layers: dict[str, list[float]], ylabel: str, title: str) -> None:
    """A bar per name, its layers stacked in order, written to `path` as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = [0.0] * len(names)
    for label, values in layers.items():
        ax.bar(range(len(names)), values, 0.6, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def loop_markdown(result: dict) -> str:
    """The training loop's table (`paper.reports.loop_measure`): images/s, the ratio to timm, each phase's share."""
    run = result["run"]
    how = loop_how(run, "side by side (the rows named bf16)")
    lines = [f"Training loop ({', '.join(run['models'])}), {how}, {run['device_name']}, {run['threads']} thread(s), "
             f"torch {run['torch']}; {run['rounds']} rounds of {run['steps']} steps, the contenders taking turns of "
             f"{run['turn']} steps, each round ending with one evaluation of the 1,000 test digits and one checkpoint "
             f"written; a first round of each, not "
             f"counted, warms it up (its seconds in the last column).",
             f"Command: `{run['command']}`", "",
             "| contender | image | batch | images/s (median, range) | × timm float32 (median, range) | "
             + " | ".join(f"{p} %" for p in PHASES) + " | warm-up s |",
             "|---|---:|---:|---:|---:|" + "---:|" * (len(PHASES) + 1)]
    for name, c in result["loop"].items():
        vs = c.get("vs_timm")
        shares = " | ".join(f"{100 * c['phase_share'][p]:.1f}" for p in PHASES)
        speed = c["images_per_s"]
        lines.append(f"| {name} | {c['image_size'][0]}×{c['image_size'][1]} | {c['batch']} "
                     f"| {speed['median']:.0f} ({speed['min']:.0f}–{speed['max']:.0f}) "
                     f"| {fmt_ratio(vs) if vs else '–'} | {shares} | {c['warm_up_s']:.1f} |")
    return "\n".join(lines) + "\n"


def loop_plot(result: dict, path: str) -> None:
    """Each contender's seconds per round, stacked by phase."""
    run, loop = result["run"], result["loop"]
    stacked_bars(path, list(loop), {p: [c["phase_s"][p] / run["rounds"] for c in loop.values()] for p in PHASES},
                 f"seconds per round of {run['steps']} steps (mean)",
                 f"training loop, {run['device_name']}, {run['threads']} thread(s)")


def operators_markdown(result: dict) -> str:
    """The training step's time by kind of operator (`paper.reports.loop_operators`), a column per contender."""
    run, ops = result["run"], result["operators"]
    how = loop_how(run, "(the columns named bf16)")
    names = list(ops)
    lines = [f"Training step by kind of operator ({', '.join(run['models'])}), {how}, {run['device_name']}, "
             f"{run['threads']} thread(s), torch {run['torch']}: milliseconds of operators' self time per step, "
             f"and share, over {run['steps']} steps profiled after a turn of warm-up (the profiler's times run above "
             f"the loop's; loop_operators.py states the method).",
             f"Command: `{run['command']}`", "",
             "| kind | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for kind in KINDS:
        lines.append(f"| {kind} | " + " | ".join(f"{ops[n]['ms_per_step'][kind]:.2f} "
                                                 f"({100 * ops[n]['share'][kind]:.1f}%)" for n in names) + " |")
    lines.append("| total | " + " | ".join(f"{ops[n]['ms_per_step_total']:.2f}" for n in names) + " |")
    lines.append("| matrix products' GFLOP per step | " + " | ".join(
        f"{ops[n]['matmul_gflop_per_step']:.2f}" for n in names) + " |")
    lines.append("| matrix products' GFLOP/s | " + " | ".join(
        f"{ops[n]['matmul_gflops']:.0f}" if ops[n]["matmul_gflops"] else "–" for n in names) + " |")
    return "\n".join(lines) + "\n"


def operators_plot(result: dict, path: str) -> None:
    """Each contender's milliseconds per step, stacked by kind of operator."""
    run, ops = result["run"], result["operators"]
    stacked_bars(path, list(ops), {k: [c["ms_per_step"][k] for c in ops.values()] for k in KINDS},
                 "ms of operators' self time per training step",
                 f"training step by kind of operator, {run['device_name']}, {run['threads']} thread(s)")
