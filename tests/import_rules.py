"""The import rules of engine/, as data, and a checker that reads the source (no module is imported or run).

    problems = import_problems(Path("engine"))     # [] when every rule holds

Rules (DESIGN.md → Layout): no import cycle between modules (imports inside functions count: they are cycles
waiting to happen); engine never imports gradio or ui; and each part of engine imports only the parts listed for it
in ALLOWED below (the parts are the subpackages, the small shared helpers, and the entry points).
Importing a package's own modules is always allowed.
"""
from __future__ import annotations

import ast
from pathlib import Path

HELPERS = {"atomic", "events", "registry", "failures", "lock"}          # engine/<name>.py: the small shared helpers
ENTRY_POINTS = {"__init__", "__main__", "cli", "demo", "lr_preview", "runs", "system_doctor", "tensorboard_view"}   # engine/<name>.py: may import any part

# part -> the parts it may import (besides itself). Read it as the layers: entry points → rl → training →
# sampling → models / dataset_doctor → captions → data → config → family_data → helpers.
# family_data is the torch-free face of the families (the registry, the record types, each folder's caps.py): what
# a family can do, which config/validate.py and the GUI ask instead of testing a family's name.
ALLOWED: dict[str, set[str]] = {
    "helpers": set(),
    "system": set(),     # what this PC is and whether it can train (for engine/system_doctor.py); stdlib only
    "family_data": {"helpers"},
    "config": {"family_data", "helpers"},
    "data": {"config", "family_data", "helpers"},
    "models": {"config", "family_data", "helpers"},
    "captions": {"data", "helpers"},
    "dataset_doctor": {"captions", "data", "config", "family_data", "helpers"},
    "sampling": {"models", "config", "family_data", "helpers"},
    "training": {"sampling", "models", "data", "config", "family_data", "helpers"},
    "rl": {"training", "sampling", "models", "data", "config", "family_data", "helpers"},
}
FORBIDDEN_TOP_LEVEL = {"gradio", "ui"}   # the GUI imports the engine, never the other way round


def module_name(path: Path, root: Path) -> str:
    """engine/data/plan.py -> engine.data.plan; engine/models/__init__.py -> engine.models."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported_names(path: Path, name: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of every import in the file, inside functions too; `from x import y` gives x.y
    (which resolve_module() trims to x when y is not a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: from .x import y
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
            found.append((source, node.lineno))
    return found


def resolve_module(dotted: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `dotted` that is a module of the tree, or None (a third-party or std-lib name)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def is_family_data(rest: list[str]) -> bool:
    """engine.models.families, its base.py, a family folder's package and its caps.py."""
    if rest[:2] != ["models", "families"]:
        return False
    tail = rest[2:]
    return len(tail) == 0 or tail == ["base"] or (len(tail) == 1 and tail[0] != "detect") or \
        (len(tail) == 2 and tail[1] == "caps")


def part_of(module: str, root_name: str) -> str:
    """engine.data.plan -> 'data'; engine.events -> 'helpers'; engine.cli -> 'entry';
    engine.models.families.flux.caps -> 'family_data'."""
    rest = module.split(".")[1:] if module != root_name else ["__init__"]
    if is_family_data(rest):
        return "family_data"
    if len(rest) == 1 and (rest[0] in ENTRY_POINTS or rest[0] in HELPERS):
        return "helpers" if rest[0] in HELPERS else "entry"
    return rest[0]


def import_graph(root: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """({module: {imported engine module: line}}, [problems with forbidden imports])."""
    modules = all_modules(root)
    graph: dict[str, dict[str, int]] = {}
    problems = []
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for dotted, line in imported_names(path, name, path.name == "__init__.py"):
            top = dotted.split(".")[0]
            if top in FORBIDDEN_TOP_LEVEL:
                problems.append(f"{path.as_posix()}:{line}: imports {dotted} (the engine must not import the GUI)")
                continue
            target = resolve_module(dotted, modules)
            if target is not None and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph, problems


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def import_problems(root: Path) -> list[str]:
    """Every broken rule, one line each, naming the file and line to change."""
    root = Path(root)
    modules = all_modules(root)
    graph, problems = import_graph(root)
    cycle = find_cycle(graph)
    if cycle:
        hops = [f"{a} ({modules[a].as_posix()}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        problems.append("import cycle: " + " -> ".join(hops) + f" -> {cycle[-1]}")
    for name, edges in graph.items():
        part = part_of(name, root.name)
        if part == "entry":
            continue
        allowed = ALLOWED.get(part)
        if allowed is None:
            problems.append(f"{modules[name].as_posix()}: '{part}' is a new part of {root.name}/; add it to "
                            f"ALLOWED in tests/import_rules.py with the parts it may import")
            continue
        for target, line in edges.items():
            target_part = part_of(target, root.name)
            if target_part != part and target_part not in allowed:
                problems.append(f"{modules[name].as_posix()}:{line}: {part}/ imports {target} ({target_part}); "
                                f"{part} may import only {', '.join(sorted(allowed)) or 'nothing of the engine'}")
    return problems
