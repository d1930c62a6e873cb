"""Checkpoint formats, each mapped to our explicit parameters in its own file with its name table at the top:
timm state_dicts (`timm`), Hugging Face transformers ViT and DeiT (`huggingface`), the official Google `.npz`
(`npz`); timm's and transformers' distilled DeiT in the same files as their ViT.
Reading returns (cfg, params); writing takes (params, cfg). `fields` holds what the weights cannot tell and the one
refusal for what a format cannot hold; `files` reads and writes tensor files. `paper.checkpoints` picks the format
from the file."""
