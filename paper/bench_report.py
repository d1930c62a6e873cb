"""Reporting a benchmark result (`paper.bench.measure`'s dict): the README's markdown table and the PNG."""
import statistics

from .atomic import write_atomically


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def fmt_ratio(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def fmt_percent(r: dict) -> str:
    return f"{100 * r['median']:.0f}% ({100 * r['min']:.0f}–{100 * r['max']:.0f})"


def fmt_gflops(r: dict) -> str:
    return f"median {r['median']:.0f} GFLOP/s (range {r['min']:.0f}–{r['max']:.0f})"


def markdown(result: dict) -> str:
    """The README table: one row per contender, then the sweep."""
    run, main = result["run"], result["main"]
    lines = [f"{run['model']} @{main['image_size'][0]}×{main['image_size'][1]}, batch {run['batch']}, {run['dtype']}, "
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
        lines += ["", "| resolution | tokens | contender | inference s/batch | train step s/batch | peak train memory MiB "
                  "| activations saved MiB |", "|---:|---:|---|---:|---:|---:|---:|"]
        for point in result["sweep"]:
            for name, c in point["contenders"].items():
                lines.append(f"| {point['image_size'][0]} | {point['tokens']} | {name} "
                             f"| {statistics.median(c['infer_s']):.3f} | {statistics.median(c['train_s']):.3f} "
                             f"| {mib(c['train_memory_mib'])} | {mib(c['saved_activations_mib'])} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """Images/s with their range for inference and training; with a sweep, time and memory against tokens."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = result.get("sweep")
    fig, axes = plt.subplots(1, 3 if sweep else 1, figsize=(15 if sweep else 6, 4.5), squeeze=False)
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
    ax.set_title(f"{result['run']['model']}, batch {batch}, {result['run']['dtype']}, {result['run']['device_name']}")
    ax.legend()
    if sweep:
        for ax, key, label in ((axes[0][1], "train_s", "training step s/batch"),
                               (axes[0][2], "saved_activations_mib", "activations saved for backward, MiB")):
            if any(p["contenders"][n][key] is None for p in sweep for n in p["contenders"]):
                continue                                                        # not measured under torch.compile
            for name in sweep[0]["contenders"]:
                tokens = [p["tokens"] for p in sweep]
                values = [p["contenders"][name][key] for p in sweep]
                values = [statistics.median(v) if isinstance(v, list) else v for v in values]
                ax.plot(tokens, values, "o-", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("tokens N+1")
            ax.set_ylabel(label)
            ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
