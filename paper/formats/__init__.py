"""Checkpoint formats, each mapped to our explicit parameters in its own file:
timm state_dicts (`timm_files`), Hugging Face transformers ViT (`huggingface`), the official Google `.npz` (`npz`).
Reading returns (cfg, params); writing takes (params, cfg). `paper.checkpoints` picks the format from the file."""
