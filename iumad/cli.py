"""`iumad`: one console script, one module per subcommand under `iumad/commands/`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from iumad import __version__

# name -> (module under iumad.commands, one-line help). Modules are imported only when used, so
# `iumad --help` stays fast and a missing optional dependency only breaks its own subcommand.
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("version", "print the version"),
    "synth": ("synth", "write a synthetic RGB-D defect dataset in the MVTec 3D-AD layout"),
    "train": ("train", "train a base or incremental step and write a model version"),
    "eval": ("evaluate", "evaluate a model version on a dataset (I-AUROC, P-AUROC, AUPRO)"),
    "bench": ("bench", "run an incremental protocol end to end and write the paper-style table"),
    "serve": ("serve", "run the inspection gateway (embedded Redis and worker by default)"),
    "worker": ("worker", "run a training worker on the Redis queue"),
    "export": ("export", "export a model version to ONNX"),
    "demo": ("demo", "enrol two synthetic objects and inspect parts against a running service"),
}


class UsageParser(argparse.ArgumentParser):
    """argparse already exits 2 with a usage line on bad options; keep that, never a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="iumad", description="IB-IUMAD Inspect: RGB+depth anomaly detection service")
    parser.add_argument("--version", action="version", version=f"iumad {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        module = _command_module(module_name, required=False)
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(sub)
    return parser


def _command_module(module_name: str, required: bool = True):
    try:
        return importlib.import_module(f"iumad.commands.{module_name}")
    except ModuleNotFoundError as error:
        if required or not error.name or not error.name.startswith("iumad.commands"):
            raise
        return None


def settings_problems(error) -> str:
    """A settings `ValidationError` as one line per bad variable, named as the user set it."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"IUMAD_{str(problem['loc'][0]).upper()}: {message}" if problem["loc"] else message)
    return "invalid settings: " + "; ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = _command_module(args._module, required=False)
    if module is None:
        print(f"iumad: '{args.command}' is not available in this build", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    from model.errors import IumadError

    try:
        return int(module.run(args) or 0)
    except IumadError as error:
        print(f"iumad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        if error.title != "Settings":
            raise
        print(f"iumad {args.command}: error: {settings_problems(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iumad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
