"""The map is true: docs/architecture.md's layer table is the import rule this test enforces on every module of
exporter/, no module imports another that imports it back (directly or round a circle), every module the map names
exists, and every file the "How to add" steps name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "exporter"
MAP = REPO / "docs" / "architecture.md"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The exporter modules ``name`` imports, TYPE_CHECKING and function-level imports included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layers() -> list[tuple[str, list[str], list[str]]]:
    """(layer, its modules or packages, what it may import) from the map's table."""
    rows = []
    for line in MAP.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("core", "source", "root", "entry", "simulator"):
            allowed = re.findall(r"`([\w.]+)`|\b(core|anything)\b", cells[2])
            rows.append((cells[0], re.findall(r"`([\w.]+)`", cells[1]), allowed))
    return [(layer, owned, [a or b for a, b in allowed]) for layer, owned, allowed in rows]


def owner(module: str, table: list[tuple[str, list[str], list[str]]]) -> str | None:
    """The most specific entry of the table that holds ``module`` (``exporter`` holds only the top-level file)."""
    best = None
    for _, owned, _ in table:
        for entry in owned:
            holds = module == entry or (entry != "exporter" and module.startswith(entry + "."))
            if holds and (best is None or len(entry) > len(best)):
                best = entry
    return best


def test_the_map_places_every_module_in_one_layer() -> None:
    table = layers()
    assert {layer for layer, _, _ in table} >= {"core", "source", "root", "entry"}, table
    unplaced = sorted(m for m in modules() if owner(m, table) is None)
    assert not unplaced, f"modules the layer table of docs/architecture.md does not place: {unplaced}"


def test_every_import_follows_the_layer_table() -> None:
    table = layers()
    core = {entry for layer, owned, _ in table if layer == "core" for entry in owned}
    allowed_of = {entry: allowed for _, owned, allowed in table for entry in owned}
    wrong = []
    for module, imported in graph().items():
        mine = owner(module, table)
        assert mine is not None
        allowed = allowed_of[mine]
        if "anything" in allowed:
            continue
        for target in imported:
            theirs = owner(target, table)
            ok = theirs == mine or theirs in allowed or ("core" in allowed and theirs in core)
            if not ok:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports the layer table of docs/architecture.md forbids:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_round_a_circle() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert not circles, "import cycles: " + "; ".join(" -> ".join(circle) for circle in circles)


def test_the_map_names_only_modules_that_exist() -> None:
    text = MAP.read_text()
    named = set(re.findall(r"`(exporter/[\w/]+\.py)`", text))
    block = text.split("```", 2)[1]  # the module tree
    tree_files = re.findall(r"^\s+([a-z_]+\.py)\b", block, re.M)
    assert named and tree_files
    missing = sorted(p for p in named if not (REPO / p).exists())
    missing += sorted(f for f in tree_files if not list(PACKAGE.rglob(f)))
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_each_how_to_step_names_files_that_exist() -> None:
    text = MAP.read_text()
    for section in ("## How to add a source", "## How to add a metric"):
        assert section in text
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        paths = re.findall(r"`((?:exporter|tests|docs|alerts|dashboards|scripts)/[\w./-]+)`", body)
        assert len(paths) >= 3, section
        missing = [p for p in paths if not (REPO / p.rstrip("/")).exists()]
        assert not missing, f"{section} names files that do not exist: {missing}"


def test_each_package_face_names_every_module_of_its_package() -> None:
    missing = []
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        members = [p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"]
        members += [p.name for p in init.parent.iterdir() if (p / "__init__.py").exists()]
        missing += [f"{init.parent.name}/{m}" for m in members if f"``{m}``" not in doc and f"``{m}/``" not in doc]
    assert not missing, f"package docstrings that do not name these modules: {missing}"
