"""Reporting a comparison (`paper.compare.main`'s dict): the markdown tables (paper/results/compare.md), the
differences the seeds separate, the share of the ViT-to-ResNet gap each remedy closes, and three PNGs: accuracy
against data (and the shift probe), accuracy against training compute, and the learning curves."""
from paper.formats.atomic import write_atomically
from paper.reports.compare_summary import gap_shares
from paper.reports.statistics import separated
from paper.training.comparison import LABELS

# The rows whose differences the report states: (model, model it is set against).
CONTRASTS = (("cnn", "vit"), ("vit-pretrained", "vit"), ("vit-large", "vit"), ("cnn-cifar", "cnn"),
             ("vit-no-pos", "vit"), ("vit-avg", "vit"), ("vit-hard", "vit"), ("vit-soft", "vit"),
             ("vit-soft", "vit-hard"), ("vit-head", "vit-pretrained"),
             *((m, against) for m in ("vit-lora-qv4", "vit-lora-qv16", "vit-lora-all4")
               for against in ("vit-pretrained", "vit-head")),
             *((m, against) for m in ("vit-hybrid", "vit-spt-lsa", "vit-mpp") for against in ("vit", "cnn")))


def pm(r: dict, scale: float = 100.0, digits: int = 1) -> str:
    """"mean ± std" (in percent by default), or the mean alone for one seed."""
    return f"{scale * r['mean']:.{digits}f} ± {scale * r['std']:.{digits}f}" if r["n"] > 1 \
        else f"{scale * r['mean']:.{digits}f}"


TUNED = "chosen on validation by each model's grid (below)"


def protocol(result: dict) -> str:
    s = result["settings"]
    return (f"Every run trains until its validation accuracy (a fifth of its subset, never the test digits) has not "
            f"improved for {s['patience']} evaluations {s['eval_every']} steps apart, or for at most {s['steps']} "
            f"steps of {s['batch']} (the schedule's length); the weights of its best validation accuracy are tested "
            f"on the 1,000 held-out MNIST digits. Mean ± std over {s['seeds']} seeds (subset, split, "
            f"initialisation and batches drawn by the seed). Hyper-parameters: "
            f"{TUNED if s['tune'] else 'the committed --full choice'}. "
            f"{result['machine']}, {result['workers']} training processes of {s['threads']} thread(s); the runs "
            f"trained for {result['run_seconds'] / 3600:.1f} hours in all (the grids included; a resumed sweep's "
            f"runs, whichever invocation made them), this invocation took {result['seconds'] / 60:.0f} minutes. "
            f"Command: `{result['command']}`")


def differences(result: dict) -> list[str]:
    """Each contrast at each size both rows have: the difference of the means, called only when it clears the rule
    (statistics.separated)."""
    models, lines = result["models"], []
    for a, b in CONTRASTS:
        if a not in models or b not in models:
            continue
        for n in [n for n in models[a]["accuracy"] if n in models[b]["accuracy"]]:
            x, y = models[a]["accuracy"][n], models[b]["accuracy"][n]
            verdict = ("ahead" if x["mean"] > y["mean"] else "behind") if separated(x, y) else "not separated"
            lines.append(f"| {models[a]['label']} | {models[b]['label']} | {int(n):,} | "
                         f"{100 * (x['mean'] - y['mean']):+.1f} | {verdict} |")
    return lines


