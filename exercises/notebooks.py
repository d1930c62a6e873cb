"""The workbooks as Jupyter notebooks. The markdown stays the source the checker grades; jupytext reads it as a
notebook (a code cell per ```python block, the text between as markdown cells) and writes it back unchanged, so a
learner works in JupyterLab or in an editor, as they prefer:

    jupytext --to notebook exercises/03_position_embeddings.md     # -> 03_position_embeddings.ipynb, then open it
    python -m exercises check exercises/03_position_embeddings.ipynb   # the checker takes the saved notebook too

`python -m exercises notebooks` runs every solution as a notebook, top to bottom, on a Jupyter kernel (nbclient):
the check that the workbooks work where learners run them.
"""
import os
import re
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = REPO / "exercises" / "solutions"
KERNEL_START_SECONDS = 120      # starting a kernel and importing torch on a busy machine


def markdown_of(path: Path) -> str:
    """A workbook's markdown: the file itself, or, for a notebook a learner saved, jupytext's markdown of it."""
    if path.suffix == ".ipynb":
        try:
            return jupytext.writes(jupytext.read(path, fmt="ipynb"), fmt="md")
        except Exception as e:            # nbformat raises its own errors for JSON that is no notebook
            raise ValueError(f"{path}: expected a Jupyter notebook (.ipynb), got a file nbformat cannot read "
                             f"({type(e).__name__}: {e})") from e
    return path.read_text(encoding="utf-8")


def notebook_of(markdown: str) -> nbformat.NotebookNode:
    """jupytext's notebook of a workbook's markdown, with the kernel every workbook runs on."""
    notebook = jupytext.reads(markdown, fmt="md")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def cell_lines(markdown: str) -> dict[int, tuple[int, int]]:
    """Line n of the markdown (1-based) -> (cell, line in that cell), 1-based, for the lines of its ```python blocks:
    the place a learner who works in the notebook finds them. jupytext makes the k-th python block the k-th code
    cell."""
    cells = jupytext.reads(markdown, fmt="md").cells
    code_cells = [i + 1 for i, cell in enumerate(cells) if cell.cell_type == "code"]
    where, block, inside = {}, -1, False
    for n, line in enumerate(markdown.splitlines(), start=1):
        if not inside and line.strip() == "```python":
            block, inside, first = block + 1, True, n + 1
        elif inside and line.strip() == "```":
            inside = False
        elif inside and block < len(code_cells):
            where[n] = (code_cells[block], n - first + 1)
    return where


def in_cells(message: str, name: str, markdown: str) -> str:
    """"… at line 40 of NAME" -> "… in cell 7, line 3 of NAME", for a notebook's messages."""
    where = cell_lines(markdown)

    def cell(m: re.Match) -> str:
        n = int(m[1])
        return f"in cell {where[n][0]}, line {where[n][1]} of {name}" if n in where else m[0]

    return re.sub(rf"at line (\d+) of {re.escape(name)}", cell, message)


def execute(path: Path, timeout: float) -> float:
    """Run the workbook at `path` as a notebook, top to bottom, on a fresh python3 kernel in a scratch folder (its
    plots go there); the repository importable. -> seconds taken. A cell that raises is a RuntimeError naming it."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = notebook_of(path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="notebook-") as folder:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        client = NotebookClient(notebook, timeout=timeout, startup_timeout=KERNEL_START_SECONDS,
                                kernel_name="python3", resources={"metadata": {"path": folder}})
        try:
            client.execute(env=environment)
        except CellExecutionError as e:
            last = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[-1]       # the error, colours dropped
            raise RuntimeError(f"{path.name}: a cell raised: {last}") from None
    return time.perf_counter() - started


def main(paths: list[Path], timeout: float) -> int:
    """Execute each workbook as a notebook; one line each; exit code 1 if any failed."""
    failed = 0
    for path in paths:
        try:
            print(f"{path.name}: ran every cell in {execute(path, timeout):.0f} s", flush=True)
        except RuntimeError as e:
            failed += 1
            print(f"{path.name}: FAILED: {e}", flush=True)
    print(f"{failed} notebook(s) failed" if failed else "every notebook ran", flush=True)
    return 1 if failed else 0
