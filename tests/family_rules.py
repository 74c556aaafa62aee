"""Two rules of engine/ (DESIGN.md → Layout), as a checker that reads the source (nothing is imported or run):

    problems = family_rule_problems(Path("engine"), Path("ui"))     # [] when both hold

1. Outside engine/models/families/, no code tests a family's name: a comparison with a family name
   (`family == "flux"`, `family in ("sd15", "sd2")`, `.name == "dit"`, a `case "flux":`) or a table keyed by family
   names (`{"flux": 16, "dit": 1}[family]`) is a branch every new family would have to add. Such code asks the
   family's Capabilities instead (engine/models/families/base.py). engine/config/imports/ translates other trainers'
   keys into family names and is exempt.
2. No file under engine/ over MAX_LINES lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 400
EXEMPT = ("models/families/", "config/imports/")      # relative to engine/


def family_names(engine: Path) -> set[str]:
    """The registry's names (engine/models/families/__init__.py FOLDERS), read from its source."""
    tree = ast.parse((engine / "models" / "families" / "__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "FOLDERS" for t in targets):
                return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("engine/models/families/__init__.py has no FOLDERS table")


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    """The family names a literal holds: "flux", or ("sd15", "sd2") / ["..."] / {"..."}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for elt in node.elts for v in _names_in(elt, names)]
    return []


def name_tests(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each family-name test in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hits = [v for operand in (node.left, *node.comparators) for v in _names_in(operand, names)]
            if hits:
                found.append((node.lineno, f"compares with family name(s) {', '.join(sorted(set(hits)))}"))
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in names]
            if len(keys) >= 2:
                found.append((node.lineno, f"a table keyed by family names ({', '.join(keys)})"))
        elif isinstance(node, ast.MatchValue):
            hits = _names_in(node.value, names)
            if hits:
                found.append((node.lineno, f"matches family name {hits[0]}"))
    return found


def family_rule_problems(engine: Path, *others: Path) -> list[str]:
    """Every broken rule, one line each, naming the file and line to change."""
    engine = Path(engine)
    names = family_names(engine)
    problems = []
    for root in (engine, *others):
        for path in sorted(Path(root).rglob("*.py")):
            inside = path.relative_to(root).as_posix()
            shown = f"{root.name}/{inside}"
            if root == engine:
                lines = len(path.read_text(encoding="utf-8").splitlines())
                if lines > MAX_LINES:
                    problems.append(f"{shown}: {lines} lines; split it by concern (at most {MAX_LINES})")
                if inside.startswith(EXEMPT):
                    continue
            for line, what in name_tests(path, names):
                problems.append(f"{shown}:{line}: {what}; ask the family's Capabilities instead "
                                f"(engine.models.families.capabilities)")
    return problems
