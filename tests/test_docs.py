"""The README states what the code does: its config table is the generated one."""

from pathlib import Path

from meshtron.tools.config_docs import config_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_table_is_up_to_date():
    assert config_table() in README.read_text(), "regenerate it: python -m meshtron.tools.config_docs"


def test_readme_quickstart_gives_the_two_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -e . && meshtron train" in text
    command = 'pip install -e ".[test,tpu-compile]" && pytest'
    assert command in text and command in ci
