"""The ``rnope`` command: subcommands registered from ``rnope.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
and imports heavy libraries inside ``run`` so ``rnope --help`` stays fast. Every user mistake
raises ``ValueError`` (or a subclass): ``main`` prints one line ``rnope: error: ...`` and exits 2;
``--debug`` shows the traceback instead.

Parsing uses the standard library's ``argparse``: its exit code 2 on bad usage is the convention
the whole CLI follows, and dotted ``--model.FIELD VALUE`` overrides are parsed by
:func:`model_overrides` into typed ``ModelConfig`` fields.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "rnope.commands.generate",
    "rnope.commands.info",
    "rnope.commands.export",
    "rnope.commands.import_hf",
    "rnope.commands.train",
    "rnope.commands.tokenizer_cmd",
    "rnope.commands.analyze",
    "rnope.commands.eval",
]


def _optional(modname: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:  # a command whose module is not part of this build
        if e.name == modname:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="rnope", description="Hybrid-attention (RNoPE-SWA) language models.")
    parser.add_argument("--version", action="version", version=f"rnope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        mod = _optional(modname)
        if mod is None:
            continue
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args._extra = extra
    if extra and not getattr(args, "_accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("rnope: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if getattr(args, "debug", False):
            raise
        msg = " ".join(str(e).split()) or e.__class__.__name__
        print(f"rnope: error: {msg}", file=sys.stderr)
        return 2


def model_overrides(extra: list[str]) -> dict:
    """Parse ``--model.FIELD VALUE`` (or ``--model.FIELD=VALUE``) pairs into typed overrides."""
    import dataclasses

    from .config import ModelConfig

    types = {f.name: f.type for f in dataclasses.fields(ModelConfig) if f.init}
    out: dict = {}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--model."):
            raise ValueError(f"unrecognized argument {tok!r}")
        key, eq, val = tok[len("--model.") :].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ValueError(f"{tok} needs a value")
            val = extra[i + 1]
            i += 1
        i += 1
        if key not in types:
            raise ValueError(f"unknown model config key {key!r} (known: {', '.join(sorted(types))})")
        out[key] = _coerce(key, val, str(types[key]))
    return out


def _coerce(key: str, val: str, typ: str):
    try:
        if typ == "int":
            return int(val)
        if typ == "float":
            return float(val)
        if typ == "bool":
            if val.lower() in ("1", "true", "yes"):
                return True
            if val.lower() in ("0", "false", "no"):
                return False
            raise ValueError
    except ValueError:
        raise ValueError(f"--model.{key}: {val!r} is not a valid {typ}") from None
    return val


if __name__ == "__main__":
    sys.exit(main())
