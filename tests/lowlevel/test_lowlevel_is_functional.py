"""lowlevel/ is written with tensor ops and torch.nn.functional only: no nn layers, no nn.Module."""
import ast
from pathlib import Path

FORBIDDEN = {"Linear", "LayerNorm", "Conv2d", "MultiheadAttention", "TransformerEncoder", "TransformerEncoderLayer",
             "Module", "GELU", "Dropout", "Embedding", "Parameter", "Sequential", "GroupNorm", "MaxPool2d", "ReLU"}
LOWLEVEL = Path(__file__).resolve().parents[2] / "lowlevel"


def nn_attributes(tree: ast.AST) -> set[str]:
    """Every name X used as `nn.X` or `torch.nn.X`, or imported `from torch.nn import X`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
            base = ast.unparse(node.value)
            if base in ("nn", "torch.nn"):
                found.add(node.attr)
        if isinstance(node, ast.ImportFrom) and node.module in ("torch.nn", "torch.nn.modules"):
            found.update(alias.name for alias in node.names)
    return found


def test_no_module_in_lowlevel_uses_nn_layers():
    files = sorted(LOWLEVEL.glob("*.py"))
    assert len(files) >= 8
    bad = {f.name: sorted(nn_attributes(ast.parse(f.read_text())) & FORBIDDEN) for f in files}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_scan_catches_a_layer():
    assert nn_attributes(ast.parse("import torch\nx = torch.nn.Linear(2, 3)\nfrom torch.nn import LayerNorm")) == {
        "Linear", "LayerNorm"}
