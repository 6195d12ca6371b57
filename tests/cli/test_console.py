"""etad_cli/console.py: text read from a file is printed as text, on a terminal too."""

from __future__ import annotations

import io


def test_the_consoles_print_file_text_as_text_even_on_a_terminal():
    from rich.table import Table

    from etad_cli.console import TextConsole

    out = io.StringIO()
    console = TextConsole(file=out, force_terminal=True, color_system="truecolor", width=200)
    table = Table(title="[bold]title")
    table.add_row(
        "[link=https://evil.example]click[/link]", "\x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\"
    )
    console.print(table)
    console.print("[red]video[/red] id")
    text = out.getvalue()
    assert "[link=https://evil.example]click[/link]" in text and "[red]video[/red] id" in text
    assert "]8;;https" not in text.replace("\\x1b]8;;https", "")  # no OSC 8 hyperlink reaches the terminal
    assert "\\x1b]8;;https://evil.example" in text  # shown as an escape
