"""The README's two commands are the ones CI runs: keep them in step."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quick_start, flags=re.S)


def test_readme_has_main_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main, test = commands
    assert "batmobile-nn " in main
    assert "pytest" in test


def test_ci_runs_the_readme_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in _readme_commands():
        assert command in ci, f"README command not run verbatim by .ci/run: {command}"
