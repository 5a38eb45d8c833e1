"""README is the truth: CI runs its commands verbatim and every module it names exists."""

import importlib
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_commands_verbatim():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd ", "rm "))]
    assert len(ci_lines) == 2
    for line in ci_lines:
        assert line in README, f"{line!r} is not in README.md"
    assert "pytest" in ci_lines[-1]


def command_module(name: str):
    """What ``python -m name`` runs: the module, or a package's ``__main__``."""
    module = importlib.import_module(name)
    if hasattr(module, "__path__"):
        module = importlib.import_module(f"{name}.__main__")
    return module


def test_every_command_in_the_readme_is_a_module_with_a_main():
    modules = set(re.findall(r"python -m (derm(?:\.\w+)+)", README))
    assert {"derm.sweep", "derm.train", "derm.data.check", "derm.data.synth", "derm.evaluate"} <= modules
    for name in modules:
        assert callable(getattr(command_module(name), "main", None)), name


def documented_commands(module: str) -> list[tuple[str, list[str]]]:
    """(file, key=value overrides) of each `python -m module FILE ...` in the README's and docs' code blocks."""
    commands = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        # Fences alternate open/close: the odd pieces are the code blocks (any language).
        for block in page.read_text().split("```")[1::2]:
            for match in re.finditer(rf"python -m {re.escape(module)} ([^\n#&]*)", block):
                words = shlex.split(match.group(1))
                if words and words[0].endswith(".yaml"):
                    commands.append((words[0], [w for w in words[1:] if "=" in w and not w.startswith("-")]))
    return commands


def test_configs_and_overrides_the_docs_show_for_derm_train_validate():
    from derm.config import load_config

    commands = documented_commands("derm.train")
    assert any(overrides for _, overrides in commands)
    for path, overrides in commands:
        load_config(ROOT / path, overrides)


def test_search_spaces_and_overrides_the_docs_show_for_derm_sweep_load():
    from derm.search_space import load_search_space

    commands = documented_commands("derm.sweep")
    assert len(commands) >= 8 and any(overrides for _, overrides in commands)
    for path, overrides in commands:
        load_search_space(ROOT / path, overrides)


def test_the_readme_search_space_example_is_a_valid_search_space(tmp_path):
    from derm.search_space import load_search_space

    (example,) = [block for block in re.findall(r"```yaml\n(.*?)```", README, re.S) if "sweep:" in block]
    (tmp_path / "example.yaml").write_text(example)
    space = load_search_space(tmp_path / "example.yaml")
    assert {"model.encoder", "loss.focal_gamma", "optim.momentum"} <= set(space.searched_keys)


def test_every_option_the_readme_shows_exists():
    import contextlib
    import io

    for name in set(re.findall(r"python -m (derm(?:\.\w+)+)", README)):
        module = command_module(name)
        shown = {option for line in README.splitlines() if f"python -m {name} " in line
                 for option in re.findall(r"(--[a-z][\w-]*)", line)}
        if not shown:
            continue
        with contextlib.redirect_stdout(io.StringIO()) as usage, contextlib.suppress(SystemExit):
            module.main(["--help"])
        for option in shown:
            assert option in usage.getvalue(), f"python -m {name} does not take {option}"


def test_the_readme_warns_that_resume_and_the_leaderboard_unpickle_ray_state():
    # Ray Tune stores its experiment state with pickle; opening a sweep folder runs it.
    paragraph = next(p for p in README.split("\n\n") if "pickle" in p)
    assert "--resume" in paragraph and "derm.leaderboard" in paragraph and "trust" in paragraph
    import contextlib
    import io

    from derm.sweep.__main__ import parse_args

    with contextlib.redirect_stdout(io.StringIO()) as usage, contextlib.suppress(SystemExit):
        parse_args(["--help"])
    assert "trust" in usage.getvalue()  # --resume's own help says it too
