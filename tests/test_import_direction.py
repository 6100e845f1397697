"""Imports flow one way between Meshtron's top-level packages: configs <- parallel <- model <- train <- tools.

Read from the source (AST), not by importing, so a lazy import inside a function counts too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["configs", "parallel", "model", "train", "tools"]  # each may import only those to its left


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Top-level Meshtron packages a module imports (absolute `meshtron.X` or relative)."""
    found = set()
    package = path.relative_to(root).parts[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports stay inside their package unless they climb out of it
                depth = len(path.relative_to(root).parts) - 1
                names = [] if node.level < depth else ["meshtron.<outside>"]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "meshtron" and len(parts) > 1 and parts[1] != package:
                found.add(parts[1])
    return found


def edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) package pairs, with the modules responsible."""
    out = {}
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in imports_of(path):
                out.setdefault((package, target), []).append(str(path.relative_to(ROOT)))
    return out


def test_packages_import_only_packages_below_them():
    upward = [f"{a} imports {b} ({', '.join(files)})" for (a, b), files in edges().items()
              if b not in ORDER or ORDER.index(b) >= ORDER.index(a)]
    assert not upward, "imports against configs <- parallel <- model <- train <- tools:\n" + "\n".join(upward)


def test_no_two_packages_import_each_other():
    pairs = edges()
    cycles = sorted({tuple(sorted(p)) for p in pairs if (p[1], p[0]) in pairs})
    assert not cycles, f"packages importing each other: {cycles}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk above is not vacuous: an upward import, even inside a function, is found."""
    module = ROOT / "parallel" / "mesh.py"
    source = module.read_text() + "\n\ndef _late():\n    from meshtron.train.run import loop  # noqa\n"
    fake = tmp_path / "parallel" / "mesh.py"
    fake.parent.mkdir()
    fake.write_text(source)
    assert "train" in imports_of(fake, tmp_path)
    assert ("parallel", "train") not in edges()

