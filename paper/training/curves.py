"""The learning curves of a run, one PNG: training loss, learning rate and test accuracy of both stages against the
step."""


from paper.formats.atomic import write_atomically


def plot_curves(log: dict, path: str) -> None:
    """Training loss, learning rate and test accuracy of both stages against the step, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset = 0
    for name, stage in log["stages"].items():
        steps = [offset + r["step"] for r in stage["train"]]
        axes[0].plot(steps, [r["loss"] for r in stage["train"]], label=name, linewidth=0.8)
        axes[1].plot(steps, [r["lr"] for r in stage["train"]], label=name)
        if "test_accuracy" in stage["eval"][0]:                   # the mpp stage records its held-out loss instead
            axes[2].plot([offset + r["step"] for r in stage["eval"]],
                         [100 * r["test_accuracy"] for r in stage["eval"]], "o-", label=name)
        offset += stage["recipe"]["total_steps"]
    for ax, title in zip(axes, ("training loss", "learning rate", "test accuracy (%)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step (pre-training, then fine-tuning)")
        if ax.has_data():                                          # the mpp stage alone plots no accuracy
            ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
