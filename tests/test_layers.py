"""The import layering of ``docs/architecture.md`` holds: every fgbg module imports only what its layer may.

The table under "## Layers" is the rule: its second column names each layer's folders (or files), its
third the fgbg folders that layer may import ("every layer above the apps": every row above the first app
row). Imports are read with ``ast`` from the source, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fgbg"
ABOVE_THE_APPS = "every layer above the apps"


def layer_table() -> list[tuple[list[str], list[str], bool]]:
    """Rows of the table: (folders of the layer, folders it may import, whether it may import every non-app layer)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`fgbg"):
            continue
        rows.append(
            (re.findall(r"`(fgbg[^`]*)`", cells[1]), re.findall(r"`(fgbg[^`]*)`", cells[2]), ABOVE_THE_APPS in cells[2])
        )
    return rows


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every fgbg module ``path`` imports, at the top or inside functions (relative imports resolved)."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from fgbg import train`
    return {m for m in found if m == "fgbg" or m.startswith("fgbg.")}


def owner(module: str, rows) -> str | None:
    """The table folder that holds ``module`` (``fgbg.models.unets`` -> ``fgbg/models/``), or None."""
    path = module.replace(".", "/")
    for folders, _, _ in rows:
        for folder in folders:
            if folder.endswith("/") and (path + "/").startswith(folder):
                return folder
            if folder == path + ".py":
                return folder
    return None


def test_the_table_covers_every_module_of_the_package():
    rows = layer_table()
    assert len(rows) >= 10, "docs/architecture.md lost its layer table"
    unplaced = [
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if p != PACKAGE / "__init__.py" and not owner(module_name(p), rows)
    ]
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"
    listed = [f for folders, _, _ in rows for f in folders]
    assert len(listed) == len(set(listed)), f"a folder is in two layers: {listed}"
    missing = [f for f in listed if not (REPO / f).exists()]
    assert not missing, f"docs/architecture.md names folders that do not exist: {missing}"


def test_every_import_stays_in_its_layer():
    rows = layer_table()
    below_apps = [f for folders, _, every in rows[: next(i for i, r in enumerate(rows) if r[2])] for f in folders]
    allowed = {}
    for folders, may_import, every in rows:
        for folder in folders:
            allowed[folder] = {folder, *may_import, *(below_apps if every else [])}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        here = owner(module_name(path), rows)
        for module in sorted(imported_modules(path)):
            if module in ("fgbg", "fgbg.__version__"):
                continue
            there = owner(module, rows)
            if there is None and owner(module.rsplit(".", 1)[0], rows):  # `from fgbg.x import name`: name is no module
                continue
            if there not in allowed[here]:
                wrong.append(f"{path.relative_to(REPO)} ({here}) imports {module} ({there})")
    assert not wrong, "imports that break docs/architecture.md's layers:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from fgbg.train import CONF_DIR", ["fgbg.train", "fgbg.train.CONF_DIR"]),
        ("def f():\n    import fgbg.eval.weights as w", ["fgbg.eval.weights"]),
        ("from . import request", ["fgbg.app", "fgbg.app.request"]),
        ("import numpy", []),
    ],
)
def test_imports_are_read_at_any_depth(tmp_path, source, expected, monkeypatch):
    """The reader sees lazy imports and resolves relative ones (here as if the file were ``fgbg/app/x.py``)."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    path = tmp_path / "fgbg" / "app" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert sorted(imported_modules(path)) == expected


def test_a_model_importing_an_app_would_be_caught():
    """The rule itself: ``fgbg/models/`` may not import ``fgbg/train.py`` nor the metrics package."""
    rows = layer_table()
    models = next(may for folders, may, _ in rows if folders == ["fgbg/models/"])
    assert owner("fgbg.train", rows) == "fgbg/train.py" and "fgbg/train.py" not in models
    assert owner("fgbg.eval.metrics", rows) == "fgbg/eval/" and "fgbg/eval/" not in models
