"""What several ``popgate`` command groups share: the default config path, loading it with
its problems printed, and finding the state directory."""

from __future__ import annotations

import argparse
import sys

from gateway.app import config as configmod
from gateway.core.display import printable

DEFAULT_CONFIG = "/etc/popgate/popgate.toml"


def load_config(path: str) -> configmod.Config | None:
    """The validated config, or None after printing every problem (``FILE: key: problem``)."""
    try:
        return configmod.load(path)
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(printable(problem), file=sys.stderr)
        return None


def state_dir(args: argparse.Namespace) -> str | None:
    """``--state-dir`` if given, else the config's state_dir (None after printing why not)."""
    if getattr(args, "state_dir", None):
        return args.state_dir
    cfg = load_config(args.config)
    return None if cfg is None else cfg.state_dir


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG)


def add_state_dir_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--state-dir`` (commands that only need the state directory)."""
    add_config_option(parser)
    parser.add_argument("--state-dir", help="instead of reading it from the config")
