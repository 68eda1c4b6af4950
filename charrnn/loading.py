"""A trained model from where the user says it is: a checkpoint file, a run directory (its
best.npz, else latest.npz) or, with nothing named, the most recent run."""

from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint as ckpt_io
from .runs import last_run
from .tokenizer import Vocab

if TYPE_CHECKING:
    from .model import Model


class NoModelGiven(ckpt_io.CheckpointError):
    """No model named and no recent run recorded."""


def model_path(model: Path | str | None) -> Path:
    """MODEL as given, else the most recent run; raises NoModelGiven when there is none."""
    if model is None:
        model = last_run()
        if model is None:
            raise NoModelGiven("no MODEL given and no recent run recorded: train one first "
                               "(charrnn train corpus.txt) or name a checkpoint or run "
                               "directory")
    return Path(model)


def load_model(model: Path | str | None) -> tuple["Model", Vocab, ckpt_io.Checkpoint]:
    """(Model, Vocab, Checkpoint) from a checkpoint file, a run directory or, for None, the most
    recent run; the weights as float32. Raises CheckpointError (NoModelGiven among them)."""
    from .model import Model, ModelConfig  # numba: imported only when a model is made

    ck = ckpt_io.load(ckpt_io.resolve(model_path(model)))
    return Model(ModelConfig(**ck.config), params=ck.params.astype("float32")), Vocab(ck.vocab), ck
