"""The house's rules, read from the source: tune_app's modules import one another one way (no cycle, lazy imports
inside functions included), and trainables/ (how one trial trains) never imports tune_app or Ray."""
import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]


def modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imported(path: Path, name: str, known: dict) -> set[str]:
    """The modules of ``known`` that the module ``name`` at ``path`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            names = subs if all(s in known for s in subs) else [base, *subs]
        else:
            continue
        out |= {n for n in names if n in known and n != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_tune_app_has_no_import_cycle():
    known = modules("tune_app")
    assert len(known) > 30 and "tune_app.search" in known
    graph = {name: imported(path, name, known) for name, path in known.items()}
    assert "tune_app.analyze" in graph["tune_app.search.runner"]  # the reader sees real imports, lazy ones included
    assert cycles(graph) == []


def test_trainables_never_import_tune_app_or_ray():
    offenders = {}
    for name, path in modules("trainables").items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            if roots & {"tune_app", "ray"}:
                offenders.setdefault(name, []).append(node.lineno)
    assert len(modules("trainables")) >= 10
    assert offenders == {}
