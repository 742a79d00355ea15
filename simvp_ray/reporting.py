"""Human-readable summaries of a finished run (its `RunSummary`) and one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from simvp_ray.data.schema import CorruptChunkError
from simvp_ray.metric_keys import TABLE_COLUMNS
from simvp_ray.runs import RunSummary

METRICS = TABLE_COLUMNS  # the summary table's columns


def format_summary(summary: RunSummary) -> str:
    final = summary.final
    rows = ["| validation | " + " | ".join(METRICS) + " |",
            "|---|" + "---:|" * len(METRICS)]
    for label, values in (("model", final.model), ("persistence", final.persistence)):
        rows.append(f"| {label} | " + " | ".join(f"{values[m]:.4f}" for m in METRICS) + " |")
    verdict = "beats" if final.model["mse"] < final.persistence["mse"] else "does NOT beat"
    return "\n".join([
        f"run {summary.name}: {summary.epochs_run} epochs in "
        f"{summary.wall_time_s:.0f} s, {summary.train_samples_per_s:.1f} samples/s",
        *rows,
        f"the model {verdict} persistence (val MSE {final.model['mse']:.4f} vs "
        f"{final.persistence['mse']:.4f}, normalised units)",
        f"best checkpoint:  {summary.best_checkpoint}",
        f"run folder:       {summary.run_url}  (result.json, checkpoints)",
    ])


def data_fault(error: BaseException) -> CorruptChunkError | None:
    """The unreadable chunk behind an error raised through Ray (a task error wraps it, with
    the remote traceback in its text), or None."""
    seen: set[int] = set()
    found, texts = None, []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, CorruptChunkError):
            found = error  # keep going: the innermost one has the plain message
        texts.append(str(error))
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    text = "\n".join(texts)
    if found is None and f"{CorruptChunkError.__name__}: " in text:
        # a UDF's error reaches the driver inside Ray Data's UserCodeException, whose pickled
        # chain is lost: only the remote traceback's text still names it
        line = text.split(f"{CorruptChunkError.__name__}: ", 1)[1].splitlines()[0]
        found = CorruptChunkError(line)
    return found


@contextlib.contextmanager
def data_faults_raised_plain() -> Iterator[None]:
    """Re-raise a data fault met in a Ray task as itself (Ray wraps a UDF's error in a
    UserCodeException, which is no ValueError), so a job prints it as its one line."""
    try:
        yield
    except Exception as error:
        fault = data_fault(error)
        if fault is None or fault is error:
            raise
        raise fault from None


def one_line(error: BaseException) -> str:
    """An error as the single stderr line a job ends with (no traceback, no wrapped lines)."""
    fault = data_fault(error)
    if fault is not None:  # its own line only: Ray Data appends retry advice to the text
        return str(fault).strip().splitlines()[0]
    return " ".join(str(error).split()) or type(error).__name__
