"""The import structure of lipsync/, pipelines/ and serve/: no circles, the library never reaches up
into the Ray layers, and the Ray subcommands reach ``lipsync`` through entry points only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lipsync", "pipelines", "serve")
RAY_LAYERS = ("pipelines", "serve")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of our own modules in ``path``.
    Module level means run on import: the module body, class bodies, try/if blocks; imports in
    functions are listed as not module level; ``if TYPE_CHECKING:`` blocks are skipped. ``from a
    import b`` counts as importing ``a.b`` when that is a module, else ``a`` (its ``__init__``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]

    def walk(node, module_level: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    while target and target not in modules:  # lipsync.x.Name -> lipsync.x
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        found.append((target, child.lineno, module_level))
            else:
                walk(child, module_level)

    walk(ast.parse(path.read_text(), str(path)), True)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def edges():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _report(cycles, edges, module_level_only):
    lines = []
    for comp in cycles:
        lines.append(" <-> ".join(comp))
        lines += sorted({f"    {a} imports {b} (line {line}{'' if top else ', in a function'})"
                         for a in comp for b, line, top in edges[a] if b in comp and (top or not module_level_only)})
    return "\n".join(lines)


def test_no_import_cycles_at_module_level(edges):
    graph = {name: {b for b, _, top in found if top} for name, found in edges.items()}
    cycles = _cycles(graph)
    assert not cycles, "module-level import cycles:\n" + _report(cycles, edges, True)


def test_no_import_cycles_counting_function_level_imports(edges):
    """A function-level import breaks a circle at start-up but not in the design: the modules still
    cannot be understood (or moved) one without the other."""
    graph = {name: {b for b, _, _ in found} for name, found in edges.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles through function-level imports:\n" + _report(cycles, edges, False)


def test_library_never_imports_the_ray_layers(edges):
    bad = [f"{name} imports {b} (line {line})" for name, found in edges.items() if name.split(".")[0] == "lipsync"
           for b, line, _ in found if b.split(".")[0] in RAY_LAYERS]
    assert not bad, bad


def test_ray_subcommands_are_entry_points():
    from importlib.metadata import entry_points

    from lipsync.cli import COMMAND_GROUP

    eps = {ep.name: ep.value for ep in entry_points(group=COMMAND_GROUP)}
    assert eps == {"dub": "pipelines.cli:add_parsers", "serve": "serve.cli:add_parsers",
                   "preprocess": "pipelines.preprocess_cli:add_parsers",
                   "train": "pipelines.train_cli:add_parsers"}, "reinstall: pip install --no-deps -e ."


def test_help_lists_the_ray_subcommands_without_importing_ray_or_torch():
    code = ("import sys\nfrom lipsync.cli import build_parser\np = build_parser()\n"
            "sub = next(a for a in p._actions if a.dest == 'command')\nprint(' '.join(sub.choices))\n"
            "print(' '.join(m for m in ('ray', 'torch', 'diffusers', 'cv2', 'mediapipe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    commands, heavy = (out.splitlines() + [""])[:2]
    commands = commands.split()
    assert commands[:5] == ["generate", "dub", "serve", "preprocess", "train"], commands
    assert not heavy.strip(), f"`lipsync --help` imports {heavy}"


def test_a_broken_subcommand_plugin_is_a_one_line_error(monkeypatch, capsys):
    import importlib.metadata as md

    from lipsync import cli

    real = md.entry_points

    def entry_points(group=None):
        kept = [ep for ep in real(group=group) if ep.name != "serve"]
        return md.EntryPoints(kept + [md.EntryPoint("serve", "no_such_module.cli:add_parsers", group)])

    monkeypatch.setattr(md, "entry_points", entry_points)
    monkeypatch.delenv("LIPSYNC_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "unavailable" in capsys.readouterr().out  # listed, with the reason
    assert cli.main(["serve", "--port", "8000"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_module" in err and err.startswith("error: lipsync serve"), err
    assert "Traceback" not in err
    assert cli.main(["tts", "--list"]) == 0  # the other commands still work
    monkeypatch.setenv("LIPSYNC_DEBUG", "1")
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()
