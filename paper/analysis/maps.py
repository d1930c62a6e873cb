"""What the paper looks at inside a trained ViT (§4.5, App. D.7-D.8), as pure functions of `lowlevel.forward`'s
out["attention"] (per layer (B, H, T, T), T = prefix tokens + N) and of the parameters.

- Fig. 6 / Fig. 14: attention rollout (Abnar & Zuidema 2020): average the heads, add the identity for the
  residual, re-normalise, multiply the layers' matrices.
- Fig. 7 right / Fig. 11: mean attention distance, in pixels, per head and layer.
- Fig. 7 centre / Fig. 10: cosine similarity of the position embeddings.
Where the paper leaves a detail open, the function says which choice it makes. `patch_grid` draws an image's
patch grid, the x_p of eq. (1).
"""
import torch


def patch_grid(image: torch.Tensor, patch_size: int, gap: int = 2, fill: float = 1.0) -> torch.Tensor:
    """An image (H, W, C) cut into its P×P patches, drawn apart with `gap` pixels of `fill` between them:
    (gh·P + (gh-1)·gap, gw·P + (gw-1)·gap, C). Patch (i, j) of the grid starts at row i·(P+gap), column j·(P+gap)."""
    if image.ndim != 3:
        raise ValueError(f"image: expected (H, W, C), got shape {tuple(image.shape)}")
    h, w, c = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image: expected height and width divisible by patch_size={p}, got {(h, w)}")
    gh, gw = h // p, w // p
    out = torch.full((gh * p + (gh - 1) * gap, gw * p + (gw - 1) * gap, c), fill, dtype=image.dtype)
    for i in range(gh):
        for j in range(gw):
            out[i * (p + gap):i * (p + gap) + p, j * (p + gap):j * (p + gap) + p] = image[i * p:(i + 1) * p,
                                                                                           j * p:(j + 1) * p]
    return out


def class_token_map(attention: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Row 0 of a token-to-token matrix, what the class token draws from each patch, on the patch grid.
    attention (B, H, T, T) is averaged over heads first; a rollout (B, T, T) is read as it is. -> (B, gh, gw)."""
    if attention.ndim == 4:
        attention = attention.mean(dim=1)                          # (B, T, T)
    gh, gw = grid_size
    if attention.shape[-1] != num_prefix_tokens + gh * gw:
        raise ValueError(f"attention: expected {num_prefix_tokens} + {gh}·{gw} tokens for grid {tuple(grid_size)}, "
                         f"got {attention.shape[-1]}")
    return attention[:, 0, num_prefix_tokens:].reshape(-1, gh, gw)


def attention_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema (2020) §3, as used for the paper's Fig. 6. attentions: per layer (B, H, T, T) -> (B, T, T).

        W_ℓ = mean over heads of A_ℓ                   rows sum to 1
        Â_ℓ = ½ W_ℓ + ½ I                               the residual connection; rows still sum to 1
        Ã_ℓ = Â_ℓ Ã_{ℓ-1},  Ã_1 = Â_1                   later layers multiply from the left
    Row i of the result is how much token i at the output draws on each input token."""
    if not attentions:
        raise ValueError("attentions: expected at least one layer's (B, H, T, T) probabilities, got an empty list")
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype, device=attentions[0].device)
    rollout = None
    for a in attentions:
        a_hat = 0.5 * a.mean(dim=1) + 0.5 * eye                   # (B, T, T)
        rollout = a_hat if rollout is None else a_hat @ rollout
    return rollout


def patch_distances(grid_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches: (N, N), row-major patch order."""
    gh, gw = grid_size
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    centres = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).double() * patch_size  # (N, 2) in pixels
    return torch.cdist(centres, centres)


def mean_attention_distance(attention: torch.Tensor, grid_size: tuple[int, int], patch_size: int,
                            num_prefix_tokens: int = 1) -> torch.Tensor:
    """Fig. 11: "the distance between the query pixel and all other pixels, weighted by the attention weight",
    averaged over query patches and images. attention (B, H, T, T) -> (H,) in pixels.
    Patch-to-patch entries only: the class token's row and column are dropped, rows are not re-normalised
    (as the common reimplementation, sayakpaul/probing-vits, does; the paper does not say)."""
    gh, gw = grid_size
    if attention.ndim != 4 or attention.shape[-1] != num_prefix_tokens + gh * gw:
        raise ValueError(f"attention: expected (B, H, {num_prefix_tokens + gh * gw}, {num_prefix_tokens + gh * gw}) "
                         f"for grid {tuple(grid_size)}, got {tuple(attention.shape)}")
    a = attention[:, :, num_prefix_tokens:, num_prefix_tokens:]                    # (B, H, N, N)
    dist = patch_distances(grid_size, patch_size).to(a)                              # (N, N)
    return (a * dist).sum(dim=-1).mean(dim=-1).mean(dim=0)                          # (B, H, N) -> (B, H) -> (H,)


def position_similarity(pos: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Fig. 7 centre: cosine similarity between the position embedding of the patch at (r, c) and those of all
    patches. pos (1, T, D) or (T, D) -> (gh, gw, gh, gw); tile [r, c] is the map for patch (r, c)."""
    pos = pos.reshape(-1, pos.shape[-1])
    gh, gw = grid_size
    if pos.shape[0] != num_prefix_tokens + gh * gw:
        raise ValueError(f"pos: expected {num_prefix_tokens} + {gh}·{gw} rows for grid {tuple(grid_size)}, "
                         f"got {pos.shape[0]}")
    e = pos[num_prefix_tokens:]                                     # (N, D), class token left out
    e = e / e.norm(dim=-1, keepdim=True)
    return (e @ e.T).reshape(gh, gw, gh, gw)
