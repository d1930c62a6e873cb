"""How long a paper.compare sweep takes, before it runs (`python -m paper.compare --plan`): the runs it would train
(those whose record --out does not hold), each costed by what the committed results measured, and the sweep's wall
time as paper.compare's pool would spend it.

A run's cost is the mean training seconds of its model at its size over the committed runs, taken from the newest
results that hold that model and size (COMMITTED, newest first: the code has grown faster between them), or at the
nearest size they hold; a pre-training's, over its committed pre-trainings. Those seconds were measured with two
processes sharing two cores, as paper.compare's default pool runs them, on the machine the results name. The wall time
replays `run_all`'s pool: the tuning runs first, then the sweep's, each job queued in the order `jobs` lists it once
its prerequisite has finished, `workers` at a time. A model no committed result ran has no cost: the plan names it.
"""
import json
import os
import statistics
from collections import defaultdict

from paper.training.comparison import (
    CHOSEN,
    PRETRAININGS,
    Job,
    Settings,
    choose,
    hyper_parameters,
    jobs,
    prerequisite,
    read_record,
    tuning_jobs,
)

RESULTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "results")
COMMITTED = ("large_grid", "sizes", "remedies", "compare")      # newest first


def committed_seconds(names=COMMITTED, folder=RESULTS) -> dict[str, dict[int, float]]:
    """Per model, per size (0 for a pre-training): the mean training seconds of its runs and tuning runs in the
    newest of the results `names` that holds it."""
    costs = defaultdict(dict)
    for name in names:
        with open(os.path.join(folder, f"{name}.json")) as f:
            result = json.load(f)
        seconds = defaultdict(list)
        for r in [*result["runs"], *result.get("tuning", [])]:
            seconds[r["model"], 0 if r["model"] in PRETRAININGS else r["size"]].append(r["train_seconds"])
        for (model, size), values in seconds.items():
            costs[model].setdefault(size, statistics.mean(values))
    return dict(costs)


def job_seconds(job: Job, costs: dict[str, dict[int, float]]) -> float | None:
    """The committed cost of `job`'s model at its size, or at the nearest size measured; None if never measured."""
    sizes = costs.get(job.model)
    if not sizes:
        return None
    return sizes[min(sizes, key=lambda n: (abs(n - job.size), n))]


def wall_seconds(todo: list[Job], seconds: dict[Job, float], workers: int) -> float:
    """The seconds `run_all` would take for `todo`: a job joins the pool's queue, in `todo`'s order, once its
    prerequisite has finished (at once if the prerequisite is not in `todo`), and each of `workers` processes takes
    the queue's next job when it is free."""
    def ready(job: Job) -> bool:
        return prerequisite(job) not in todo or prerequisite(job) in done

    done, clock, running = set(), 0.0, []               # running: (finish time, job)
    queue, waiting = [j for j in todo if ready(j)], [j for j in todo if not ready(j)]
    while queue or running:
        while queue and len(running) < workers:
            job = queue.pop(0)
            running.append((clock + seconds[job], job))
        running.sort(key=lambda r: r[0])
        clock, job = running.pop(0)
        done.add(job)
        queue += [j for j in waiting if ready(j)]
        waiting = [j for j in waiting if not ready(j)]
    return clock


def plan(tuning: list[Job], todo: list[Job], workers: int, costs: dict[str, dict[int, float]]) -> dict:
    """Per model (its tuning apart, named "(grid)"), the runs to train and their summed seconds; the wall time of the
    tuning and of the sweep; and the models without a committed cost, counted as nothing."""
    seconds = {job: job_seconds(job, costs) for job in [*tuning, *todo]}
    unknown = sorted({job.model for job, s in seconds.items() if s is None})
    seconds = {job: s or 0.0 for job, s in seconds.items()}
    runs = {}
    for job in [*tuning, *todo]:
        row = runs.setdefault(f"{job.model} (grid)" if job in tuning else job.model, {"count": 0, "seconds": 0.0})
        row["count"] += 1
        row["seconds"] += seconds[job]
    return {"runs": runs, "unknown": unknown, "workers": workers,
            "tuning_seconds": wall_seconds(tuning, seconds, workers), "sweep_seconds": wall_seconds(todo, seconds,
                                                                                                    workers)}


def sweep_plan(s: Settings, workers: int, costs: dict[str, dict[int, float]], fresh: bool = False) -> dict:
    """`plan` of the runs the sweep `s` would train: those whose record s.out does not hold (all of them if `fresh`,
    as with --force), each sweep run under the choice its finished grid made (with s.tune; the committed choice while
    the grid is unfinished) or the committed one."""
    def finished(job: Job, chosen: dict) -> dict | None:
        return None if fresh else read_record(job, s, hyper_parameters(job, chosen))

    grid = tuning_jobs(s) if s.tune else []
    tuned = [finished(job, {}) for job in grid]
    chosen = choose([r for r in tuned if r and "hp" in r]) if grid and all(tuned) else CHOSEN
    tuning = [job for job, r in zip(grid, tuned, strict=True) if not r]
    todo = [job for job in jobs(s) if job not in tuning and not finished(job, chosen)]
    return plan(tuning, todo, workers, costs)


def plan_text(p: dict) -> str:
    """The plan as paper.compare --plan prints it."""
    lines = [f"{'runs to train':<28} {'count':>5} {'run hours':>10}"]
    lines += [f"{m:<28} {r['count']:>5} {r['seconds'] / 3600:>10.2f}" for m, r in p["runs"].items()]
    hours = (p["tuning_seconds"] + p["sweep_seconds"]) / 3600
    lines.append(f"wall time with {p['workers']} workers: {hours:.1f} hours (tuning {p['tuning_seconds'] / 3600:.1f}, "
                 f"sweep {p['sweep_seconds'] / 3600:.1f}), from the committed runs' seconds")
    if p["unknown"]:
        lines.append(f"not counted, no committed run measured them: {', '.join(p['unknown'])}")
    return "\n".join(lines)
