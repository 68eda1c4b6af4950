"""A trained model from where the user says it is: a checkpoint file, a run directory (its
ensemble.npz, else best.npz, else latest.npz) or, with nothing named, the most recent run."""

from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint as ckpt_io
from .ensemble import inference_model, member_params
from .runs import last_run
from .tokenizer import Vocab

if TYPE_CHECKING:
    from .ensemble import Ensemble
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


def load_model(model: Path | str | None
               ) -> tuple["Model | Ensemble", Vocab, ckpt_io.Checkpoint]:
    """(model, Vocab, Checkpoint) from a checkpoint file, a run directory or, for None, the
    most recent run; the weights as float32. The model is an Ensemble where the checkpoint
    holds several members. Raises CheckpointError (NoModelGiven among them)."""
    ck = ckpt_io.load(ckpt_io.resolve(model_path(model)))
    return inference_model(ck.config, member_params(ck)), Vocab(ck.vocab), ck
