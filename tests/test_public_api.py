"""The public API is exactly what the README documents: every name in `lowlevel.__all__` is listed in the README's
API block with its real signature, and the block lists nothing else."""
import inspect
import re
from pathlib import Path

import lowlevel

README = Path(__file__).resolve().parent.parent / "README.md"


def plain_signature(obj) -> str:
    """The signature as Python prints it, without annotations: what a reader types."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def documented(package: str) -> dict[str, str]:
    """name -> signature text, from the code block that follows `<!-- api:PACKAGE -->` in the README."""
    block = re.search(rf"<!-- api:{package} -->\s*```text\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, f"the README has no API block for {package}"
    entries = {}
    for line in block[1].splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        m = re.fullmatch(rf"{package}\.(\w+)(\(.*\))", line)
        assert m, f"not a '{package}.name(signature)' line: {line!r}"
        assert m[1] not in entries, f"{m[1]} is listed twice"
        entries[m[1]] = m[2]
    return entries


def test_readme_lists_exactly_the_public_names_of_lowlevel():
    assert sorted(documented("lowlevel")) == sorted(lowlevel.__all__)


def test_readme_signatures_are_the_code_signatures():
    docs = documented("lowlevel")
    wrong = {name: (docs[name], plain_signature(getattr(lowlevel, name)))
             for name in lowlevel.__all__ if name in docs and docs[name] != plain_signature(getattr(lowlevel, name))}
    assert wrong == {}


def test_every_public_name_is_importable_and_documented_in_its_module():
    for name in lowlevel.__all__:
        obj = getattr(lowlevel, name)
        assert inspect.getdoc(obj), f"lowlevel.{name} has no docstring"
