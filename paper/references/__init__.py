"""The independent implementations we compare against (timm, transformers, torchvision), built to compute the same
model as a config, and the equivalence checks: on random weights, and on a checkpoint's own weights on a photo."""
