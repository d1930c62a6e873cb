"""The house of layers (paper/README.md): a top-level `paper/*.py` is a command (or `cli`); the packages beneath import
only downward, models ← formats ← references ← training ← reports, with analysis standing alone beneath them all;
no package imports a command; and one place, the family record, looks at a config's type. Read from the source
with `ast`, nothing imported."""
import ast
from pathlib import Path

PAPER = Path(__file__).resolve().parents[2] / "paper"
RANK = {"analysis": 0, "models": 1, "formats": 2, "references": 3, "training": 4, "reports": 5}
COMMANDS = {p.stem for p in PAPER.glob("*.py")} - {"__init__", "cli"}


def paper_imports(path: Path) -> list[str]:
    """The paper modules `path` imports, as dotted names ("paper.models.family", "paper.cli"), relative imports
    resolved."""
    package = ".".join(path.relative_to(PAPER.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "paper"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] != "paper":
                continue
            submodules = [f"{base}.{a.name}" for a in node.names if module_path(f"{base}.{a.name}").exists()
                          or (module_path(f"{base}.{a.name}").parent / a.name).is_dir()]
            found += submodules or [base]                      # from paper.models import family: the module itself
    return found


def module_path(module: str) -> Path:
    return PAPER.parent.joinpath(*module.split(".")).with_suffix(".py")


def layer(module: str) -> str:
    """"paper.models.family" -> "models"; "paper.train" -> "command"; "paper.cli" -> "cli"."""
    parts = module.split(".")
    if len(parts) == 2:
        return "cli" if parts[1] == "cli" else "command" if parts[1] in COMMANDS else parts[1]
    return parts[1]


def test_packages_import_only_downward_and_never_a_command():
    wrong = []
    for path in PAPER.glob("*/*.py"):
        here = path.parent.name
        if here not in RANK:
            continue
        for module in paper_imports(path):
            there = layer(module)
            if there == "command" or (there in RANK and RANK[there] > RANK[here]) or (here == "analysis" and
                                                                                       there != "analysis"):
                wrong.append(f"{path.relative_to(PAPER.parent)} imports {module}")
    assert wrong == []


def test_no_import_cycle_between_paper_modules():
    graph = {}
    for path in PAPER.rglob("*.py"):
        name = ".".join(path.relative_to(PAPER.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in paper_imports(path) if m != name}
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError(" -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == "done" or node not in graph:
            return
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_the_top_of_paper_is_commands_and_cli_only():
    top = sorted(p.stem for p in PAPER.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 12, top
    for name in COMMANDS:
        text = (PAPER / f"{name}.py").read_text()
        assert 'if __name__ == "__main__":' in text and "def main(" in text, name
    assert all(p.is_dir() or p.name == "README.md" for p in PAPER.iterdir() if p.suffix != ".py")


def test_only_the_family_record_asks_for_a_config_type():
    asking = []
    for path in PAPER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and
                    "SwinConfig" in ast.unparse(node.args[1])):
                asking.append(str(path.relative_to(PAPER.parent)))
    assert asking == []


def test_test_files_have_names_unique_across_the_folders():
    """pytest imports each test file by its base name (no packages under tests/): two of one name cannot both run."""
    names = [p.name for p in PAPER.parent.joinpath("tests").rglob("*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
