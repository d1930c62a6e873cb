"""The public API is exactly what lowlevel/README.md documents: every name in `lowlevel.__all__` is listed in its
API block with its real signature, and the block lists nothing else; each submodule in `lowlevel.__all__` (`lora`,
`swin`, `resnet`) has a block of its own, listing its `__all__` the same way."""
import inspect
import re
from pathlib import Path

import lowlevel

GUIDE = Path(__file__).resolve().parents[2] / "lowlevel" / "README.md"


def plain_signature(obj) -> str:
    """The signature as Python prints it, without annotations: what a reader types."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def documented(package: str) -> dict[str, str]:
    """name -> signature text, from the code block that follows `<!-- api:PACKAGE -->` in lowlevel/README.md."""
    block = re.search(rf"<!-- api:{re.escape(package)} -->\s*```text\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert block, f"lowlevel/README.md has no API block for {package}"
    entries = {}
    for line in block[1].splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        m = re.fullmatch(rf"{re.escape(package)}\.(\w+)(\(.*\))", line)
        assert m, f"not a '{package}.name(signature)' line: {line!r}"
        assert m[1] not in entries, f"{m[1]} is listed twice"
        entries[m[1]] = m[2]
    return entries


def public_api() -> dict[str, object]:
    """Each documented package (lowlevel, and each submodule it exports) -> its module."""
    submodules = {f"lowlevel.{name}": getattr(lowlevel, name) for name in lowlevel.__all__
                  if inspect.ismodule(getattr(lowlevel, name))}
    return {"lowlevel": lowlevel, **submodules}


def public_names(module) -> list[str]:
    """The names a package's API block lists: its __all__ without the submodules, which have blocks of their own."""
    return [name for name in module.__all__ if not inspect.ismodule(getattr(module, name))]


def test_readme_lists_exactly_the_public_names_of_lowlevel():
    for package, module in public_api().items():
        assert sorted(documented(package)) == sorted(public_names(module)), package


def test_readme_signatures_are_the_code_signatures():
    wrong = {}
    for package, module in public_api().items():
        docs = documented(package)
        wrong.update({f"{package}.{name}": (docs[name], plain_signature(getattr(module, name)))
                      for name in public_names(module)
                      if name in docs and docs[name] != plain_signature(getattr(module, name))})
    assert wrong == {}


def test_every_public_name_is_importable_and_documented_in_its_module():
    for package, module in public_api().items():
        for name in module.__all__:
            obj = getattr(module, name)
            assert inspect.getdoc(obj), f"{package}.{name} has no docstring"
