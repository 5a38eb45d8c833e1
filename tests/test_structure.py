"""derm's structure: dependencies run one way, and commands are leaves no module imports.

The import graph is read from the source (every ``import derm...`` and ``from derm... import``,
at module level or inside a function: a lazy import is still a dependency).
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

DERM = Path(__file__).resolve().parents[1] / "derm"


def module_name(path: Path) -> str:
    parts = path.relative_to(DERM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(DERM.rglob("*.py"))}


def imported(name: str, tree: ast.AST) -> set[str]:
    """The derm modules ``name`` imports (``from derm.x import y`` is derm.x.y when that is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("derm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("derm"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in MODULES else node.module)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    return {name: imported(name, ast.parse(path.read_text())) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    unknown = {target for targets in graph.values() for target in targets} - set(MODULES)
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_a_command_module():
    commands = {name for name, path in MODULES.items() if '__name__ == "__main__"' in path.read_text()}
    assert {"derm.train", "derm.evaluate", "derm.leaderboard", "derm.retrain_best", "derm.predict",
            "derm.sweep.__main__", "derm.data.check", "derm.data.synth"} <= commands
    for name, targets in import_graph().items():
        assert not targets & commands, f"{name} imports the command module(s) {sorted(targets & commands)}"


def test_no_module_imports_its_own_package():
    # A module importing its package's __init__ runs in a half-initialised package.
    for name, targets in import_graph().items():
        package = name.rsplit(".", 1)[0]
        if package != "derm" and name != package:
            assert package not in targets, f"{name} imports its own package {package}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # In dependency order, each in its own interpreter would be slow; one interpreter per
    # top-level area keeps the check honest about import-time side effects.
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *sorted(MODULES)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


def test_loading_a_search_space_imports_neither_torch_nor_ray():
    code = ("import sys; from derm.search_space import load_search_space; import derm.sweep; "
            "load_search_space('search_spaces/unet.yaml'); "
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=DERM.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_folder_names_say_where_trials_are_chosen_and_the_leaderboard_is_built():
    sweep = importlib.import_module("derm.sweep")
    assert "tuner" in sweep.__doc__ and "which trials run" in sweep.__doc__
    assert "board" in sweep.__doc__ and "leaderboard is built" in sweep.__doc__
    assert (DERM / "sweep" / "tuner.py").is_file() and (DERM / "sweep" / "board.py").is_file()
