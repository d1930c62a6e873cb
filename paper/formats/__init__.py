"""Checkpoint formats, each mapped to our explicit parameters in its own file with its name table at the top:
timm state_dicts and hub directories (`timm`), torchvision's VisionTransformer (`torchvision`), Hugging Face
transformers ViT and DeiT (`huggingface`), the official Google `.npz` (`npz`); timm's and transformers' distilled
DeiT in the same files as their ViT. Reading returns (cfg, params); writing takes (params, cfg). `fields` holds what
the weights cannot tell (the head count, from `architectures`, the table of known architectures; a non-square size;
the preprocessing) and the one refusal for what a format cannot hold; `files` reads and writes tensor files.
`paper.formats.checkpoints` picks the format from the file."""
