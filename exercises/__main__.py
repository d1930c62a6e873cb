"""`python -m exercises check WORKBOOK.md ...` or `python -m exercises check --all`: grade workbooks."""
import math
import sys
from pathlib import Path

import torch

from exercises import notebooks
from exercises.checker import check_workbook, shown_output, task_numbers, workbooks
from exercises.grading import GRADERS
from exercises.sandbox import abi_version
from paper import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m exercises", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="grade workbooks: one line per task, PASS or FAIL with a hint",
                                description="Run a workbook's code in a separate, limited process and grade every "
                                            "task against the reference implementation, each task alone. After each "
                                            "task's line: the files its code wrote and what it printed. Exit code 1 "
                                            "if any task fails, 2 on a usage error.")
    cli.with_debug_flag(check)
    check.add_argument("workbooks", nargs="*", type=Path, help="workbook files, e.g. exercises/01_patch_embedding.md")
    check.add_argument("--all", action="store_true", help="check every workbook in exercises/")
    check.add_argument("--task", type=int, default=None,
                       help="check only this task number (the earlier tasks run as their reference versions)")
    check.add_argument("--timeout", type=float, default=120.0,
                       help="seconds allowed for each task's code and for its checks (default 120; a task that "
                            "trains for minutes gets at least the time its grader gives it)")
    check.add_argument("--output-dir", type=Path, default=None,
                       help="where the tasks' plots are written (default: next to each workbook)")
    run = commands.add_parser("notebooks", help="run the solutions as Jupyter notebooks, top to bottom",
                              description="Convert each solution (or the given workbooks) to a notebook with jupytext "
                                          "and execute it on a fresh python3 kernel (nbclient), the repository "
                                          "importable, its plots in a scratch folder. One line per notebook; exit "
                                          "code 1 if any cell raised.")
    cli.with_debug_flag(run)
    run.add_argument("workbooks", nargs="*", type=Path, help="workbooks to run (default: every solution)")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for each cell (default 1800)")
    args = parser.parse_args(argv)
    if args.command == "notebooks":
        if not 0 < args.timeout < math.inf:
            parser.error(f"--timeout: expected a finite positive number of seconds, got {args.timeout}")
        for path in args.workbooks:
            if not path.is_file() or path.suffix != ".md":
                raise ValueError(f"workbook: expected a markdown workbook, got {path}")
        return notebooks.main(args.workbooks or sorted(notebooks.SOLUTIONS.glob("[0-9][0-9]_*.md")), args.timeout)
    paths = list(args.workbooks) + (workbooks() if args.all else [])
    if not paths:
        parser.error("check: expected workbook paths or --all, got neither")
    if not 0 < args.timeout < math.inf:
        parser.error(f"--timeout: expected a finite positive number of seconds, got {args.timeout}")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"workbook: expected a markdown file or a notebook, got {path}, which "
                             f"{'is not a file' if path.exists() else 'does not exist'}")
        if path.suffix not in (".md", ".ipynb"):
            raise ValueError(f"workbook: expected a markdown workbook (.md) or its notebook (.ipynb), got {path}")
    tasks = None if args.task is None else [args.task]
    for path in paths:                                  # every --task is valid before anything runs
        if path.stem in GRADERS:
            task_numbers(path.stem, tasks)
    torch.set_num_threads(1)      # the checks' own computations: the same numbers on every machine
    if abi_version() == 0:
        print("note: this kernel has no Landlock (Linux >= 5.13): your code runs unconfined, able to change the "
              "checker's files", file=sys.stderr)
    failed = 0
    for path in paths:
        print(f"{path}", flush=True)
        results = check_workbook(path, timeout=args.timeout, output_dir=args.output_dir, tasks=tasks)
        if not results:                                   # a check that reports nothing has passed nothing
            print("  FAIL: no task was graded")
            failed += 1
        for result in results:
            print(result.line())
            for written in result.files:
                print(f"    wrote {written}")
            lines = shown_output(result.output)
            if lines:
                print("    printed:\n" + "\n".join(f"      {line}" for line in lines))
            sys.stdout.flush()
            failed += not result.passed
    print(f"{failed} task(s) failed" if failed else "all tasks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
