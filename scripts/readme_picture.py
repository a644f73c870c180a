"""Render the README's picture: `ropelime explain --demo`'s terminal view (heat map and top features) as an SVG.

    python scripts/readme_picture.py docs/demo.svg
"""

from __future__ import annotations

import io
import json
import sys
from importlib.resources import files

from rich.console import Console

import ropelime
from ropelime.render import print_explanation


def main(out: str) -> None:
    demo = json.loads(files("ropelime.examples").joinpath("demo.json").read_text(encoding="utf-8"))
    result = ropelime.explain(demo["prompt"], demo["response"], explain=demo["explain"])
    console = Console(record=True, width=110, file=io.StringIO())  # recorded, not shown
    print_explanation(result, console, k=5)
    console.save_svg(out, title="ropelime explain --demo")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/demo.svg")
