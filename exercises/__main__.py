"""`python -m exercises check WORKBOOK.md ...` or `python -m exercises check --all`: grade workbooks."""
from pathlib import Path

from exercises.checker import check_workbook, workbooks
from paper import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m exercises", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="grade workbooks: one line per task, PASS or FAIL with a hint",
                                description="Run a workbook's code in a separate process and grade every task "
                                            "against the reference implementation. Exit code 1 if any task fails.")
    cli.with_debug_flag(check)
    check.add_argument("workbooks", nargs="*", type=Path, help="workbook files, e.g. exercises/01_patch_embedding.md")
    check.add_argument("--all", action="store_true", help="check every workbook in exercises/")
    check.add_argument("--task", type=int, default=None, help="check only this task number (earlier tasks still run)")
    check.add_argument("--timeout", type=float, default=120.0,
                       help="seconds allowed for each task's code and for its checks (default 120)")
    check.add_argument("--output-dir", type=Path, default=None,
                       help="where the tasks' plots are written (default: next to each workbook)")
    args = parser.parse_args(argv)
    paths = list(args.workbooks) + (workbooks() if args.all else [])
    if not paths:
        parser.error("check: expected workbook paths or --all, got neither")
    if args.timeout <= 0:
        parser.error(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    for path in paths:
        if not path.is_file():
            raise ValueError(f"workbook: expected a markdown file, got {path}, which "
                             f"{'is not a file' if path.exists() else 'does not exist'}")
    failed = 0
    for path in paths:
        print(f"{path}", flush=True)
        for result in check_workbook(path, timeout=args.timeout, output_dir=args.output_dir, only=args.task):
            print(result.line(), flush=True)
            failed += not result.passed
    print(f"{failed} task(s) failed" if failed else "all tasks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
