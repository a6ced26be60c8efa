"""docs/cli.md is the command line's reference as the typer app gives it now."""

from __future__ import annotations

from pathlib import Path

import typer.main

from jointseg.cli import app
from jointseg.cli_reference import COMMAND, main, render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_the_generated_reference() -> None:
    assert DOCS.read_text(encoding="utf-8") == render(), (
        f"docs/cli.md is stale: regenerate it with `{COMMAND}` (or `make cli-docs`) in the "
        "checkout's root"
    )


def test_the_reference_lists_every_command_option_and_default() -> None:
    text = render()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## `jointseg {name}`" in text and f"(#jointseg-{name})" in text
        section = text.split(f"## `jointseg {name}`")[1].split("\n## ")[0]
        for param in command.params:
            shown = f"`{param.opts[0]}`" in section or f"`{param.name.upper()}`" in section
            assert shown != param.hidden, (name, param.name)
    adapt = text.split("## `jointseg adapt`")[1].split("\n## ")[0]
    assert "`--dataset`" in adapt and "`--mode`" in adapt and "| `norm+head` |" in adapt
    assert "`--train`" not in adapt and "`--data`" not in adapt  # deprecated, hidden
    assert "| `--tta` / `--no-tta` | flag | `--no-tta` |" in text
    assert "&lt;joint&gt;" in text  # no raw HTML in a table


def test_check_reports_a_stale_file_and_writing_fixes_it(tmp_path: Path) -> None:
    path = tmp_path / "cli.md"
    assert main(["--check", "--out", str(path)]) == 1  # missing
    path.write_text("old\n", encoding="utf-8")
    assert main(["--check", "--out", str(path)]) == 1
    assert main(["--out", str(path)]) == 0
    assert main(["--check", "--out", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == render()
