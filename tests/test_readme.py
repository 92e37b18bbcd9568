"""README.md opens with two commands (run the main job; run the tests) and CI runs exactly the second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def opening_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    return [line for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands() -> None:
    main_job, tests = opening_commands()
    assert main_job.endswith("bench fit") and "pip install -e ." in main_job
    assert tests.endswith("pytest -q") and ".[test]" in tests


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [opening_commands()[1]]
