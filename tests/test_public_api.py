"""The public API is exactly what the README documents: every function and class in `lowlevel.__all__` is listed in
the README's API block with its real signature, and the block lists nothing else; the one sub-package in
`lowlevel.__all__`, the Swin Transformer's `lowlevel.swin`, has a block of its own, checked the same way."""
import inspect
import re
from pathlib import Path

import lowlevel

README = Path(__file__).resolve().parent.parent / "README.md"
PACKAGES = {"lowlevel": lowlevel, "lowlevel.swin": lowlevel.swin}


def plain_signature(obj) -> str:
    """The signature as Python prints it, without annotations: what a reader types."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def documented(package: str) -> dict[str, str]:
    """name -> signature text, from the code block that follows `<!-- api:PACKAGE -->` in the README."""
    block = re.search(rf"<!-- api:{re.escape(package)} -->\s*```text\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, f"the README has no API block for {package}"
    entries = {}
    for line in block[1].splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        m = re.fullmatch(rf"{re.escape(package)}\.(\w+)(\(.*\))", line)
        assert m, f"not a '{package}.name(signature)' line: {line!r}"
        assert m[1] not in entries, f"{m[1]} is listed twice"
        entries[m[1]] = m[2]
    return entries


def callables(module) -> list[str]:
    """The functions and classes of a package's __all__ (a sub-package is documented in a block of its own)."""
    return [name for name in module.__all__ if not inspect.ismodule(getattr(module, name))]


def test_readme_lists_exactly_the_public_names_of_lowlevel():
    for package, module in PACKAGES.items():
        assert sorted(documented(package)) == sorted(callables(module)), package
    submodules = [f"lowlevel.{name}" for name in lowlevel.__all__ if name not in callables(lowlevel)]
    assert submodules == [p for p in PACKAGES if p != "lowlevel"]


def test_readme_signatures_are_the_code_signatures():
    for package, module in PACKAGES.items():
        docs = documented(package)
        wrong = {name: (docs[name], plain_signature(getattr(module, name)))
                 for name in callables(module) if name in docs and docs[name] != plain_signature(getattr(module, name))}
        assert wrong == {}, package


def test_every_public_name_is_importable_and_documented_in_its_module():
    for package, module in PACKAGES.items():
        for name in module.__all__:
            obj = getattr(module, name)
            assert inspect.getdoc(obj), f"{package}.{name} has no docstring"
