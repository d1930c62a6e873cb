"""Models: the papers' configs by name, one record per model family (family.py), heads, resolution change, the
nn.Module wrapper of our functional ViT, the CNN baseline."""
