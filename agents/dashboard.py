"""Look at a comparison's searches in optuna-dashboard.

    python -m agents.dashboard results/compare/<name>            # then open http://127.0.0.1:8080
    python -m agents.dashboard results/compare/<name> --port 9000

`agents.compare` keeps every Optuna study in its own SQLite file under <folder>/studies/ (so a
crash or a rerun touches one search at a time). optuna-dashboard shows one storage, so this copies
every study into one temporary SQLite file (optuna.copy_study; the comparison's files are only
read) and serves it on loopback. Each study is named after its file: instance, seed and method.
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path
from typing import Optional

from trainers.atomic_files import check_writable_folder
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import ConfigError


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.dashboard", description=__doc__)
    p.add_argument("folder", help="a comparison folder (results/compare/<name>), or a folder of study .db files")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_number, default=8080, help="port, 1-65535 (default: 8080)")
    p.add_argument("--merged", default=None,
                   help="where to write the merged SQLite file (default: a temporary file, removed on exit)")
    return p


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return value


def study_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    studies = folder / "studies" if (folder / "studies").is_dir() else folder
    files = sorted(p for p in studies.glob("*.db") if p.is_file())
    if not files:
        raise ConfigError(f"{studies}: no Optuna study files (*.db); run python -m agents.compare first")
    return files


def merge_studies(files: list[Path], dest: Path) -> list[str]:
    """Copy every study of every file into one SQLite storage; returns the new study names."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = f"sqlite:///{dest}"
    names = []
    for f in files:
        _check_optuna_file(f)
        storage = optuna.storages.RDBStorage(f"sqlite:///{f}", skip_table_creation=True)
        found = [s.study_name for s in storage.get_all_studies()]
        for name in found:
            new = f.stem if len(found) == 1 else f"{f.stem}/{name}"
            optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=target, to_study_name=new)
            names.append(new)
    return names


def _check_optuna_file(f: Path) -> None:
    """Read-only: opening a file as an Optuna storage would add Optuna's tables to any SQLite file."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{f}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"{f}: not an SQLite file ({err})") from None
    if not {"studies", "trials", "version_info"} <= tables:
        raise ConfigError(f"{f}: not an Optuna study file (no Optuna tables)")


def _check_port(host: str, port: int) -> None:
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an address this machine can resolve ({err.strerror})") from None
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--port {port}: cannot serve on {host}:{port} ({err.strerror}); choose another --port") from None


def serve(args: argparse.Namespace) -> None:
    files = study_files(Path(args.folder))
    _check_port(args.host, args.port)
    with tempfile.TemporaryDirectory(prefix="dsrl-dashboard-") as tmp:
        dest = Path(args.merged) if args.merged else Path(tmp) / "studies.db"
        if dest.exists():
            raise ConfigError(f"--merged {dest}: exists; give a new file")
        if not dest.parent.is_dir():
            raise ConfigError(f"--merged {dest}: {dest.parent} is not a folder")
        check_writable_folder(dest.parent, "--merged")
        names = merge_studies(files, dest)
        print(f"{len(names)} studies from {len(files)} files; optuna-dashboard at http://{args.host}:{args.port}/ "
              "(Ctrl-C stops it)", file=sys.stderr)
        from optuna_dashboard import run_server

        run_server(f"sqlite:///{dest}", host=args.host, port=args.port)


def main(argv: Optional[list[str]] = None) -> None:
    run_command(build_parser(), serve, argv)


if __name__ == "__main__":
    main()
