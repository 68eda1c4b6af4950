"""metrics.jsonl, a run's log of records (one JSON object a line), and the divergence warning
that reads them."""

import json
import math
import os
from pathlib import Path
from typing import Protocol

from .words import plural

METRICS = "metrics.jsonl"


class Reporter(Protocol):
    def start(self, info: dict) -> None: ...
    def step(self, metrics: dict) -> None: ...
    def evaluated(self, metrics: dict, preview: str) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict) -> None: ...


def write_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_records(path: Path, step: int) -> None:
    """Drop what a run that never stopped would not have logged: records after the checkpoint
    being resumed (they will be logged again) and the final report of the stop itself."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("step", 0) < step or (record.get("step") == step and
                                            not record.get("final")):
            keep.append(line)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)  # a crash now leaves the old history or the new, never none


class DivergenceWatch:
    """Warns once when a logged loss is worse than guessing uniformly among the vocabulary by
    more than a nat: a learning rate too high can leave the loss finite (nothing stops the run)
    and the model useless."""

    def __init__(self, vocab_size: int, reporter: Reporter):
        self.vocab_size, self.reporter = vocab_size, reporter
        self.uniform = math.log(vocab_size)
        self.warned = False

    def check(self, record: dict, key: str) -> None:
        loss = record.get(key)
        if self.warned or loss is None or loss <= self.uniform + 1:
            return
        self.warned = True
        record["diverging"] = True
        what = "validation loss" if key == "val_loss" else "loss"
        self.reporter.message(
            f"warning: the {what} is {loss:,.4g} nats/char at step {record['step']}, worse "
            f"than guessing uniformly among {plural(self.vocab_size, 'character')} "
            f"({self.uniform:.2f}): training is diverging; try a lower --lr")
