"""The figure of paper.gradient_norms: the training images with the largest per-example gradient norms."""
import torch

from paper.formats.atomic import write_atomically


def plot_top(images: torch.Tensor, labels, predictions, norms, path: str, title: str) -> None:
    """The given images in a grid, each titled with its label, the model's prediction and its gradient norm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 8
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, y, p, n in zip(axes.flat, images, labels, predictions, norms, strict=False):
        ax.imshow(image[0].numpy(), cmap="gray_r")
        ax.set_title(f"y={y} ŷ={p}\n|g|={n:.2f}", fontsize=8, color="black" if y == p else "red")
    fig.suptitle(title)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
