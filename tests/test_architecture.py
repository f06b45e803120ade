"""The rooms of pfp_core and which way their imports run (README, "How it is built"), read with ast from every
module of pfp_core/ and nodes/, imports inside functions included: no import cycle, no import against the order
CLI -> benchmarks -> training -> generation and client -> model -> the top-level base (I/O, config, limits), and
nodes/ reaches pfp_core only through the public names of base, model, generation and training."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Higher may import lower; rooms of equal rank may not import each other. "base" is pfp_core's top level.
RANKS = {"base": 0, "model": 1, "generation": 2, "client": 2, "training": 3, "bench": 4, "cli": 5}
ENTRY_POINTS = {"pfp_core.cli", "pfp_core.__main__"}  # top-level modules that sit above every room
NODES_MAY_USE = {"base", "model", "generation", "training"}
MAX_TOP_LEVEL_MODULES = 16


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    files = sorted((REPO / "pfp_core").rglob("*.py")) + sorted((REPO / "nodes").rglob("*.py"))
    return {module_name(path): path for path in files}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names; nodes' `..pfp_core` climbs to the pack, which is the repo root."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of a module of this repo."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name in known]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path.name == "__init__.py", node)
            if target not in known:
                continue
            submodules = [alias.name for alias in node.names if f"{target}.{alias.name}" in known]
            found += [(f"{target}.{sub}", [], node.lineno) for sub in submodules]
            names = [alias.name for alias in node.names if alias.name not in submodules]
            if names or not submodules:
                found.append((target, names, node.lineno))
    return found


def room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "nodes":
        return "nodes"
    if module in ENTRY_POINTS:
        return "cli"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else "base"


def import_graph() -> dict[str, list[tuple[str, list[str], int]]]:
    modules = source_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, list[tuple[str, list[str], int]]]) -> list[list[str]]:
    """Each strongly connected set of more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target, _, _ in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            members = []
            while not members or members[-1] != module:
                members.append(stack.pop())
            if len(members) > 1 or any(target == module for target, _, _ in graph[module]):
                found.append(sorted(members))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_there_are_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_run_one_way_between_rooms():
    wrong = []
    for importer, imports in import_graph().items():
        for target, _, line in imports:
            here, there = room(importer), room(target)
            if here == "nodes" or here == there or target in ("pfp_core", f"pfp_core.{here}"):
                continue
            if there == "nodes" or RANKS[here] <= RANKS[there]:
                wrong.append(f"{importer}:{line} ({here}) imports {target} ({there})")
    assert wrong == []


def test_nodes_use_only_public_names_of_the_engine_rooms():
    wrong = []
    for importer, imports in import_graph().items():
        if room(importer) != "nodes":
            continue
        for target, names, line in imports:
            if target.startswith("pfp_core") and (room(target) not in NODES_MAY_USE
                                                  or any(name.startswith("_") for name in names)):
                wrong.append(f"{importer}:{line} imports {names or 'module'} from {target}")
    assert wrong == []


def test_the_top_level_stays_small_and_every_room_says_what_it_holds():
    top = sorted(path.name for path in (REPO / "pfp_core").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    rooms = [path for path in (REPO / "pfp_core").iterdir() if (path / "__init__.py").is_file()]
    assert {path.name for path in rooms} == set(RANKS) - {"base", "cli"}
    for path in rooms:
        assert ast.get_docstring(ast.parse((path / "__init__.py").read_text())), path


def test_the_checks_see_a_cycle_and_a_wrong_way_import():
    graph = {"pfp_core.model.a": [("pfp_core.model.b", [], 1)], "pfp_core.model.b": [("pfp_core.model.a", [], 1)],
             "pfp_core.model.c": []}
    assert cycles(graph) == [["pfp_core.model.a", "pfp_core.model.b"]]
    assert (room("pfp_core.model.dit"), room("pfp_core.limits"), room("pfp_core.cli"), room("nodes.routes"),
            room("pfp_core.bench")) == ("model", "base", "cli", "nodes", "bench")


def test_a_test_imports_other_test_modules_only_from_its_own_folder():
    """pytest's prepend import mode puts a test's own folder (and tests/, for the shared helpers) on sys.path, so
    `from test_x import ...` only works for a test_x beside the importer, whichever folders are run."""
    tests = REPO / "tests"
    wrong = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("test_") and not (path.parent / f"{name}.py").is_file():
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert wrong == []
