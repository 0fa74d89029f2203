"""The single ``vfmtok`` command: dispatches to one module per subcommand.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules keep
heavy imports inside ``run`` so that ``vfmtok --help`` stays fast. Errors a user can fix print one clear line and exit
with code 2, never a traceback; they are caught here, once, not in every command. They are :class:`UserError`, bad
configs (:class:`~vfmtok.config.ConfigError`), damaged or mismatched model and checkpoint files
(:class:`~vfmtok.hub.ModelLoadError`), data that cannot be read
(:class:`~vfmtok.data.datasets.UnreadableDataError`, :class:`~vfmtok.data.datasets.NoImagesError`) and missing files.
Raise one of them with the file and the reason in the message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> module under vfmtok.cli
COMMANDS: dict[str, str] = {
    "reconstruct": "reconstruct",
    "regions": "regions",
    "init-tokenizer": "init_tokenizer",
    "convert-official": "convert_official",
    "convert-official-gpt": "convert_official_gpt",
    "train-tokenizer": "train_tokenizer",
    "extract-codes": "extract_codes",
    "train-gpt": "train_gpt",
    "sample": "sample",
    "eval-tokenizer": "eval_tokenizer",
    "eval-samples": "eval_samples",
    "demo": "demo",
    "export-fashion-mnist": "export_fashion_mnist",
    "presets": "presets",
}


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from ..config import ConfigError
    from ..data.datasets import UnreadableDataError
    from ..hub import ModelLoadError

    return (UserError, ConfigError, ModelLoadError, UnreadableDataError, FileNotFoundError, IsADirectoryError,
            PermissionError)


def one_line(e: BaseException) -> str:
    """The message of a user error as one line.

    An error raised inside a DataLoader worker comes back with the worker's traceback inside its message
    (``Caught X in DataLoader worker process 0. Original Traceback ...``): only its last line, the original message,
    is kept.
    """
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        text = last.split(prefix, 1)[-1] if prefix in last else last.split(": ", 1)[-1]
    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # e.g. PermissionError from open()
        text = f"{e.strerror}: {e.filename}"
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfmtok", description="VFMTok: foundation-model tokenizers + AR generation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(f"vfmtok.cli.{modname}")
        except ModuleNotFoundError as e:
            if e.name == f"vfmtok.cli.{modname}":
                continue  # command not built in this version
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except _user_error_types() as e:
        print(f"vfmtok {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vfmtok {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
