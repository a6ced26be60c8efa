"""The command-line reference, ``docs/cli.md``, generated from the typer app of :mod:`jointseg.cli`.

``python -m jointseg.cli_reference`` (in the checkout's root) rewrites ``docs/cli.md``;
``--check`` exits with status 1 when the file differs from what the app gives now. Every
command, its arguments and its options (hidden ones left out) with their help and defaults.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

import typer.main

from jointseg.cli import app
from jointseg.utils.atomic import atomic_write_text

REFERENCE = Path("docs") / "cli.md"
COMMAND = "python -m jointseg.cli_reference"
PROGRAM = "jointseg"
TYPES = {Path: "PATH", str: "TEXT", int: "INTEGER", float: "NUMBER"}


def _paragraphs(text: str | None) -> str:
    """A docstring as Markdown: its paragraphs, each on one line."""
    blocks = inspect.cleandoc(text or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in b.splitlines()) for b in blocks)


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell (no pipes, no HTML tags, one line)."""
    escaped = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return escaped.replace("\n", " ")


def _annotation(param: Any) -> Any:
    """The parameter's Python type, without ``| None``."""
    annotation = param.type_descriptor.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _type(param: Any) -> str:
    annotation = _annotation(param)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return f"{TYPES.get(item, 'TEXT')}, repeatable"
    return TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


def _default(param: Any) -> str:
    if param.required:
        return "required"
    if getattr(param, "is_bool_flag", False):
        names = param.opts if param.default else param.secondary_opts
        return f"`{names[0]}`" if names else str(param.default).lower()
    if param.default is None or param.default == []:
        return ""
    return f"`{param.default}`"


def _option_names(param: Any) -> str:
    names = ", ".join(f"`{n}`" for n in param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(f"`{n}`" for n in param.secondary_opts)
    return names


def _usage(name: str, arguments: list[Any]) -> str:
    words = [PROGRAM, name, "[OPTIONS]"]
    for argument in arguments:
        word = argument.name.upper()
        words.append(f"{word}..." if argument.nargs == -1 else word)
    return " ".join(words)


def _command(name: str, command: Any) -> list[str]:
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    arguments = [p for p in params if isinstance(p, typer.core.TyperArgument)]
    options = [p for p in params if isinstance(p, typer.core.TyperOption)]
    lines = [f"## `{PROGRAM} {name}`", "", "```", _usage(name, arguments), "```", ""]
    lines += [_paragraphs(command.help), ""]
    if arguments:
        lines += ["| argument | type | default | |", "|---|---|---|---|"]
        lines += [
            f"| `{a.name.upper()}` | {_type(a)} | {_default(a)} | {_cell(a.help or '')} |"
            for a in arguments
        ]
        lines.append("")
    if options:
        lines += ["| option | type | default | |", "|---|---|---|---|"]
        for option in options:
            kind = "flag" if getattr(option, "is_bool_flag", False) else _type(option)
            lines.append(
                f"| {_option_names(option)} | {kind} | {_default(option)} "
                f"| {_cell(option.help or '')} |"
            )
        lines.append("")
    return lines


def render() -> str:
    """The reference as Markdown: an index of the commands, then one section per command in
    the order the app declares them."""
    group = typer.main.get_command(app)
    commands = {n: c for n, c in group.commands.items() if not getattr(c, "hidden", False)}
    lines = [
        "# Command-line reference",
        "",
        f"Generated from the `{PROGRAM}` command line by `{COMMAND}`: do not edit it by hand "
        f"(a test fails when it is stale). `{PROGRAM} COMMAND --help` prints the same.",
        "",
        _paragraphs(group.help),
        "",
        "| command | |",
        "|---|---|",
    ]
    for name, command in commands.items():
        summary = _paragraphs(command.help).split("\n")[0]
        lines.append(f"| [`{name}`](#{PROGRAM}-{name}) | {_cell(summary)} |")
    lines.append("")
    for name, command in commands.items():
        lines += _command(name, command)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the reference (default ``docs/cli.md``), or with ``--check`` compare it."""
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Write docs/cli.md, the command-line reference, from the app."
    )
    parser.add_argument("--out", type=Path, default=REFERENCE, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            sys.stderr.write(f"{args.out} is stale: regenerate it with `{COMMAND}`\n")
            return 1
        return 0
    atomic_write_text(args.out, text)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
