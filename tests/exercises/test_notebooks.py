"""The workbooks as notebooks: jupytext opens every workbook and solution as a notebook and writes it back
unchanged; the checker grades a saved notebook as it grades the markdown, telling places as cells; the quick
solutions run top to bottom on a Jupyter kernel (every solution: `python -m exercises notebooks`, outside the
suite)."""
import json
from pathlib import Path

import jupytext
import nbformat
import pytest

from exercises import notebooks
from exercises.checker import check_workbook, sections
from paper import cli
from paper.training.trained import EXERCISE_MODEL, PICTURES_MODEL, trained_model

REPO = Path(__file__).resolve().parents[2]
MARKDOWN = sorted(REPO.glob("exercises/[0-9][0-9]_*.md")) + sorted(REPO.glob("exercises/solutions/[0-9][0-9]_*.md"))
# Seconds each on a Jupyter kernel (5-13 s on a quiet 2-core machine): the others train for minutes, and run by
# `python -m exercises notebooks`.
QUICK = ["01_patch_embedding", "03_position_embeddings", "08_windows_and_relative_positions",
         "11_patch_embedding_filters"]


def saved_by_jupyter(path: Path, folder: Path) -> Path:
    """The notebook `jupytext --to notebook` makes of `path`, as a Jupyter front end saves it after a run: with a
    kernelspec, language info and an output in every code cell."""
    notebook = jupytext.reads(path.read_text(), fmt="md")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    for count, cell in enumerate((c for c in notebook.cells if c.cell_type == "code"), start=1):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
    saved = folder / f"{path.stem}.ipynb"
    saved.write_text(jupytext.writes(notebook, fmt="ipynb"))
    return saved


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_markdown_to_notebook_and_back_changes_nothing(path, tmp_path):
    text = path.read_text()
    notebook = jupytext.reads(text, fmt="md")
    assert jupytext.writes(jupytext.reads(jupytext.writes(notebook, fmt="ipynb"), fmt="ipynb"), fmt="md") == text
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.cell_type == "markdown" or cell.source in code for cell in notebook.cells)
    # what the checker reads of a notebook a learner ran and saved: the same setup and tasks, line for line
    assert sections(notebooks.markdown_of(saved_by_jupyter(path, tmp_path))) == sections(text)


def test_the_checker_grades_a_saved_notebook_and_tells_places_as_cells(tmp_path):
    solution = REPO / "exercises" / "solutions" / "01_patch_embedding.md"
    saved = saved_by_jupyter(solution, tmp_path)
    assert all(r.passed for r in check_workbook(saved, output_dir=tmp_path / "out"))
    notebook = json.loads(saved.read_text())
    cells = [i for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"]
    task_2 = notebook["cells"][cells[2]]                          # setup, task 1, task 2: the third code cell
    lines = "".join(task_2["source"]).split("\n")
    task_2["source"] = "\n".join(lines[:2] + ["    x = ("] + lines[2:])
    saved.write_text(json.dumps(notebook))
    [result] = check_workbook(saved, output_dir=tmp_path / "out", tasks=[2])
    assert f"syntax error in task 2 in cell {cells[2] + 1}, line 3 of 01_patch_embedding.ipynb" in result.message


def test_unreadable_notebooks_and_other_files_are_refused_in_one_line(tmp_path, capsys):
    from exercises.__main__ import main

    broken = tmp_path / "01_patch_embedding.ipynb"
    broken.write_text("{not json")
    [result] = check_workbook(broken)
    assert not result.passed and "expected a Jupyter notebook (.ipynb)" in result.message
    other = tmp_path / "01_patch_embedding.txt"
    other.write_text("## Setup\n")
    with pytest.raises(SystemExit) as exit_code:
        cli.run(main, ["check", str(other)])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: workbook: expected a markdown workbook (.md) or its notebook "
                                               f"(.ipynb), got {other}")


@pytest.mark.slow
@pytest.mark.parametrize("name", QUICK)
def test_quick_solutions_run_top_to_bottom_on_a_jupyter_kernel(name):
    for model in (EXERCISE_MODEL, PICTURES_MODEL):      # workbooks 11 and 03 read them: trained once, not in a cell
        trained_model(*model)
    assert notebooks.execute(REPO / "exercises" / "solutions" / f"{name}.md", timeout=600) > 0


def test_a_cell_that_raises_names_the_notebook(tmp_path):
    workbook = tmp_path / "01_patch_embedding.md"
    workbook.write_text("# t\n\n## Setup\n\n```python\nx = 1\n```\n\n## Task 1: x\n\n```python\nraise ValueError('planted')\n```\n")
    with pytest.raises(RuntimeError, match=r"01_patch_embedding.md: a cell raised: ValueError: planted"):
        notebooks.execute(workbook, timeout=120)
