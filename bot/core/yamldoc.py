"""Reading an operator's YAML file (settings, routing) with a one-line error on bad syntax.

PyYAML's own message spans several lines (the context, a caret drawing, the problem); an
operator needs the file, the line, the column, what the parser found and what to do.
"""

from __future__ import annotations

from typing import Any

import yaml

from bot.core.errors import ConfigurationError

SYNTAX_FIX = (
    "fix the YAML there: indent with spaces (not tabs) and consistently, put a space after "
    "each `key:` and quote values that contain ': ' or start with a special character"
)


def describe_yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """One line: `source line L, column C: problem; fix`, from PyYAML's exception."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if exc.context and exc.problem and exc.context_mark is not None:
            problem = (
                f"{exc.problem} ({exc.context} that starts on line {exc.context_mark.line + 1})"
            )
        return f"{source}{where}: invalid YAML: {problem}; {SYNTAX_FIX}"
    detail = " ".join(str(exc).split())
    return f"{source}: invalid YAML: {detail}; {SYNTAX_FIX}"


def load_yaml(text: str, source: str) -> Any:
    """Parse `text` (read from `source`) with the safe loader.

    Raises:
        ConfigurationError: bad syntax, in one line with the line, column and fix.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(describe_yaml_error(exc, source)) from None