def markdown(result: dict) -> str:
    """Test accuracy (%) per training-set size with what each model is and costs; how each converged; the
    differences; the chosen hyper-parameters; the pre-training; the probes."""
    s, models = result["settings"], result["models"]
    sizes = [str(n) for n in s["sizes"]]
    lines = [protocol(result), "",
             "| model | params | multiply-adds / image | training multiply-adds / step | train s / run | "
             "inference img/s | " + " | ".join(f"n = {int(n):,}" for n in sizes) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(sizes)]
    for m in models.values():
        cells = [pm(m["accuracy"][n]) if n in m["accuracy"] else "" for n in sizes]
        trained = f" ({m['trained_params']:,} trained)" if m["trained_params"] != m["params"] else ""
        lines.append(f"| {m['label']} | {m['params']:,}{trained} | {m['multiply_adds'] / 1e6:.1f} M "
                     f"| {m['training_multiply_adds'] / 1e9:.2f} G | {m['train_seconds']['mean']:.0f} "
                     f"| {m['inference_images_per_s']:,.0f} | " + " | ".join(cells) + " |")
    lines += ["", "How each converged, per size: epochs run (of the training part, before the stop), training loss "
              "over the last evaluation period, and training accuracy (%) of the tested weights on their training "
              "images, unaugmented; means over the seeds.", "",
              "| model | " + " | ".join(f"n = {int(n):,}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m in models.values():
        cells = [f"{m['epochs'][n]['mean']:.0f} ep, loss {m['final_train_loss'][n]['mean']:.3f}, "
                 f"train {100 * m['train_accuracy'][n]['mean']:.1f}" if n in m["epochs"] else "" for n in sizes]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    rows = differences(result)
    if rows:
        lines += ["", "Differences in test accuracy (points). A difference is called only when the two means differ "
                  "by more than the sum of their standard deviations (and there are at least 2 seeds); otherwise "
                  "'not separated'.", "", "| model | against | n | difference | verdict |", "|---|---|---:|---:|---|",
                  *rows]
    shares = gap_shares(models)
    if shares:
        lines += ["", "The share of the ViT-to-ResNet gap each remedy closes, (acc_model − acc_vit) / (acc_cnn − "
                  "acc_vit) of the means over seeds: 1 closes it, 0 is the ViT's accuracy, below 0 falls behind the "
                  "ViT, above 1 overtakes the ResNet; '—' where the ResNet is not ahead. A share is no verdict: where the "
                  "gap is small the seeds' spread swamps it (the differences above say which rows the seeds "
                  "separate).", "",
                  "| model | " + " | ".join(f"n = {int(n):,}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for name, by_size in shares.items():
            cells = ["" if n not in by_size else "—" if by_size[n] is None else f"{by_size[n]:+.2f}" for n in sizes]
            lines.append(f"| {models[name]['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Hyper-parameters (learning rate, weight decay, warm-up's share of the cap)"
              + (f", chosen by the best validation accuracy at n = {result['tuning'][0]['size']:,}, seed 0, of the "
                 "grid below" if result["tuning"] else "") + ":", "",
              "| model | learning rate | weight decay | warm-up |", "|---|---:|---:|---:|"]
    lines += [f"| {m} | {hp['lr']:g} | {hp['weight_decay']:g} | {hp['warmup']:g} |"
              for m, hp in result["chosen"].items()]
    if result["tuning"]:
        lines += ["", "| model | learning rate | weight decay | warm-up | validation % | test % | epochs |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['model']} | {r['hp']['lr']:g} | {r['hp']['weight_decay']:g} | {r['hp']['warmup']:g} | "
                  f"{100 * r['val_accuracy']:.1f} | {100 * r['test_accuracy']:.1f} | {r['epochs']:.0f} |"
                  for r in result["tuning"]]
    pre = result["pretraining"]
    if pre:
        lines += ["", f"The pre-trained ViT's pre-training: {pre['images']:,} scikit-learn digits at 16×16 (a fifth "
                  f"for validation), batches of {result['recipes']['pre-training']['batch_size']}, stopped by the "
                  f"same rule after {pm(pre['epochs'], 1, 0)} epochs, {pre['train_seconds']['mean']:.0f} s; "
                  f"{pm(pre['val_accuracy'])}% on its validation digits; alone, before fine-tuning, it classifies "
                  f"{pm(pre['mnist_accuracy_before_fine_tuning'])}% of the MNIST test digits (at 16×16)."]
    mpp = result.get("mpp_pretraining")
    if mpp:
        lines += ["", f"The masked patch prediction of vit-mpp: the {mpp['images']:,} training images without their "
                  f"labels at 16×16, batches of {result['recipes']['mpp pre-training']['batch_size']}, "
                  f"{mpp['steps']:,} steps ({mpp['epochs']:.0f} epochs, not stopped early), "
                  f"{mpp['train_seconds']['mean']:.0f} s; its training loss over the last evaluation period "
                  f"{pm(mpp['final_train_loss'], 1, 3)}, its loss on the test digits {pm(mpp['test_loss'], 1, 3)}."]
    probed = {k: m for k, m in models.items() if m["probes"]}
    if probed:
        shifts = range(len(next(iter(probed.values()))["probes"]["shift"]))
        lines += ["", f"Probes of the models trained on {max(s['sizes']):,} images: test accuracy (%) with every "
                  "digit shifted k pixels (each its own direction), and with its 4×4 patches shuffled (each its own "
                  "permutation).", "",
                  "| model | " + " | ".join(f"shift {k}" for k in shifts) + " | patches permuted |",
                  "|---|" + "---:|" * (len(shifts) + 1)]
        for m in probed.values():
            lines.append(f"| {m['label']} | " + " | ".join(pm(r) for r in m["probes"]["shift"])
                         + f" | {pm(m['probes']['permuted'])} |")
    return "\n".join(lines) + "\n"


def figure(columns: int, rows: int = 1, width: float = 6.5, height: float = 5.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    return plt, fig, axes


# The colours after matplotlib's ten, darker and apart from them, for the models after the tenth (their lines dashed).
MORE_COLOURS = ("#393b79", "#8c6d31", "#637939", "#e7ba52", "#000000", "#7b4173")


def style(model: str) -> dict:
    """One colour and line style per model, the same in every figure: matplotlib's ten colours with solid lines, then
    six more with dashed ones."""
    i = list(LABELS).index(model)
    return {"color": f"C{i}" if i < 10 else MORE_COLOURS[i - 10], "linestyle": "--" if i >= 10 else "-"}


def save(plt, fig, axes, path: str) -> None:
    """One legend below the panels (the first panel's lines), the PNG written whole."""
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    legend_rows = -(-len(labels) // 3)
    fig.tight_layout(rect=(0, (0.2 + 0.22 * legend_rows) / fig.get_figheight(), 1, 1))
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot(result: dict, path: str) -> None:
    """Left: accuracy at convergence against training-set size (log x), one line per model, the paper's Figs. 3-4
    in miniature. Then, where the sweep has remedies and a gap to close, the share of the ViT-to-ResNet gap each
    closes per size (grouped bars). Right: accuracy against the shift of the test digits, for the models trained on
    the largest set."""
    shares = gap_shares(result["models"])
    plt, fig, axes = figure(3 if shares else 2)
    left, right = axes[0][0], axes[0][-1]
    for name, m in result["models"].items():
        sizes = sorted(int(n) for n in m["accuracy"])
        means = [100 * m["accuracy"][str(n)]["mean"] for n in sizes]
        stds = [100 * m["accuracy"][str(n)]["std"] for n in sizes]
        left.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=m["label"],
                      **style(name) | ({} if len(sizes) > 1 else {"linestyle": "none"}))
        if m["probes"]:
            shifts = m["probes"]["shift"]
            right.errorbar(range(len(shifts)), [100 * r["mean"] for r in shifts],
                           yerr=[100 * r["std"] for r in shifts], marker="o", capsize=3, label=m["label"],
                           **style(name))
    s = result["settings"]
    left.set(xscale="log", xlabel="training images, validation included (log scale)", ylabel="test accuracy (%)",
             title=f"MNIST, each run to convergence, mean ± std of {s['seeds']} seeds")
    right.set(xlabel="shift of the test digits (pixels)", ylabel="test accuracy (%)",
              title=f"shifted test digits, models trained on {max(s['sizes']):,} images")
    left.set_xticks(s["sizes"], [f"{n:,}" for n in s["sizes"]])
    left.minorticks_off()
    probed = [m for m in result["models"].values() if m["probes"]]
    right.set_xticks(range(len(probed[0]["probes"]["shift"])) if probed else [])
    if shares:
        gap_bars(axes[0][1], shares, [str(n) for n in s["sizes"]])
    save(plt, fig, axes, path)


def gap_bars(ax, shares: dict, sizes: list[str]) -> None:
    """The share of the ViT-to-ResNet gap each remedy closes, one group of bars per size (none where the ResNet is
    not ahead), in its model's colour (hatched where its line is dashed); 0 is the ViT from scratch, 1 the ResNet."""
    width = 0.8 / len(shares)
    for i, (name, by_size) in enumerate(shares.items()):
        gaps = [(j, by_size[n]) for j, n in enumerate(sizes) if by_size.get(n) is not None]
        ax.bar([j + (i - (len(shares) - 1) / 2) * width for j, _ in gaps], [share for _, share in gaps], width,
               color=style(name)["color"], hatch="//" if style(name)["linestyle"] == "--" else None, edgecolor="white")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(sizes)), [f"n = {int(n):,}" for n in sizes])
    ax.set(ylabel="share of the ViT-to-ResNet gap closed",
           title="what closes the gap: 0 the ViT from scratch, 1 the ResNet")


def runs_of(result: dict, model: str, size: int) -> list[dict]:
    return [r for r in result["runs"] if r["model"] == model and r["size"] == size]


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The mean over seeds of `key` at each evaluation step all the runs reached."""
    steps = min(len(r["curve"]) for r in runs)
    return ([runs[0]["curve"][i]["step"] for i in range(steps)],
            [sum(r["curve"][i][key] for r in runs) / len(runs) for i in range(steps)])


def compute_plot(result: dict, path: str) -> None:
    """Test accuracy against the training multiply-adds spent, from the evaluations logged during training (mean over
    the seeds while all run), at the smallest and the largest n: learning speed per unit of compute."""
    s = result["settings"]
    plt, fig, axes = figure(2)
    for ax, n in zip(axes[0], (min(s["sizes"]), max(s["sizes"])), strict=True):
        for name, m in result["models"].items():
            runs = runs_of(result, name, n)
            if runs:
                steps, accuracy = mean_curve(runs, "test_accuracy")
                ax.plot([step * m["training_multiply_adds"] for step in steps], [100 * a for a in accuracy],
                        label=m["label"], **style(name))
        ax.set(xscale="log", xlabel="training multiply-adds (log scale)", ylabel="test accuracy (%)",
               title=f"n = {n:,}: accuracy per unit of training compute")
    save(plt, fig, axes, path)


def curves_plot(result: dict, path: str) -> None:
    """The learning curves at the smallest and the largest n: training loss (mean over each evaluation period) and
    validation accuracy against epochs, mean over the seeds while all run."""
    s = result["settings"]
    plt, fig, axes = figure(2, 2, height=4.2)
    for row, n in zip(axes, (min(s["sizes"]), max(s["sizes"])), strict=True):
        for name, m in result["models"].items():
            runs = runs_of(result, name, n)
            if runs:
                per_step = runs[0]["epochs"] / runs[0]["steps"]
                for ax, key in zip(row, ("train_loss", "val_accuracy"), strict=True):
                    steps, values = mean_curve(runs, key)
                    scale = 100 if key == "val_accuracy" else 1
                    ax.plot([step * per_step for step in steps], [scale * v for v in values], label=m["label"],
                            **style(name))
        row[0].set(yscale="log", xlabel="epochs", ylabel="training loss", title=f"n = {n:,}: training loss")
        row[1].set(xlabel="epochs", ylabel="validation accuracy (%)", title=f"n = {n:,}: validation accuracy")
    save(plt, fig, axes, path)
