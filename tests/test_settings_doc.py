"""docs/settings.md documents every SANDBOXER_* variable the code, scripts and suites read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sandboxer", "backends", "scripts", "integration")
# A whole name: not a prefix built on (f"SANDBOXER_INCUS_{k}") or a wildcard ("..._*").
VARIABLE = re.compile(r"SANDBOXER_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*[{*])")


def _variables_in(paths: list[Path]) -> set[str]:
    return {name for p in paths for name in VARIABLE.findall(p.read_text("utf-8", "replace"))}


def test_every_setting_is_documented() -> None:
    files = [p for d in SOURCES for p in (ROOT / d).rglob("*") if p.is_file()]
    used = _variables_in([p for p in files if p.suffix in ("", ".py", ".sh", ".md")])
    assert used, "found no settings: wrong ROOT?"
    assert used - _variables_in([ROOT / "docs" / "settings.md"]) == set()
