"""What the models learned, as the paper's figures read it: attention rollout, mean attention distance, position
similarity, the shift and permutation probes, per-example gradient norms. Imports nothing from paper/."""
