"""`run [OPTIONS] IMAGE [COMMAND...]` as `docker run` reads it, turned into one canonical form.

Docker stops reading options at the first word that is neither an option nor an option's
value: that word is the image, everything after it the command, even words starting with
`-`. argparse cannot say where that first word was (its handling of `--` also differs
between Python versions), so `canonical` finds it here and rewrites the words as
`OPTIONS [--image IMAGE] -- COMMAND...`, which every Python's argparse reads the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from ._completion_model import subparsers

# What follows the command name when the image is given as `--image`, or not at all.
IMAGE_OPTION = "--image"


def value_options(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Each option string of `parser`, and whether it takes a value."""
    return {
        option: action.nargs != 0 for action in parser._actions for option in action.option_strings
    }


def _long_option(name: str, options: Mapping[str, bool]) -> str:
    """`name`, or the one option it abbreviates (argparse accepts unique prefixes)."""
    if name in options:
        return name
    matches = [option for option in options if option.startswith(name)]
    return matches[0] if len(matches) == 1 else name


def _option_words(word: str, options: Mapping[str, bool]) -> tuple[bool, str]:
    """(whether the option `word` needs the next word as its value, its long name)."""
    if word.startswith("--"):
        written, has_value, _ = word.partition("=")
        name = _long_option(written, options)
        return options.get(name, False) and not has_value, name
    # A cluster of short flags (-it, -dP, -eA=1): the first one taking a value takes
    # the rest of the word, or the next word when nothing is left.
    for index, letter in enumerate(word[1:], start=1):
        if options.get("-" + letter, False):
            return index == len(word) - 1, word
    return False, word


def canonical(words: Sequence[str], options: Mapping[str, bool]) -> list[str]:
    """`words` (what follows `run`) as `OPTIONS [--image IMAGE] -- COMMAND...`."""
    result: list[str] = []
    image_given = False
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return [*result, "--", *words[index + 1 :]]
        if not word.startswith("-") or word == "-":
            if image_given:  # `--image I` named it: every word from here is the command
                return [*result, "--", *words[index:]]
            command = list(words[index + 1 :])
            if command[:1] == ["--"]:  # `run IMAGE -- COMMAND` reads as intended
                command = command[1:]
            return [*result, IMAGE_OPTION, word, "--", *command]
        needs_value, name = _option_words(word, options)
        image_given = image_given or (name == IMAGE_OPTION)
        result.append(word)
        if needs_value and index + 1 < len(words):
            result.append(words[index + 1])
            index += 1
        index += 1
    return [*result, "--"]


def run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `run` command's parser inside the top-level `parser`."""
    return subparsers(parser)["run"]


def canonical_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The whole command line with a `run` command's words in their canonical form."""
    for index, word in enumerate(argv):
        if not word.startswith("-"):  # the command's name: the top level takes no values
            if word != "run":
                break
            options = value_options(run_parser(parser))
            return [*argv[: index + 1], *canonical(argv[index + 1 :], options)]
    return list(argv)


def command_words(raw: Sequence[str]) -> list[str]:
    """The command from the canonical form's remainder (argparse may keep the `--`)."""
    return list(raw[1:]) if raw[:1] == ["--"] else list(raw)
