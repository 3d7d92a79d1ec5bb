"""The config fields described for people: ``python -m edsr_jax.train --help`` lists every field
of ``config.base_config`` with its default and its help, and ``--print-config`` prints a run's
resolved config.

The help of a field is the comment beside its line in ``base_config`` (or the comment lines
right above it), read from the source: the comments there are the one description, so the
help and the code cannot drift apart.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import textwrap
import tokenize

from edsr_jax.training import config as config_lib


def field_comments() -> dict[str, str]:
    """``{"data.val_spec": "degradation of the validation LR; ...", ...}`` in the order of
    ``base_config``'s source: each field assigned there (``c.FIELD = VALUE``) with the comment
    on its line, else the comment lines just above it joined ("" when it has neither)."""
    source = textwrap.dedent(inspect.getsource(config_lib.base_config))
    comments: dict[int, str] = {}  # line number -> comment text
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    out: dict[str, str] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        head = line.split("#", 1)[0].strip()
        if not head.startswith("c.") or "=" not in head or "ConfigDict()" in head:
            continue
        field = head.split("=", 1)[0].strip()[2:]
        if number in comments:  # a comment on the assignment's own line
            out[field] = comments[number]
            continue
        above = []
        n = number - 1
        while n in comments and n not in code_lines:
            above.insert(0, comments[n])
            n -= 1
        out[field] = " ".join(above)
    return out


def summary(comment: str) -> str:
    """The first sentence of a comment: up to a period followed by a capital or a quote
    (``e.g. (2, 3, 4)`` does not end one), without that period."""
    match = re.search(r"\.\s+(?=[A-Z\"])", comment)
    return (comment[:match.start()] if match else comment).rstrip(".")


def field_table() -> list[tuple[str, object, str]]:
    """``[(field, default, help)]`` for every field of ``base_config()`` in its source order,
    help the first sentence of the field's comment: ``("optim.lr", 0.0001, "Adam learning
    rate (the peak of the cosine schedule)")``."""
    comments = field_comments()
    defaults = config_lib.flatten(config_lib.base_config().to_dict())
    order = [f for f in comments if f in defaults] + [f for f in defaults if f not in comments]
    return [(field, defaults[field], summary(comments.get(field, ""))) for field in order]


def _shown(value) -> str:
    """A default as it is written on the command line: ``2``, ``0.0001``, ``''``, ``()``."""
    if isinstance(value, list):
        return repr(tuple(value))
    return repr(value)


def fields_help() -> str:
    """The text ``train --help`` ends with: one line per config field, ``name  default  help``."""
    rows = [(f, _shown(d), h) for f, d, h in field_table()]
    name_w = max(len(f) for f, _, _ in rows) + 2
    value_w = max(len(v) for _, v, _ in rows) + 2
    out = ["config fields (--config.FIELD=VALUE; the defaults of edsr_jax.training.config.base_config,",
           "which each experiments/*.py file changes in part: --print-config shows what a run uses):"]
    out += [f"  {field:<{name_w}}{value:<{value_w}}{text}".rstrip() for field, value, text in rows]
    return "\n".join(out)


def config_text(config) -> str:
    """A run's config as indented JSON (what ``--print-config`` prints; the same fields the
    checkpoints store as the experiment)."""
    return json.dumps(config.to_dict(), indent=2, default=str)
