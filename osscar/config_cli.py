"""Run-config fields that describe their own command-line option; the parser is generated from them.

A run config (a frozen dataclass) declares each user-facing field with :func:`option`: its section,
help, and, where the field's type does not say it, the flag, the parser of one command-line value,
and the conversion of the parsed value into the field's. :func:`add_config_options` then adds one
argparse argument per field to the section's argument group (``--help`` lists them by section),
:func:`config_values` reads the parsed namespace back into field values, and :func:`config_flags`
maps field names to the flags a user typed (for error messages). Adding an option is one field.

Torch-free: the CLIs build their parsers from these declarations without loading a model library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

SECTIONS = ("model", "target", "calibration", "evaluation", "execution", "output")
_KEY = "option"
UNSET: Any = object()  # an Option attribute not given (MISSING would make the dataclass field required)


@dataclass(frozen=True)
class Option:
    """The command-line side of one config field (see :func:`option`)."""

    section: str
    help: str
    flag: str | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    repeat: bool = False
    switch: bool = False
    cli_default: Any = UNSET
    to_field: Callable[[Any], Any] | None = None


def option(default: Any = MISSING, *, section: str, help: str, default_factory: Any = MISSING,
           **cli: Any) -> Any:
    """A dataclass field carrying its command-line :class:`Option`.

    ``cli`` keys: ``flag`` (default ``--field-name``), ``choices``, ``metavar``, ``parse`` (one value's
    parser; default: the field's type, ``int``/``float``/``str``), ``repeat`` (the flag may be given
    several times: a list), ``switch`` (a flag without value: True when given; for a field whose
    default is True, False when given, under a ``flag`` such as ``--no-latency``), ``cli_default`` (the
    value when the flag is absent, if not the field's default) and ``to_field`` (parsed value → field value).
    """
    if section not in SECTIONS:
        raise ValueError(f"option section {section!r} is unknown; allowed: {', '.join(SECTIONS)}")
    meta = {_KEY: Option(section=section, help=help, **cli)}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def parse_key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, value), the value read as JSON when it is JSON (else the string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def parse_point(text: str) -> tuple[int, int]:
    """``BATCHxSEQLEN`` (``1x512``) → (batch, seqlen)."""
    try:
        b, s = text.lower().split("x")
        return int(b), int(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected BATCHxSEQLEN like 1x512, got {text!r}") from e


def parse_ints(text: str) -> list[int]:
    """``0,3,5`` → [0, 3, 5]; empty → []."""
    try:
        return [int(i) for i in text.split(",") if i.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def parse_names(text: str) -> list[str]:
    """``a,b`` → ["a", "b"]; empty → []."""
    return [t for t in text.split(",") if t]


def _options(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def flag_of(f: dataclasses.Field, opt: Option) -> str:
    return opt.flag or "--" + f.name.replace("_", "-")


def _scalar_type(hint: Any, name: str) -> Callable[[str], Any]:
    """int / float / str from a field type such as ``int``, ``float | None``; anything else needs ``parse``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    if args and args[0] in (int, float, str):
        return args[0]
    raise TypeError(f"config field {name!r} of type {hint} needs option(parse=...) to read a command-line value")


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def add_config_options(parser: argparse.ArgumentParser, cls: type) -> dict[str, argparse._ArgumentGroup]:
    """Add every :func:`option` field of ``cls`` to ``parser``, one argument group per section (returned,
    so a CLI can add its own, non-config options beside them). ``dest`` is the field name."""
    groups = {s: parser.add_argument_group(s) for s in SECTIONS}
    hints = typing.get_type_hints(cls)
    for f, opt in _options(cls):
        kw: dict[str, Any] = {"dest": f.name, "help": opt.help}
        default = _field_default(f) if opt.cli_default is UNSET else opt.cli_default
        if opt.switch:
            kw.update(action="store_false" if default else "store_true", default=bool(default))  # True: a --no-… flag
        else:
            kw.update(type=opt.parse or _scalar_type(hints[f.name], f.name), default=default)
            if opt.repeat:
                kw["action"] = "append"
            if opt.choices is not None:
                kw["choices"] = list(opt.choices)
            if opt.choices is None:  # argparse's own metavar would spell the dest (the field name), not the flag
                kw["metavar"] = opt.metavar or flag_of(f, opt).lstrip("-").replace("-", "_").upper()
        groups[opt.section].add_argument(flag_of(f, opt), **kw)
    return groups


def config_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} of every :func:`option` field of ``cls`` from a namespace parsed by a parser built
    with :func:`add_config_options` (``to_field`` applied)."""
    out = {}
    for f, opt in _options(cls):
        value = getattr(args, f.name)
        out[f.name] = opt.to_field(value) if opt.to_field is not None else value
    return out


def config_flags(cls: type) -> dict[str, str]:
    """{field name: flag} of every :func:`option` field of ``cls``."""
    return {f.name: flag_of(f, opt) for f, opt in _options(cls)}
