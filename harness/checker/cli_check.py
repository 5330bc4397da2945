"""``machi-harness check``: check history files against a model and report verdicts.

Owns the command line (options, output lines, exit status) and nothing else: reading is
``harness.history`` / ``harness.edn``, checking is ``harness.checker.run.check_history``,
HTML is ``harness.report.linear_report``, the coverage guard is
``harness.checker.coverage`` (on by default: a valid history in which some op kind never
succeeded while a nemesis fault was active is reported unknown; ``--no-coverage`` turns it
off; histories without nemesis fault events are unaffected). Exit status: 0 all valid,
1 any invalid, 2 any unknown and no invalid, 254 usage error (bad options, unreadable or
malformed history).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from harness.checker.models import MODELS
from harness.checker.result import CheckResult, Verdict, combine_verdicts, exit_code
from harness.history import NEMESIS, Event, HistoryError, pair_ops, read_history

USAGE_EXIT = 254
WITNESS_LINE_CHARS = 700


class _UsageExit254(click.Command):
    """A click command whose usage errors exit with 254 instead of click's 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = USAGE_EXIT  # type: ignore[misc]
            raise


def _usage(msg: str) -> click.UsageError:
    exc = click.UsageError(msg)
    exc.exit_code = USAGE_EXIT  # type: ignore[misc]
    return exc


@click.command("check", cls=_UsageExit254)
@click.option(
    "--model",
    "model_name",
    required=True,
    type=click.Choice(list(MODELS)),
    help="Datatype the history is checked against.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "edn"]),
    default="auto",
    show_default=True,
    help="History file format (auto: .edn is EDN, anything else JSON Lines).",
)
@click.option(
    "--time-limit",
    "time_limit_s",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per history; past it the verdict is unknown.",
)
@click.option(
    "--memory-limit",
    "memory_limit_mb",
    type=click.FloatRange(min=0, min_open=True),
    default=2048.0,
    show_default=True,
    help="MB of process memory; past it the verdict is unknown.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a self-contained HTML page per failing history into this directory.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per history.")
