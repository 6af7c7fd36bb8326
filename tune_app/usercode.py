"""The user's own code: finding a space anywhere, and shipping the code it names to every Ray worker.

``--space`` is a built-in name (``search_spaces/<name>.py``), a path to a ``.py`` file (relative to the
current directory) or a dotted module importable from the current directory or ``PYTHONPATH``. The
folder the space was found in (a file's folder; for ``a.b.c``, the folder holding ``a``) is shipped to
the workers as Ray's ``runtime_env`` ``working_dir``, and every other folder or file of the user's that
the space names (``"module:attr"`` models and trainables outside that folder) as ``py_modules``. Run
directories, data, ``.git`` and files over ``LARGE_FILE_MB`` stay behind; what would still exceed Ray's
package limit is refused in one line. ``tune_app.json`` records what was shipped (``code``), so
``--resume``, ``analyze`` and ``retrain`` import the same code.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType

from tune_app.errors import UsageError

EXCLUDES = [".git/", "runs/", "data/", "wandb/", "__pycache__/", ".ipynb_checkpoints/", "*.pyc"]
LARGE_FILE_MB = 10  # files this large are data or weights, not code: never shipped
PACKAGE_LIMIT_MB = 500  # Ray refuses a package near its gRPC limit (512 MiB); refuse before it


SWEEP_SUFFIXES = (".yaml", ".yml")  # a W&B sweep file (tune_app.wandb_sweep)


def is_path(ref: str) -> bool:
    return ref.endswith((".py", *SWEEP_SUFFIXES)) or "/" in ref or os.sep in ref


def _installed_roots() -> list[Path]:
    """Where installed packages and the standard library live: code there is on every worker already."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return [Path(p).resolve() for p in paths if p]


def _own_packages() -> list[Path]:
    """tune_app's own packages (installed editable, they are not under site-packages; a user's folder inside
    tune_app's checkout, such as examples/, is the user's code)."""
    top = Path(__file__).resolve().parents[1]
    return [top / name for name in ("tune_app", "trainables", "search_spaces")]


def _under(path: Path, roots) -> bool:
    return any(path == r or r in path.parents for r in roots)


