"""`monitor replay`, `export` and `import`, and what `monitor sim --recorded` runs: history
sent again, and history moved between databases. The replay package is imported inside the
commands, so `monitor --help` does not load it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import click

from monitor.cli.common import ID, F, atomic_output, config_option, moment, opened, output_path

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitor.replay.batch import BatchSpec, BatchSummary


def _database_option(function: F) -> F:
    return click.option("--database", "database_url", metavar="URL",
                        help="This database instead of the configured one.")(function)


def _url(config_path: str | None, database_url: str | None = None) -> str:
    from monitor import config as config_module
    from monitor.config.checks import check_database_url

    if database_url is not None:
        return check_database_url(database_url, "--database")
    return config_module.load(config_path).database_url


@click.command("replay")
@click.argument("probe_id", type=ID, required=False)
@click.option("--to", metavar="TARGET",
              help="Send to this configured target instead (a pinned snapshot, another "
                   "provider); the payload's model becomes its model.")
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Send the request this many times.")
@click.option("--target", "source", metavar="TARGET",
              help="Batch: replay this target's stored requests, oldest first.")
@click.option("--since", metavar="WHEN",
              help='Batch: from ("24h", "7d", a date or an ISO 8601 time).')
@click.option("--until", metavar="WHEN", help="Batch: up to (excluded).")
@click.option("--limit", type=click.IntRange(1), help="Batch: at most this many requests.")
@click.option("--sample", type=click.IntRange(1),
              help="Batch: this many requests spread evenly over the range (a sample of "
                   "yesterday's recorded traffic, say) instead of the oldest.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Batch: requests in flight at once.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the comparison, or a batch's summary, as JSON.")
@config_option
def replay_command(probe_id: int | None, to: str | None, repeat: int, source: str | None,
                   since: str | None, until: str | None, limit: int | None,
                   sample: int | None, concurrency: int, as_json: bool,
                   config_path: str | None) -> None:
    """Re-send a stored probe's exact request (PROBE_ID), or a target's stored requests over a
    time range (--target, --since), store the answers linked to the originals, and compare.
    Recorded traffic (monitor proxy) replays the same way: its targets are "route/model"."""
    if (probe_id is None) == (source is None):
        raise click.UsageError("give a PROBE_ID, or --target and --since for a batch")
    if probe_id is not None and (since or until or limit or sample):
        raise click.UsageError("--since, --until, --limit and --sample select a batch: use "
                               "them with --target instead of a PROBE_ID")
    if source is not None and since is None:
        raise click.UsageError("a batch needs --since (replaying a whole history costs money)")
    if source is not None and repeat != 1:
        raise click.UsageError("--repeat is for a single PROBE_ID")
    from monitor import config as config_module
    from monitor.replay import diff as replay_diff
    from monitor.replay.batch import BatchSpec
    from monitor.replay.send import destination, replay_probe

    settings = config_module.load(config_path)
    with opened(settings.database_url) as engine:
        if probe_id is not None:
            outcome = replay_probe(engine, settings, probe_id, to, repeat)
            click.echo(replay_diff.outcome_json(outcome) if as_json
                       else replay_diff.render_outcome(outcome))
            failed = not all(r.ok for r in outcome.replays)
        else:
            assert source is not None and since is not None
            spec = BatchSpec(source, destination(settings, source, to), since, until,
                             moment(since, "--since"), moment(until, "--until"), limit,
                             concurrency, sample)
            summary = _run_batch(engine, spec)
            click.echo(replay_diff.summary_json(summary) if as_json
                       else replay_diff.render_summary(summary))
            failed = summary.stopped is not None or summary.pending > 0
    sys.exit(1 if failed else 0)


def _run_batch(engine: Engine, spec: BatchSpec) -> BatchSummary:
    """run_batch with a progress bar on stderr and warm/cold stop on Ctrl-C and SIGTERM."""
    from monitor import httpd
    from monitor.replay.batch import run_batch
    from monitor.store.replays import Run

    stop = threading.Event()

    def warm(received: signal.Signals) -> None:
        stop.set()
        click.echo(f"\n{received.name}: finishing the requests in flight (again to exit now)",
                   err=True)

    with contextlib.ExitStack() as stack:
        bars: list[Any] = []

        def on_start(run: Run, done: int) -> None:
            label = f"run #{run.id}" + (" (resumed)" if run.resumed else "")
            bar = stack.enter_context(click.progressbar(length=run.items, label=label,
                                                        file=sys.stderr, show_pos=True))
            bar.update(done)
            bars.append(bar)

        # Cold: what is in flight may be lost, and is never re-sent.
        with httpd.stop_signals(warm, cold_exit=130):
            return run_batch(engine, spec, stop, on_start,
                             lambda n: bars[0].update(n) if bars else None)


@click.command("export")
@click.option("--target", metavar="NAME", help="Only this target's probes.")
@click.option("--since", metavar="WHEN", help="Probes started from then on.")
@click.option("--until", metavar="WHEN", help="Probes started before then.")
@click.option("--output", "-o", default="-", metavar="FILE",
              help="Where to write (default: standard output).")
@_database_option
@config_option
def export_command(target: str | None, since: str | None, until: str | None, output: str,
                   database_url: str | None, config_path: str | None) -> None:
    """Write probes, with their requests, targets, configurations and raw answers, as JSON
    Lines that `monitor import` reads into another database."""
    from monitor.store import transfer

    since_at, until_at = moment(since, "--since"), moment(until, "--until")
    path = output_path(output, "--output") if output != "-" else None
    with opened(_url(config_path, database_url)) as engine:
        if path is None:
            written = transfer.export(engine, sys.stdout, target, since_at, until_at)
        else:
            # A file is only replaced once the export is whole; a failed one leaves nothing.
            with atomic_output(path) as out:
                written = transfer.export(engine, out, target, since_at, until_at)
    click.echo(f"exported {written} probes" + ("" if output == "-" else f" to {output}"),
               err=True)


@click.command("import")
@click.argument("file", metavar="FILE",
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@_database_option
@config_option
def import_command(file: str, database_url: str | None, config_path: str | None) -> None:
    """Read a `monitor export` file into the database; probes already there (same uid) are
    skipped, so importing twice is harmless."""
    from monitor.store import transfer

    source = "<stdin>" if file == "-" else file
    with opened(_url(config_path, database_url)) as engine, \
            click.open_file(file, encoding="utf-8") as lines:
        summary = transfer.import_lines(engine, _utf8_lines(lines, source), source)
    message = (f"imported {summary.inserted} probes, skipped {summary.skipped} already "
               "stored")
    if summary.unlinked:
        message += (f"; {summary.unlinked} replays kept without their link, as their "
                    "originals are not in the database")
    click.echo(message)


def _utf8_lines(lines: Iterable[str], source: str) -> Iterator[str]:
    """`lines`, with bytes that are not UTF-8 (a binary file) as a TransferError naming the line."""
    from monitor.store import transfer

    number = 0
    try:
        for number, line in enumerate(lines, start=1):
            yield line
    except UnicodeDecodeError:
        raise transfer.TransferError(source, number + 1,
                                     "not UTF-8 text, so not a `monitor export` file") from None
    except OSError as error:
        raise transfer.TransferError(source, number + 1,
                                     f"cannot be read: {error.strerror or error}") from None


def serve_recorded(config_path: str | None, host: str, port: int, target: str | None,
                   latency: bool) -> None:
    """`monitor sim --recorded`: answer from the configured database until stopped."""
    from monitor.replay import recorded

    with opened(_url(config_path)) as engine:
        recorded.serve(engine, host, port, target, latency, echo=click.echo)


COMMANDS = (replay_command, export_command, import_command)
