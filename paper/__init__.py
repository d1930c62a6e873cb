"""The paper-faithful layer over `lowlevel` (paper/README.md): commands on top (`python -m paper.train`, `convert`,
`verify`, `compare`, `bench`, `lora_bench`, `gradient_norms`, all run through `cli`), role packages beneath that import
only downward: models ← formats ← references ← training ← reports, with analysis standing alone."""
