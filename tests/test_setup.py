"""The set-up commands (`make demo`, `make test`): which environment they install into, and what each installs.
They are run for real from a clean clone by CI (.ci/run: `make test`); these check the choices made on the way."""

import os
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def dry_run(target: str, **env) -> str:
    """What `make TARGET` would run (make -n), with the environment's VIRTUAL_ENV set or not."""
    environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | env
    return subprocess.run(["make", "-n", "-s", "-C", str(ROOT), target], env=environ, capture_output=True,
                          text=True, check=True).stdout


def test_without_an_active_environment_make_uses_the_projects_venv():
    commands = dry_run("demo")
    assert f"{ROOT}/.venv/bin/python -m autoresearch demo" in commands


def test_with_an_active_environment_make_uses_it(tmp_path):
    commands = dry_run("demo", VIRTUAL_ENV=str(tmp_path / "env"))
    assert f"{tmp_path}/env/bin/python -m autoresearch demo" in commands and ".venv" not in commands


def test_the_demo_installs_the_core_only_and_the_tests_add_their_extra_and_a_browser():
    demo, test = dry_run("demo"), dry_run("test")
    assert "-e ." in demo and ".[test]" not in demo and "chromium" not in demo
    assert '-e ".[test]"' in test and "tests/chromium.py --install" in test and "-m pytest" in test


def test_the_demo_needs_none_of_the_heavy_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for heavy in ("ray", "claude-agent-sdk", "playwright", "pyarrow", "hypothesis", "mlflow", "wandb"):
        assert heavy not in core
        assert any(heavy in requirement for requirement in project["optional-dependencies"]["test"])


def test_ci_runs_the_same_command_with_no_environment_active():
    script = (ROOT / ".ci" / "run").read_text()
    assert "unset VIRTUAL_ENV" in script and script.strip().endswith("make test")
