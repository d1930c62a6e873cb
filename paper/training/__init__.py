"""Training as the paper did it: the loop, the processes, the stages of the ViT job, checkpoints and resume, recipes,
schedules, data and augmentation, distillation, LoRA training, paper.compare's runs."""
