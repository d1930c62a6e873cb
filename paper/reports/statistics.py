"""Summaries of repeated measurements: benchmark rounds by their median and range, seeds by their mean and
standard deviation."""
import statistics


def median_range(values: list[float]) -> dict:
    """Rounds of a benchmark: {"median", "min", "max"}."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def mean_std(values: list[float]) -> dict:
    """Runs over seeds: {"mean", "std" (the sample standard deviation, 0 for one run), "n"}."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}
