"""Command line: ``python -m tuning.archive export --sweep NAME --out FILE`` / ``import FILE``, both with
``[--tracking-uri URI]`` (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here).

``export`` writes a sweep's parent run and every done trial's run (params, tags, full metric histories) as one JSON
document; ``import`` reads such a document into a store, creating the sweep's parent and the trials' runs it does
not hold yet. Run the sweep command against that store afterwards and it keeps the imported trials and runs the
rest: a sweep outlives the machine its store was on. Exit codes: 0 done, 2 bad input (a missing or foreign file,
an unknown sweep, a store holding the sweep with other trials).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import TrackingConfig
from pipeline.record.archive import archive_text, export_sweep, import_sweep, read_archive
from pipeline.record.store import TrackingError, check_store, existing_store, resolve_tracking_uri
from pipeline.record.sweep import SweepRecordError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and export or import a sweep's archive; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tuning.archive", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write a sweep's done trials to a JSON archive")
    out.add_argument("--sweep", required=True, help="sweep name or parent run id")
    out.add_argument("--out", required=True, type=Path, help="archive file to write")
    out.add_argument("--tracking-uri", help="MLflow store to read [the default store]")
    into = commands.add_parser("import", help="read a JSON archive into a store")
    into.add_argument("archive", type=Path, help="archive file written by export")
    into.add_argument("--tracking-uri", help="MLflow store to write (created if new) [the default store]")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    from pipeline.pretrain import configure_logging

    configure_logging(False)
    uri = args.tracking_uri or resolve_tracking_uri(TrackingConfig())
    try:
        if args.command == "export":
            record = export_sweep(existing_store(uri), args.sweep)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(archive_text(record))
            done, planned = len(record["trials"]), len(record["planned"])
            print(f"sweep {record['sweep']}: {done} done trial(s) of {planned} written to {args.out}")
            return 0
        record = read_archive(args.archive)
        parent, imported, present, clashing = import_sweep(check_store(uri), record, str(args.archive))
    except (SweepRecordError, TrackingError, OSError, MlflowException) as exc:
        print(f"error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 2
    print(
        f"sweep {record['sweep']}: {len(imported)} trial(s) imported, {len(present)} already in the store; "
        f"MLflow parent run {parent} in {uri}"
    )
    if clashing:
        print(f"not imported: {', '.join(clashing)} (the store holds an unfinished run of each; the sweep reruns them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
