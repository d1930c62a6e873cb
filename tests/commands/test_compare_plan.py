"""`python -m paper.compare --plan`: the runs a sweep would train, costed by the committed results, and the wall time
of paper.compare's pool, checked against schedules worked out by hand and against the pool's own job order."""
import json
import os
import re
from pathlib import Path

from paper import compare
from paper.reports.compare_plan import committed_seconds, job_seconds, wall_seconds
from paper.training.comparison import Job, jobs, tuning_jobs

REPO = Path(__file__).resolve().parents[2]


def test_the_wall_time_is_the_pools_schedule_worked_by_hand():
    """Two workers, jobs queued in order: a (5 s) and b (3 s) start at 0; c (4 s) takes b's process at 3 and ends at
    7; d (1 s) takes a's at 5 and ends at 6. The sweep ends at 7 (one worker: 13)."""
    a, b, c, d = (Job("vit", 100, seed) for seed in range(4))
    seconds = {a: 5.0, b: 3.0, c: 4.0, d: 1.0}
    assert wall_seconds([a, b, c, d], seconds, 2) == 7.0
    assert wall_seconds([a, b, c, d], seconds, 1) == 13.0
    assert wall_seconds([], {}, 2) == 0.0


def test_a_job_waits_for_its_prerequisite_and_queues_behind_the_jobs_ready_before_it():
    """The teacher (cnn, 10 s) and a ViT (2 s) start at 0; a second ViT (2 s) follows the first at 2 and ends at 4;
    the student (vit-hard, 1 s) joins the queue when its teacher ends, at 10, and ends at 11. Without the teacher in
    the sweep (its record is there) the student is ready at once: 2 workers end at 3."""
    teacher, student = Job("cnn", 100, 0), Job("vit-hard", 100, 0)
    vit0, vit1 = Job("vit", 100, 0), Job("vit", 100, 1)
    seconds = {teacher: 10.0, vit0: 2.0, vit1: 2.0, student: 1.0}
    assert wall_seconds([teacher, student, vit0, vit1], seconds, 2) == 11.0
    assert wall_seconds([student, vit0, vit1], seconds, 2) == 3.0


def test_a_job_costs_its_models_mean_at_the_nearest_committed_size():
    costs = {"vit": {100: 10.0, 1000: 30.0}, "pretraining": {0: 7.0}}
    assert job_seconds(Job("vit", 100, 2), costs) == 10.0
    assert job_seconds(Job("vit", 630, 0), costs) == 30.0
    assert job_seconds(Job("vit", 550, 0), costs) == 10.0             # equally near: the smaller size
    assert job_seconds(Job("pretraining", 0, 1), costs) == 7.0
    assert job_seconds(Job("vit-large", 100, 0), costs) is None


def write_result(folder, name, runs, tuning=()):
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump({"runs": list(runs), "tuning": list(tuning)}, f)


def test_the_newest_result_holding_a_model_and_size_gives_its_cost(tmp_path):
    write_result(tmp_path, "new", [{"model": "vit", "size": 100, "seed": s, "train_seconds": t}
                                   for s, t in enumerate((10.0, 20.0))])
    write_result(tmp_path, "old", [{"model": "vit", "size": 100, "seed": 0, "train_seconds": 99.0},
                                   {"model": "vit", "size": 4000, "seed": 0, "train_seconds": 50.0},
                                   {"model": "pretraining", "size": 1797, "seed": 0, "train_seconds": 8.0}],
                 tuning=[{"model": "cnn", "size": 1600, "seed": 0, "train_seconds": 40.0}])
    costs = committed_seconds(("new", "old"), str(tmp_path))
    assert costs == {"vit": {100: 15.0, 4000: 50.0}, "pretraining": {0: 8.0}, "cnn": {1600: 40.0}}


def test_every_committed_result_the_plan_reads_is_there_and_costs_what_the_committed_sweeps_trained():
    costs = committed_seconds()
    for model in ("vit", "vit-large", "cnn", "cnn-cifar", "vit-hard", "vit-lora-all4", "pretraining", "mpp-pretraining"):
        assert costs[model] and all(seconds > 0 for seconds in costs[model].values()), model


def test_plan_trains_nothing_writes_nothing_and_counts_only_the_runs_out_lacks(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--models", "vit", "cnn", "--sizes", "100", "4000", "--seeds", "2", "--out", str(out)]
    first = compare.main([*argv, "--plan"])
    assert not out.exists()
    assert {m: r["count"] for m, r in first["runs"].items()} == {"cnn": 4, "vit": 4}
    assert "wall time with 2 workers" in capsys.readouterr().out
    s = compare.settings_of(compare.parse_args(argv))
    job = jobs(s)[0]
    os.makedirs(out / "runs")
    with open(job.record_path(str(out)), "w") as f:                # one finished run, under the committed choice
        json.dump({"model": job.model, "hp": {"lr": 3e-3, "weight_decay": 0.3, "warmup": 0.05}}, f)
    second = compare.main([*argv, "--plan"])
    assert second["runs"][job.model]["count"] == 3
    assert compare.main([*argv, "--plan", "--force"])["runs"][job.model]["count"] == 4
    assert second["sweep_seconds"] < first["sweep_seconds"]


def test_the_full_plan_costs_every_run_of_the_full_sweep(tmp_path):
    """--full's plan counts each of its runs once (the first pre-training with the grid, which needs it), every one
    with a committed cost, and its two workers end between half the runs' seconds and that plus the two longest (a
    pre-training and the run after it)."""
    p = compare.main(["--full", "--plan", "--out", str(tmp_path / "none")])
    s = compare.settings_of(compare.parse_args(["--full"]))
    sweep = {m: r for m, r in p["runs"].items() if "(grid)" not in m}
    assert sum(r["count"] for r in p["runs"].values()) == len(jobs(s)) + len(tuning_jobs(s)) - 1
    assert p["runs"]["pretraining (grid)"]["count"] == 1 and not p["unknown"]
    total, longest = sum(r["seconds"] for r in sweep.values()), max(max(c.values()) for c in committed_seconds().values())
    assert total / 2 <= p["sweep_seconds"] <= total / 2 + 2 * longest


def test_the_readme_states_the_hours_the_full_plan_prints(tmp_path):
    p = compare.main(["--full", "--plan", "--out", str(tmp_path / "none")])
    readme = (REPO / "paper" / "training" / "README.md").read_text()
    hours, grids = re.search(r"`--full` plans (\d+\.\d) hours on 2 cores, its grids (\d+\.\d) of them", readme).groups()
    assert (hours, grids) == (f"{(p['tuning_seconds'] + p['sweep_seconds']) / 3600:.1f}", f"{p['tuning_seconds'] / 3600:.1f}")