def line_of(error: BaseException, file: Path) -> str:
    """'line N' of ``file`` where ``error`` was raised (a SyntaxError says its own line)."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"line {error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == file]
    return f"line {frames[-1].lineno}" if frames else "on import"


def _fresh_import(name: str, file: Path | None = None) -> ModuleType:
    """Import ``name``, again if it was imported before (a notebook re-runs a cell after editing the file)."""
    old = sys.modules.get(name)
    if old is not None and file is not None and Path(getattr(old, "__file__", "") or "").resolve() != file \
            and _under(Path(old.__file__).resolve(), [*_installed_roots(), *_own_packages()]):
        raise UsageError(f"--space {file}: its module name {name!r} is taken by {old.__file__}; rename the space "
                         f"file")
    for key in [k for k in sys.modules if k == name]:
        del sys.modules[key]
    importlib.invalidate_caches()
    return importlib.import_module(name)


def _raised(error: Exception, what: str, file: Path | None) -> UsageError:
    where = f" ({file.name} {line_of(error, file)})" if file is not None else ""
    return UsageError(f"{what} raised {type(error).__name__}{where}: {(str(error).strip().splitlines() or [''])[0]}")


def add_path(folder: str | Path) -> None:
    """``folder`` first on sys.path: the project a space comes from wins over one imported before it."""
    folder = str(folder)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)


def forget_modules(folder: Path) -> None:
    """Drop the modules ``folder`` holds from sys.modules, so the next import reads them from this folder as they
    are now: a notebook re-runs a sweep after editing models.py, or a second project has its own models.py."""
    names = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir()
                                                      if p.is_dir() and (p / "__init__.py").is_file()}
    for key in [k for k in sys.modules if k.split(".", 1)[0] in names]:
        file = getattr(sys.modules[key], "__file__", None)
        if file is None or not _under(Path(file).resolve(), [*_installed_roots(), *_own_packages()]):
            del sys.modules[key]
    importlib.invalidate_caches()


def import_space(ref, builtins: list[str]) -> tuple[ModuleType, str, Path | None]:
    """(module, what tune_app.json records as the space, the folder holding the user's code or None).

    ``ref`` is a built-in name, a ``.py`` path, a W&B sweep ``.yaml``/``.yml`` path, a dotted module name or a module
    object. A sweep file becomes a module (tune_app.wandb_sweep.read_sweep), recorded by its absolute path; its folder
    is the code's folder, as a ``.py`` space's is, so ``trainable: my_fit:fit`` next to it imports."""
    if isinstance(ref, ModuleType):
        return _from_module(ref)
    if not isinstance(ref, str) or not ref:
        raise UsageError(f"space {ref!r}: give a built-in name ({', '.join(builtins)}), a .py file or a module")
    if ref in builtins:
        return importlib.import_module(f"search_spaces.{ref}"), ref, None
    if is_path(ref):
        file = Path(ref).expanduser().resolve()
        if not file.is_file():
            raise UsageError(f"--space {ref}: no such file ({file}); give a .py space file, a W&B sweep .yaml file, "
                             f"a built-in ({', '.join(builtins)}) or a module name")
        if file.suffix in SWEEP_SUFFIXES:
            from tune_app.wandb_sweep import read_sweep

            module = read_sweep(Path(ref).expanduser())
            add_path(file.parent)
            forget_modules(file.parent)
            return module, str(file), file.parent
        if file.suffix != ".py" or not file.stem.isidentifier():
            raise UsageError(f"--space {ref}: a space file is a Python module named like my_space.py, or a W&B "
                             f"sweep file named like sweep.yaml")
        add_path(file.parent)
        forget_modules(file.parent)
        try:
            module = _fresh_import(file.stem, file)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's file: one line with its line number
            raise _raised(e, f"--space {ref}", file) from None
        return module, str(file), file.parent
    add_path(os.getcwd())  # `python -m` puts it there; a notebook or script may not
    try:
        module = _fresh_import(ref)
    except ModuleNotFoundError as e:
        if e.name and (ref == e.name or ref.startswith(e.name + ".")):
            raise UsageError(f"unknown space {ref!r}; known spaces: {', '.join(builtins)} (or a .py file, or a module "
                             f"importable from {os.getcwd()} or PYTHONPATH)") from None
        raise _raised(e, f"--space {ref}", None) from None
    except Exception as e:  # noqa: BLE001
        spec = importlib.util.find_spec(ref.split(".")[0]) if ref.split(".")[0] in sys.modules else None
        raise _raised(e, f"--space {ref}", file_of(sys.modules.get(ref)) or (Path(spec.origin) if spec else None)) \
            from None
    return _from_module(module)


def file_of(module) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def _from_module(module: ModuleType) -> tuple[ModuleType, str, Path | None]:
    name = module.__name__
    if name.startswith("search_spaces."):
        return module, name.split(".", 1)[1], None
    file = file_of(module)
    if name == "__main__" or file is None:
        raise UsageError(f"space module {name} has no file Ray's workers could import; put the space in a .py file "
                         f"and pass its path or module name")
    root = file.parent if file.name != "__init__.py" else file.parent.parent
    for _ in range(name.count(".")):
        root = root.parent
    return module, name, root


def top_module_path(module_name: str) -> Path | None:
    """The file or package folder a top-level module is imported from (None when it cannot be found)."""
    try:
        spec = importlib.util.find_spec(module_name.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    origin = Path(spec.origin).resolve()
    return origin.parent if origin.name == "__init__.py" else origin


def code_to_ship(root: Path | None, refs: list[str]) -> dict:
    """{"working_dir": the space's folder or None, "py_modules": the user's other modules the refs name}."""
    keep_out = [*_installed_roots(), *_own_packages()]
    modules = []
    for ref in refs:
        where = top_module_path(ref.split(":")[0])
        if where is None or _under(where, keep_out) or (root is not None and _under(where, [root])):
            continue
        if str(where) not in modules:
            modules.append(str(where))
    return {"working_dir": str(root) if root is not None and not _under(root, _own_packages()) else None,
            "py_modules": modules}


def shipped_files(folder: Path) -> tuple[int, list[tuple[int, str]], list[str]]:
    """(bytes shipped, the largest (bytes, path) shipped, the large files left behind) for a folder."""
    # Ray's own matcher, with the ignore files Ray reads in that folder, so the count is what Ray ships.
    from tune_app.cluster.ray_private import path_spec

    lines = list(EXCLUDES)
    for name in (".gitignore", ".rayignore"):
        if (folder / name).is_file():
            lines += (folder / name).read_text(errors="replace").splitlines()
    ignore = path_spec(lines)
    total, sizes, large = 0, [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        dirnames[:] = [d for d in dirnames if not ignore.match_file(f"{(rel_dir / d).as_posix()}/")]
        for f in filenames:
            rel = (rel_dir / f).as_posix()
            if ignore.match_file(rel):
                continue
            try:
                size = os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                continue
            if size > LARGE_FILE_MB * 2**20:
                large.append(rel)
                continue
            total += size
            sizes.append((size, rel))
    return total, sorted(sizes, reverse=True)[:3], large


def runtime_env(code: dict) -> dict | None:
    """Ray's runtime_env for the code a sweep ships; refuses a folder over the package limit. None: nothing to ship."""
    if not code or not (code.get("working_dir") or code.get("py_modules")):
        return None
    env: dict = {"excludes": list(EXCLUDES)}
    for key, paths in (("working_dir", [code.get("working_dir")]), ("py_modules", code.get("py_modules") or [])):
        for path in filter(None, paths):
            folder = Path(path)
            if not folder.exists():
                raise UsageError(f"the code this sweep ships ({path}) is gone; restore it, or start a new sweep")
            if folder.is_dir():
                total, biggest, large = shipped_files(folder)
                if total > PACKAGE_LIMIT_MB * 2**20:
                    shown = ", ".join(f"{rel} ({size / 2**20:.0f} MiB)" for size, rel in biggest)
                    raise UsageError(f"{folder} holds {total / 2**20:.0f} MiB to ship to Ray's workers, over the "
                                     f"{PACKAGE_LIMIT_MB} MiB limit (largest: {shown}); move data out of the folder "
                                     f"or name it in {folder / '.rayignore'}")
                env["excludes"] += [f"/{rel}" for rel in large]
        if key == "working_dir" and paths[0]:
            env["working_dir"] = paths[0]
        elif key == "py_modules" and paths:
            env["py_modules"] = list(paths)
    return env


def use_paths(paths) -> None:
    """In a Ray worker: the user's folders that exist on this machine first on sys.path (for a Ray that the caller
    started, without tune_app's runtime_env)."""
    for path in paths:
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)


def local_paths(code: dict | None) -> list[str]:
    """The folders a worker on this machine puts on sys.path when Ray was started without the runtime_env
    (a Ray the caller started): the working_dir and the parents of the py_modules."""
    if not code:
        return []
    paths = [code.get("working_dir")] + [str(Path(p).parent) for p in code.get("py_modules") or []]
    return [p for p in dict.fromkeys(paths) if p]
