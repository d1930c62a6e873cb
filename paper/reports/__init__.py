"""Measuring and reporting: timing, memory and FLOPs, summaries over rounds and seeds, and the markdown tables and
PNGs of paper.bench, paper.compare, paper.verify and paper.lora_bench."""