@click.option(
    "--initial",
    "initial_json",
    default=None,
    help="Initial value as JSON (register, cas-register; an object for multi-register).",
)
@click.option(
    "--coverage/--no-coverage",
    default=True,
    show_default=True,
    help="Report a valid history as unknown when some op kind never succeeded while a "
    "nemesis fault was active.",
)
@click.argument(
    "histories",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
def check(
    model_name: str,
    fmt: str,
    time_limit_s: float,
    memory_limit_mb: float,
    report_dir: Path | None,
    as_json: bool,
    initial_json: str | None,
    coverage: bool,
    histories: tuple[Path, ...],
) -> None:
    """Check HISTORY files for linearizability (or write-once safety) against --model."""
    initial: Any = None
    if initial_json is not None:
        try:
            initial = json.loads(initial_json)
        except json.JSONDecodeError as exc:
            raise _usage(f"--initial is not valid JSON: {exc}") from None
        if model_name not in ("register", "cas-register", "multi-register"):
            raise _usage(f"--initial does not apply to model {model_name!r}")
        if model_name == "multi-register" and not isinstance(initial, dict):
            raise _usage("--initial for multi-register must be a JSON object")
    verdicts: list[Verdict] = []
    errors = 0
    for path in histories:
        t0 = time.monotonic()
        try:
            result, ops = _check_one(
                path, fmt, model_name, time_limit_s, memory_limit_mb, initial, coverage
            )
        except (HistoryError, OSError, UnicodeDecodeError) as exc:
            errors += 1
            click.echo(f"{path}: error: {exc}", err=True)
            continue
        elapsed_s = time.monotonic() - t0
        verdicts.append(result.valid)
        report_path = None
        if report_dir is not None and result.valid is False:
            from harness.report.linear_report import write_report, write_witness_report

            if ops is not None:
                report_path = write_report(report_dir, path, result, ops)
            else:
                report_path = write_witness_report(report_dir, path, result)
        _emit(path, result, elapsed_s, as_json, report_path)
    if errors:
        sys.exit(USAGE_EXIT)
    sys.exit(exit_code(combine_verdicts(verdicts)))


def _check_one(
    path: Path,
    fmt: str,
    model_name: str,
    time_limit_s: float,
    memory_limit_mb: float,
    initial: Any,
    coverage: bool = True,
) -> tuple[CheckResult, list[Any] | None]:
    from harness.checker.run import check_history, make_deadline

    actual_fmt = fmt if fmt != "auto" else ("edn" if path.suffix.lower() == ".edn" else "jsonl")
    if model_name == "write-once":
        from harness.checker import write_once

        if actual_fmt == "jsonl" and hasattr(write_once, "check_write_once_lines"):
            with path.open("rb") as fh:
                res = write_once.check_write_once_lines(
                    fh,
                    name=str(path),
                    memory_limit_mb=memory_limit_mb,
                    deadline=make_deadline(time_limit_s),
                )
        else:
            res = write_once.check_write_once(
                read_history(path, actual_fmt),
                memory_limit_mb=memory_limit_mb,
                deadline=make_deadline(time_limit_s),
            )
        if coverage and res.valid is True and _may_have_nemesis(path):
            res = _guard_streaming(res, path, actual_fmt)
        return res, None
    nemesis_events: list[dict[str, Any]] = []

    def tap(events: Iterable[Event]) -> Iterator[Event]:
        for e in events:
            if e.process == NEMESIS:
                nemesis_events.append(e.to_json())
            yield e

    ops = pair_ops(tap(read_history(path, actual_fmt)))
    try:
        res = check_history(ops, model_name, time_limit_s, memory_limit_mb, initial=initial)
    except ValueError as exc:
        if isinstance(exc, HistoryError):
            raise
        raise HistoryError(str(exc)) from None
    if coverage:
        from harness.checker.coverage import faults_from_events, guard, measure

        try:
            faults = faults_from_events(nemesis_events, unit="index")
        except ValueError as exc:
            raise HistoryError(f"{path}: {exc}") from None
        if faults:
            res = guard(res, measure(ops, faults, unit="index"))
    return res, ops


def _may_have_nemesis(path: Path) -> bool:
    """False only when the file certainly holds no nemesis event (a cheap byte scan)."""
    tail = b""
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            if NEMESIS.encode() in tail + block:
                return True
            tail = block[-len(NEMESIS) :]
    return False


def _guard_streaming(res: CheckResult, path: Path, fmt: str) -> CheckResult:
    """The coverage guard over a second streaming pass (write-once histories may be huge)."""
    from harness.checker.coverage import guard, measure_events

    try:
        cov = measure_events((e.to_json() for e in read_history(path, fmt)), unit="index")
    except ValueError as exc:
        if isinstance(exc, HistoryError):
            raise
        raise HistoryError(f"{path}: {exc}") from None
    return guard(res, cov) if cov.faults else res


def _short_witness(w: dict[str, Any] | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {k: v for k, v in w.items() if k != "prefix_indices"}


def _emit(
    path: Path, result: CheckResult, elapsed_s: float, as_json: bool, report: Path | None
) -> None:
    if as_json:
        obj: dict[str, Any] = {
            "file": str(path),
            "valid": result.valid,
            "model": result.model,
            "ops": result.ops,
            "keys": result.keys,
            "elapsed_s": round(elapsed_s, 6),
            "witness": _short_witness(result.witness),
        }
        if report is not None:
            obj["report"] = str(report)
        click.echo(json.dumps(obj, default=_json_default, sort_keys=False))
        return
    label = "valid" if result.valid is True else "INVALID" if result.valid is False else "unknown"
    click.echo(
        f"{path}: {label} (model {result.model}, {result.ops} ops, {result.keys} keys, "
        f"{elapsed_s:.3f} s)"
    )
    w = result.witness
    if w and result.valid is not True:
        text = w.get("explanation") or json.dumps(_short_witness(w), default=_json_default)
        if len(text) > WITNESS_LINE_CHARS:
            text = text[: WITNESS_LINE_CHARS - 3] + "..."
        click.echo(f"  {text}")
    if report is not None:
        click.echo(f"  report: {report}")


def _json_default(obj: object) -> Any:
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return repr(obj)


@click.command("convert", cls=_UsageExit254)
@click.option(
    "--from",
    "src_fmt",
    type=click.Choice(["auto", "jsonl", "edn"]),
    default="auto",
    show_default=True,
    help="Input format (auto: .edn is EDN, anything else JSON Lines).",
)
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
def convert(src_fmt: str, source: Path, dest: Path) -> None:
    """Convert a history between JSON Lines and Jepsen EDN (DEST's suffix picks: .edn or not).

    Refuses to overwrite DEST."""
    from harness.edn import write_edn_history
    from harness.history import write_history

    if dest.exists():
        raise _usage(f"{dest} exists; refusing to overwrite it")
    try:
        events = list(read_history(source, src_fmt))
        if dest.suffix.lower() == ".edn":
            write_edn_history(dest, events)
        else:
            write_history(dest, events)
    except (HistoryError, OSError, UnicodeDecodeError) as exc:
        click.echo(f"{source}: error: {exc}", err=True)
        sys.exit(USAGE_EXIT)
    click.echo(f"{dest}: {len(events)} events")
