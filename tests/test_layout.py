"""The house's rules, read from the source: tune_app's modules import one another one way (no cycle, lazy imports
inside functions included), trainables/ (how one trial trains) never imports tune_app or Ray, and no module of
tune_app/, trainables/ or search_spaces/ is over 450 lines."""
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


MAX_MODULE_LINES = 450


def test_no_module_is_over_450_lines():
    """A module past 450 lines holds more than one thing; it is split where its parts meet (image_classifier's epoch
    loop and user-model checks, numpy_mlp's optimizers)."""
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for package in ("tune_app", "trainables", "search_spaces") for path in modules(package).values()}
    assert len(sizes) > 50 and "trainables/image_classifier.py" in sizes
    offenders = {path: lines for path, lines in sorted(sizes.items()) if lines > MAX_MODULE_LINES}
    assert offenders == {}, f"over {MAX_MODULE_LINES} lines: " + ", ".join(f"{p} ({n})" for p, n in offenders.items())


# The layers, lowest first: a module imports only from its own layer or a lower one.
LAYERS = (
    ("shared", ("tune_app.errors", "tune_app.command", "tune_app.settings", "tune_app.trainable", "tune_app.usercode",
                "tune_app.spaces", "tune_app.wandb_sweep", "tune_app.sweep_data", "tune_app.imageset",
                "tune_app.rundir", "tune_app.cluster", "tune_app.integrations", "tune_app.cost", "tune_app.results",
                "tune_app.repeats")),
    ("views", ("tune_app.plots", "tune_app.report")),
    ("commands", ("tune_app.analyze", "tune_app.retrain", "tune_app.search", "tune_app.train")),
    ("api", ("tune_app", "tune_app.api", "tune_app.__main__")),
)


def layer_of(name: str) -> int:
    best = max(((i, p) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if name == p or name.startswith(p + ".")), key=lambda ip: len(ip[1]))
    return best[0]


def test_imports_point_down_the_layers():
    """Run directories, the cluster, integrations and costs never import a command or a view; views never import a
    command; so a command's package can be read without the others."""
    known = modules("tune_app")
    upward = sorted((name, other) for name, path in known.items() for other in imported(path, name, known)
                    if layer_of(other) > layer_of(name))
    assert [layer_of(n) for n in ("tune_app.rundir.reader", "tune_app.report", "tune_app.search.runner",
                                  "tune_app.api")] == [0, 1, 2, 3]
    assert upward == []


def test_a_command_quiets_ray_before_it_imports_ray():
    """A command's package sets Ray's and W&B's console variables (cluster.console.quiet) before Ray is first
    imported: Ray reads some of them (TUNE_WARN_THRESHOLD_S) as ``ray.tune`` is imported."""
    import os
    import subprocess
    import sys

    code = """
import os, sys
seen = {}
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" and "ray" not in seen:
            seen["ray"] = os.environ.get("TUNE_WARN_THRESHOLD_S")
        return None
sys.meta_path.insert(0, Watch())
import tune_app.COMMAND
print(seen.get("ray", "-"), os.environ.get("WANDB_SILENT"))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TUNE_WARN_THRESHOLD_S", "WANDB_SILENT")}
    for command in ("search", "analyze", "retrain"):
        out = subprocess.run([sys.executable, "-c", code.replace("COMMAND", command)], capture_output=True,
                             text=True, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, check=True).stdout.split()
        # search imports Ray as it is imported (its spaces are Ray domains); the others import it when they run
        assert out == ["3" if command == "search" else "-", "true"], command
