"""Reporting a comparison (`paper.compare.main`'s dict): the markdown tables (paper/results/compare.md) and the PNG."""
from paper.formats.atomic import write_atomically


def pm(r: dict, scale: float = 100.0) -> str:
    """"mean ± std" in percent, or the mean alone for one seed."""
    return f"{scale * r['mean']:.1f} ± {scale * r['std']:.1f}" if r["n"] > 1 else f"{scale * r['mean']:.1f}"


def markdown(result: dict) -> str:
    """Test accuracy (%) per training-set size with what each model is and costs; then the probes."""
    s, models = result["settings"], result["models"]
    sizes = [str(n) for n in s["sizes"]]
    pre = result["pretraining"]
    lines = [f"Test accuracy (%) on the 1,000 held-out MNIST digits, mean ± std over {s['seeds']} seeds (subset, "
             f"initialisation and batches drawn by the seed); every run {s['steps']} steps × {s['batch']} images. "
             f"{result['machine']}, {result['workers']} training processes of {s['threads']} thread(s). "
             f"Command: `{result['command']}`", "",
             "| model | params | multiply-adds / image | train s / run | inference img/s | "
             + " | ".join(f"n = {n}" for n in sizes) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(sizes)]
    for m in models.values():
        cells = [pm(m["accuracy"][n]) if n in m["accuracy"] else "" for n in sizes]
        lines.append(f"| {m['label']} | {m['params']:,} | {m['multiply_adds'] / 1e6:.1f} M "
                     f"| {m['train_seconds']['mean']:.0f} | {m['inference_images_per_s']:,.0f} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    if pre:
        lines += [f"The pre-trained ViT's pre-training: {pre['images']:,} scikit-learn digits, "
                  f"{s['pretrain_steps']} steps × {result['recipes']['pre-training']['batch_size']}, "
                  f"{pre['train_seconds']['mean']:.0f} s; alone, before "
                  f"fine-tuning, it classifies {pm(pre['mnist_accuracy_before_fine_tuning'])}% of the MNIST test "
                  "digits (at 16×16).", ""]
    probed = {k: m for k, m in models.items() if m["probes"]}
    if probed:
        shifts = range(len(next(iter(probed.values()))["probes"]["shift"]))
        largest = max(s["sizes"])
        lines += [f"Probes of the models trained on {largest:,} images: test accuracy (%) with every digit shifted k "
                  "pixels (each its own direction), and with its 4×4 patches shuffled (each its own permutation).", "",
                  "| model | " + " | ".join(f"shift {k}" for k in shifts) + " | patches permuted |",
                  "|---|" + "---:|" * (len(shifts) + 1)]
        for m in probed.values():
            lines.append(f"| {m['label']} | " + " | ".join(pm(r) for r in m["probes"]["shift"])
                         + f" | {pm(m['probes']['permuted'])} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """Left: accuracy against training-set size (log x), one line per model, the paper's Figs. 3-4 in miniature.
    Right: accuracy against the shift of the test digits, for the models trained on the largest set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4))
    for m in result["models"].values():
        sizes = sorted(int(n) for n in m["accuracy"])
        means = [100 * m["accuracy"][str(n)]["mean"] for n in sizes]
        stds = [100 * m["accuracy"][str(n)]["std"] for n in sizes]
        left.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=m["label"],
                      linestyle="-" if len(sizes) > 1 else "none")
        if m["probes"]:
            shifts = m["probes"]["shift"]
            right.errorbar(range(len(shifts)), [100 * r["mean"] for r in shifts],
                           yerr=[100 * r["std"] for r in shifts], marker="o", capsize=3, label=m["label"])
    s = result["settings"]
    left.set(xscale="log", xlabel="training images (log scale)", ylabel="test accuracy (%)",
             title=f"MNIST, {s['steps']} steps × {s['batch']} per run, mean ± std of {s['seeds']} seeds")
    right.set(xlabel="shift of the test digits (pixels)", ylabel="test accuracy (%)",
              title=f"shifted test digits, models trained on {max(s['sizes']):,} images")
    left.set_xticks(s["sizes"], [f"{n:,}" for n in s["sizes"]])
    left.minorticks_off()
    probed = [m for m in result["models"].values() if m["probes"]]
    right.set_xticks(range(len(probed[0]["probes"]["shift"])) if probed else [])
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
