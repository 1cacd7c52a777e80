"""The package's layers: imports only go down (scripts > method > LM engine > files; the market beside the
method, never imported by it), and no module imports another that imports it back."""

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = {"girl.template", "girl.data", "girl.losses", "girl.reward", "girl.ppo", "girl.evaluation", "girl.training",
          "girl.recommend", "girl.ranking", "girl.lexical"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "girl").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path) -> set[str]:
    """The girl modules a file imports, wherever in the file (an import inside a function counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from girl import market` names a module
    known = modules()
    return {m for m in found if m in known}


def test_no_import_cycle():
    graph = {m: imports_of(p) - {m} for m, p in modules().items()}
    # a package's __init__ re-exporting its own modules is not a cycle through them
    graph = {m: {d for d in deps if not (d.startswith(m + ".") and m in ("girl.market", "girl.lm", "girl"))}
             for m, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(m, stack):
        state[m] = "open"
        for d in graph[m]:
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_imports_only_go_down():
    for m, path in modules().items():
        deps = imports_of(path)
        if m == "girl.lm.model":
            assert deps == set(), f"the model file is pure architecture, it imports {deps}"
        if m.startswith("girl.lm") or m == "girl.files":
            assert all(d.startswith("girl.lm") or d == "girl.files" for d in deps), f"{m} imports {deps}"
        if m.startswith("girl.market"):
            assert all(d.startswith("girl.market") or d == "girl.files" for d in deps), f"{m} imports {deps}"
        if m in METHOD:
            assert not any(d.startswith(("girl.market", "girl.cli")) for d in deps), f"{m} imports {deps}"


def test_each_module_imports_alone():
    """In a fresh interpreter, each module imports by itself; the model pulls in no other module of the
    package, and no module of the method pulls in the market, even indirectly."""
    code = (
        "import importlib, json, sys\n"
        "out = {}\n"
        f"for m in {sorted(m for m in modules() if not m.endswith('__main__'))!r}:\n"
        "    for k in [k for k in sys.modules if k == 'girl' or k.startswith('girl.')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module(m)\n"
        "    out[m] = sorted(k for k in sys.modules if k.startswith('girl.'))\n"
        "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    assert set(loaded["girl.lm.model"]) == {"girl.lm", "girl.lm.model"}
    for m in METHOD:
        assert not any(k.startswith("girl.market") for k in loaded[m]), f"{m} pulls in the market: {loaded[m]}"


def test_nothing_read_from_disk_is_ever_executed():
    """No pickle is loaded and no text is run as code, anywhere in the package or the scripts: no pickle-family
    import, no eval/exec/compile, and every torch.load (there is none today) with weights_only=True."""
    files = sorted((ROOT / "girl").rglob("*.py")) + sorted(ROOT.glob("*.py"))
    assert len(files) > 20
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"pickle", "dill", "marshal", "shelve", "joblib"} & {str(n).split(".")[0] for n in names}, path
            if isinstance(node, ast.Call):
                f = node.func
                assert not (isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile")), (path, node.lineno)
                if isinstance(f, ast.Attribute) and f.attr == "load" and getattr(f.value, "id", None) == "torch":
                    weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                    assert weights_only and getattr(weights_only[0].value, "value", None) is True, (path, node.lineno)


def test_stages_import_only_the_run_time_packages():
    """torch, tokenizers, safetensors and numpy, besides the standard library: scikit-learn (the tests' reference)
    and matplotlib (bench/rec_curve.py's figure) are never imported by the package or a stage script."""
    allowed = {"torch", "tokenizers", "safetensors", "numpy", "girl"} | set(sys.stdlib_module_names)
    for path in sorted((ROOT / "girl").rglob("*.py")) + sorted(ROOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_the_installed_package_holds_every_module(tmp_path):
    """`pip install .` installs what `import girl...` needs: the wheel built from pyproject.toml holds every
    module of girl/ (it once held girl/*.py alone, without girl.lm and girl.market)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    shutil.copytree(ROOT / "girl", src / "girl", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist"],
                   cwd=src, check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("girl-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    assert shipped == {p.relative_to(ROOT).as_posix() for p in modules().values()}
