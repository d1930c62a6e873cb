"""The paper-faithful layer over `lowlevel`: model configs, heads, checkpoint formats, recipes, data, figures."""
