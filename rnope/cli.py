"""The ``rnope`` command: subcommands registered from ``rnope.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
and imports heavy libraries inside ``run`` so ``rnope --help`` stays fast. Every user mistake
raises ``ValueError`` (or a subclass) or ``OSError`` (a path that cannot be read or written):
``main`` prints one line ``rnope: error: ...`` and returns 2; ``--debug`` shows the traceback
instead. A ``RuntimeError`` (e.g. torch running out of memory) is also one line, with exit code 1
and a pointer to ``--debug``; any other exception is a bug and keeps its traceback. Usage errors
(unknown flag, missing required flag, bad choice) are one line too, exit code 2. The catalogue of
bad inputs and their messages is ``docs/reliability.md``.

Parsing uses the standard library's ``argparse``: its exit code 2 on bad usage is the convention
the whole CLI follows, and dotted ``--model.FIELD VALUE`` overrides (``--model.rope.factor 4`` for
an option of a nested group) are parsed by :func:`model_overrides` into typed ``ModelConfig`` fields.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = [
    "rnope.commands.generate",
    "rnope.commands.info",
    "rnope.commands.export",
    "rnope.commands.import_hf",
    "rnope.commands.convert",
    "rnope.commands.train",
    "rnope.commands.tokenizer_cmd",
    "rnope.commands.analyze",
    "rnope.commands.eval",
    "rnope.commands.lm_eval_cmd",
    "rnope.commands.reproduce",
    "rnope.commands.bench",
]


def _optional(modname: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:  # a command whose module is not part of this build
        if e.name == modname:
            return None
        raise


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``rnope: error: ...``, exit 2) instead of usage + error."""

    def error(self, message: str):
        cmd = self.prog.removeprefix("rnope").strip()
        where = f"{cmd}: " if cmd else ""
        self.exit(2, f"rnope: error: {where}{message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="rnope", description="Hybrid-attention (RNoPE-SWA) language models.")
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
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def _one_line(e: BaseException) -> str:
    """A one-line message for ``e``; OSErrors as 'strerror: 'path'' without the errno prefix."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        msg = f"{e.strerror}: '{os.fsdecode(e.filename)}'"
        if e.filename2 is not None:
            msg += f" -> '{os.fsdecode(e.filename2)}'"
    else:
        msg = str(e)
    return " ".join(msg.split()) or e.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        args._extra = extra
        if extra and not getattr(args, "_accepts_extra", False):
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # usage errors (exit 2, one line), --help / --version (exit 0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    debug = getattr(args, "debug", False)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("rnope: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # user mistakes and unreadable / unwritable paths
        if debug:
            raise
        print(f"rnope: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. torch out of memory: one line, but may be a bug
        if debug:
            raise
        print(f"rnope: error: {e.__class__.__name__}: {_one_line(e)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


MODEL_OVERRIDES_HELP = (
    "--model.FIELD VALUE overrides a model config field (e.g. --model.window 64). The RoPE and NoPE options are "
    "nested: --model.rope.OPTION (theta, scaling, factor, original_len, fope_sigma, fraction, qk_l2norm) and "
    "--model.nope.OPTION (temperature, scale, floor), e.g. --model.rope.factor 4 --model.nope.temperature log; "
    "the flat names of older configs (--model.rope_factor 4) are accepted too."
)


def model_overrides(extra: list[str]) -> dict:
    """Parse ``--model.FIELD VALUE`` (or ``--model.FIELD=VALUE``) pairs into typed overrides.

    ``FIELD`` is a ``ModelConfig`` field, an option of a nested group (``--model.rope.factor 4``,
    ``--model.nope.temperature log``) or an option's flat name of older configs
    (``--model.rope_factor 4``). Nested options come back as ``{"rope": {"factor": 4.0}}``; merge
    layers of overrides with :func:`rnope.config.merge_overrides`.
    """
    import dataclasses

    from .config import FLAT_OPTIONS, OPTION_GROUPS, ModelConfig

    types = {f.name: f.type for f in dataclasses.fields(ModelConfig) if f.init and f.name not in OPTION_GROUPS}
    nested = {g: {f.name: f.type for f in dataclasses.fields(cls)} for g, cls in OPTION_GROUPS.items()}
    flat = {k: nested[g][name] for k, (g, name) in FLAT_OPTIONS.items()}
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
        group, dot, name = key.partition(".")
        if dot and group in nested:
            if name not in nested[group]:
                known = ", ".join(sorted(f"{group}.{n}" for n in nested[group]))
                raise ValueError(f"unknown model config key {key!r} (known: {known})")
            out.setdefault(group, {})[name] = _coerce(key, val, str(nested[group][name]))
        elif key in nested:
            raise ValueError(f"--model.{key} takes an option: --model.{key}.NAME VALUE "
                             f"(known: {', '.join(sorted(f'{key}.{n}' for n in nested[key]))})")
        elif key in types or key in flat:
            out[key] = _coerce(key, val, str(types.get(key) or flat[key]))
        else:
            known = sorted(types) + sorted(f"{g}.{n}" for g in nested for n in nested[g])
            raise ValueError(f"unknown model config key {key!r} (known: {', '.join(sorted(known))})")
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
