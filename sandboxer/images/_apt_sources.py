"""The Debian archives this host's apt uses, as one-line sources for an image build.

A build must fetch from the archive the host already reaches (often the only one it
reaches), so the mirrors come from the host's own sources: `/etc/apt/sources.list` and
`sources.list.d/*.list` (one-line format) and `*.sources` (deb822).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

APT_DIRECTORY = Path("/etc/apt")


def debian_mirrors(suite: str, directory: Path = APT_DIRECTORY) -> list[str]:
    """`deb URI SUITE main` for each archive the host has for `suite` and its updates.

    Only the suite and its `-updates`/`-security` companions are taken (not backports,
    nor third-party archives), with `main` only, so the image does not depend on what
    else the host enables. Empty if the host has none of them.
    """
    wanted = (suite, f"{suite}-updates", f"{suite}-security", f"{suite}/updates")
    mirrors: list[str] = []
    for uri, entry_suite in _entries(directory):
        line = f"deb {uri} {entry_suite} main"
        if entry_suite in wanted and line not in mirrors:
            mirrors.append(line)
    return mirrors


def _files(directory: Path) -> Iterator[Path]:
    yield directory / "sources.list"
    parts = directory / "sources.list.d"
    if parts.is_dir():
        yield from sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))


def _entries(directory: Path) -> Iterator[tuple[str, str]]:
    """(URI, suite) of each enabled binary (`deb`) source."""
    for path in _files(directory):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        parse = _deb822 if path.suffix == ".sources" else _one_line
        yield from parse(text)


# `deb [options] URI SUITE [COMPONENT...]`
_ONE_LINE = re.compile(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def _one_line(text: str) -> Iterator[tuple[str, str]]:
    for raw in text.splitlines():
        match = _ONE_LINE.match(raw.split("#", 1)[0].strip())
        if match:
            yield match.group(1), match.group(2)


def _deb822(text: str) -> Iterator[tuple[str, str]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and key:  # a continuation line
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield uri, suite
