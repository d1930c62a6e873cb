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


def separated(a: dict, b: dict) -> bool:
    """The rule a difference between two rows of seeds is called by: at least 2 seeds each, and means further apart
    than the sum of the two standard deviations."""
    return min(a["n"], b["n"]) > 1 and abs(a["mean"] - b["mean"]) > a["std"] + b["std"]
