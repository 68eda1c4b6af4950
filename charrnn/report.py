"""What `charrnn train` shows on stderr: a Rich progress display on a terminal, plain log lines
otherwise (pipes, files, CI), nothing with --quiet. All implement train.Reporter."""

import math

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

LN2 = math.log(2)


def loss_text(nats: float | None) -> str:
    if nats is None:
        return "-"
    return f"{nats:.4f} nats ({nats / LN2:.3f} bits)"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 48, low: float | None = None,
              high: float | None = None) -> str:
    """values as a row of block characters, one per value (evenly thinned to at most width),
    from the lowest (▁) to the highest (█) on the scale low..high (default: their own range)."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    span = (high - low) or 1.0
    top = len(SPARKS) - 1
    return "".join(SPARKS[max(0, min(top, round((v - low) / span * top)))] for v in values)


def curve_lines(history: list[dict]) -> list[str]:
    """The learning curve of a run's validations: train and validation loss as sparklines on one
    shared scale, each with its first and last value, and where the best validation was."""
    rows = [(name, [h[key] for h in history if h.get(key) is not None])
            for name, key in (("train", "train_loss"), ("val", "val_loss"))]
    rows = [(name, v) for name, v in rows if v]
    if not rows or max(len(v) for _, v in rows) < 2:
        return []
    low = min(min(v) for _, v in rows)
    high = max(max(v) for _, v in rows)
    lines = []
    for name, v in rows:
        lines.append(f"  {name:<5} {sparkline(v, low=low, high=high)}  "
                     f"{v[0]:.3f} -> {v[-1]:.3f} nats")
    vals = [h for h in history if h.get("val_loss") is not None]
    if vals:
        best = min(vals, key=lambda h: h["val_loss"])
        lines.append(f"  best validation {best['val_loss']:.4f} nats at step {best['step']}, "
                     f"over {len(vals)} validations to step {history[-1]['step']}")
    return lines


def step_text(metrics: dict, total: int | None) -> str:
    of = f"/{total}" if total else ""
    parts = [f"step {metrics['step']}{of}", f"epoch {metrics['epoch']}"]
    if metrics.get("train_loss") is not None:
        parts.append(f"loss {loss_text(metrics['train_loss'])}")
    if metrics.get("val_loss") is not None:
        parts.append(f"val {loss_text(metrics['val_loss'])}")
    if metrics.get("chars_per_sec"):
        parts.append(f"{metrics['chars_per_sec']:,.0f} chars/s")
    return "  ".join(parts)


PREVIEW_LINES = 8


def preview_lines(preview: str) -> str:
    """The sample preview, indented, at most PREVIEW_LINES lines."""
    return "\n".join("  | " + line for line in preview.splitlines()[:PREVIEW_LINES])


def start_text(info: dict) -> str:
    return (f"training {info['params']:,} parameters on {info['train_chars']:,} characters "
            f"(vocabulary {info['vocab']}, validation {info['val_chars']:,}), batch "
            f"{info['batch_size']} x {info['seq_len']}; run directory {info['run_dir']}")


def finish_text(summary: dict) -> str:
    best = summary.get("best_val_loss")
    best = f"; best validation loss {loss_text(best)}" if best is not None else ""
    return (f"stopped at step {summary['step']}: {summary['stopped_by']}{best}. "
            f"Checkpoints in {summary['run_dir']}")


class PlainReporter:
    """One line per logged step, for logs and pipes."""

    def __init__(self, console: Console):
        self.console = console
        self.total = None

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self, info: dict) -> None:
        self.total = info["total_steps"]
        self._print(start_text(info))

    def step(self, metrics: dict) -> None:
        self._print(step_text(metrics, self.total))

    def evaluated(self, metrics: dict, preview: str) -> None:
        if "train_loss" not in metrics:  # the final evaluation has no step line of its own
            self._print(step_text(metrics, self.total))
        if preview:
            self._print(preview_lines(preview))

    def message(self, text: str) -> None:
        self._print(text)

    def finish(self, summary: dict) -> None:
        self.close()
        self._print(finish_text(summary))

    def close(self) -> None:
        """Restore the terminal; called however training ends."""


class RichReporter(PlainReporter):
    """A live progress bar with step, loss, speed and ETA; evaluations print above it."""

    def start(self, info: dict) -> None:
        super().start(info)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(f"step {info['step']}", total=self.total,
                                           completed=info["step"], status="")

    def step(self, metrics: dict) -> None:
        status = f"loss {loss_text(metrics.get('train_loss'))}"
        if metrics.get("chars_per_sec"):
            status += f"  {metrics['chars_per_sec']:,.0f} chars/s"
        of = f"/{self.total}" if self.total else ""
        self.progress.update(self.task, completed=metrics["step"],
                             description=f"step {metrics['step']}{of} epoch {metrics['epoch']}",
                             status=status)

    def evaluated(self, metrics: dict, preview: str) -> None:
        self._print(step_text(metrics, self.total))
        if preview:
            self._print(preview_lines(preview))

    def close(self) -> None:
        if getattr(self, "progress", None) is not None:
            self.progress.stop()
            self.progress = None


class QuietReporter:
    def start(self, info): pass
    def step(self, metrics): pass
    def evaluated(self, metrics, preview): pass
    def message(self, text): pass
    def finish(self, summary): pass
    def close(self): pass
