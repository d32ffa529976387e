"""Shared by the scripts that build a committed data file: write it, or (--check) fail if it differs."""

from __future__ import annotations

import argparse
from pathlib import Path


def write_or_check(description: str, out: Path, build_text) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if the committed file is not what this builds")
    args = parser.parse_args()
    text = build_text()
    if args.check:
        same = out.exists() and out.read_text(encoding="utf-8") == text
        print(f"{out.name} matches what the script builds" if same else f"{out} differs: rerun without --check")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0
