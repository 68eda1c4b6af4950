"""Ensembles: several models of one config, trained apart (each its own seed), whose predicted
probabilities are averaged. Averaging two or three models trained apart lowers the held-out
loss where training one model longer only overfits; snapshots of one run do not average to
better than their best (BENCHMARKS.md, "Tenth session" and "Eleventh session").

In a checkpoint, an ensemble is the first member's weights as `params` (what a reader that knows
nothing of ensembles takes: a whole model on its own) and the others' as one (K - 1, P) array,
MEMBERS. A run of several members writes one as ENSEMBLE in its directory (members.py), and
`sample`, `eval` and `serve` given the directory read it.

`Ensemble` is the inference side: the `Model` interface that validation, scoring and the
sampler read (zero_state, forward, final_state, logits), over the members. Its state is the
members' (L, B, W) states stacked along the first axis, (K * L, B, W), so that code that
rearranges the rows of a state (stepper.arranged) handles an ensemble's as one model's.
"""

from typing import TYPE_CHECKING

import numpy as np

from .checkpoint import ENSEMBLE, MEMBERS, Checkpoint

if TYPE_CHECKING:
    from .model import Model

__all__ = ["ENSEMBLE", "MEMBERS", "Ensemble", "ensemble_checkpoint", "inference_model",
           "member_params", "members_of", "models_of"]


def member_params(ck: Checkpoint) -> list[np.ndarray]:
    """The weights of each member of ck, (P,) each: one for a checkpoint of one model."""
    others = ck.arrays.get(MEMBERS)
    return [ck.params] + ([] if others is None else list(others))


def ensemble_checkpoint(members: list[Checkpoint], train: dict) -> Checkpoint:
    """The checkpoint of an ensemble of these members (one config and vocabulary: the first
    member's), their weights as they are; train: what its metadata says of them."""
    first = members[0]
    arrays = {MEMBERS: np.stack([m.params for m in members[1:]])} if len(members) > 1 else {}
    return Checkpoint(config=first.config, vocab=first.vocab, params=first.params,
                      arrays=arrays, train=train)


class Ensemble:
    """The models' mean prediction: at each position, the mean of their probabilities.

    forward(ids, targets, h0, c0) returns the mean loss of that prediction (nats/char), and
    logits() its log-probabilities, (T, B, V): as logits, their softmax is the mean."""

    def __init__(self, members: list["Model"]):
        if len(members) < 2 or any(m.config != members[0].config for m in members):
            raise ValueError("an ensemble needs two or more models of one config")
        self.members = members
        self.config, self.layout, self.dtype = members[0].config, members[0].layout, \
            members[0].dtype
        self._log_probs = None  # (T, B, V) of the last forward
        self._state = None

    def zero_state(self, B: int) -> tuple[np.ndarray, np.ndarray]:
        """(h, c), each (K * L, B, W): the members' zero states one after another."""
        states = [m.zero_state(B) for m in self.members]
        return tuple(np.concatenate(parts) for parts in zip(*states))

    def _split(self, state: np.ndarray) -> list[np.ndarray]:
        return np.split(state, len(self.members))

    def forward(self, ids, targets, h0=None, c0=None) -> float:
        K = len(self.members)
        starts = zip(self._split(h0) if h0 is not None else [None] * K,
                     self._split(c0) if c0 is not None else [None] * K)
        log_probs, hs, cs = [], [], []
        for m, (h, c) in zip(self.members, starts):  # (None: the member's zero state)
            m.forward(ids, targets, h, c)
            z = m.logits().astype(np.float64)  # (T, B, V)
            z -= z.max(axis=2, keepdims=True)
            log_probs.append(z - np.log(np.exp(z).sum(axis=2, keepdims=True)))
            h, c = m.final_state()
            hs.append(h)
            cs.append(c)
        self._state = (np.concatenate(hs), np.concatenate(cs))
        # log of the mean of the probabilities, member by member (K arrays of (T, B, V))
        self._log_probs = np.logaddexp.reduce(np.stack(log_probs), axis=0) - \
            np.log(len(self.members))
        picked = np.take_along_axis(self._log_probs,
                                    np.asarray(targets, np.int64)[..., None], axis=2)
        return float(-picked.mean())

    def final_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(hT, cT) of the last forward, each (K * L, B, W)."""
        return self._state

    def logits(self) -> np.ndarray:
        """The mean prediction's log-probabilities of the last forward, (T, B, V)."""
        return self._log_probs.astype(self.dtype)


def models_of(model) -> list["Model"]:
    """The models that make model's prediction: an Ensemble's members, else model itself."""
    return model.members if isinstance(model, Ensemble) else [model]


def members_of(model) -> int:
    """How many models make model's prediction."""
    return len(models_of(model))


def inference_model(config: dict, params: list[np.ndarray]) -> "Model | Ensemble":
    """The model a checkpoint's members make, float32: one Model, or an Ensemble of several."""
    from .model import Model, ModelConfig  # numba: imported only when a model is made

    cfg = ModelConfig(**config)
    models = [Model(cfg, params=p.astype("float32")) for p in params]
    return models[0] if len(models) == 1 else Ensemble(models)
