"""Print the one-line command between README.md's <!-- ci:NAME --> and <!-- /ci:NAME --> markers.

.ci/run runs what this prints, so the README's setup commands and CI cannot drift apart;
tests/test_readme.py checks the blocks. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def command(name: str, text: str | None = None) -> str:
    """The single line of the fenced block between the markers of ``name``; SystemExit if it is not exactly one."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = re.findall(rf"<!-- ci:{re.escape(name)} -->\n```[a-z]*\n(.*?)```\n<!-- /ci:{re.escape(name)} -->", text, re.S)
    lines = [line for line in found[0].splitlines() if line.strip()] if len(found) == 1 else []
    if len(lines) != 1:
        raise SystemExit(f"README.md: expected one marked block 'ci:{name}' holding one command line")
    return lines[0].strip()


if __name__ == "__main__":
    print(command(sys.argv[1]))
