"""What `charrnn info` says about a model: its configuration, size, vocabulary and training
history, of a run (its latest.npz, its best validation in best.npz, and the ensemble of its
members in ensemble.npz) or of one checkpoint. Numba-free: reading a checkpoint's description
compiles nothing."""

from pathlib import Path

from . import checkpoint as ckpt_io
from .ensemble import member_params
from .loading import model_path
from .report import curve_lines, loss_text
from .tokenizer import Vocab
from .words import plural


def describe(model: Path | str | None) -> dict:
    """The description of MODEL as `info --json` prints it: for a run directory its latest.npz
    (the run) with its best.npz and ensemble.npz beside it; for a file the file; for None the
    most recent run. "members": how many models the checkpoint holds (an ensemble's)."""
    path = model_path(model)
    best_path = path / ckpt_io.BEST if path.is_dir() else None
    ensemble = _ensemble(path / ckpt_io.ENSEMBLE) if path.is_dir() else None
    if best_path is not None and (path / ckpt_io.LATEST).exists():
        path = path / ckpt_io.LATEST
    path = ckpt_io.resolve(path)
    ck = ckpt_io.load(path)
    t = ck.train
    best_step = t.get("best_step")
    has_best = best_path is not None and best_path.exists() and path != best_path
    if has_best and best_step is None and t.get("best_val_loss") is not None:
        best_step = ckpt_io.load(best_path).train.get("step")  # written before best_step was
    return {"checkpoint": str(path), "config": ck.config, "parameters": int(ck.params.size),
            "vocabulary": Vocab(ck.vocab).chars, "step": t.get("step"),
            "epoch": t.get("epoch"), "best_val_loss": t.get("best_val_loss"),
            "best_step": best_step, "options": t.get("options"),
            "corpus": t.get("corpus"), "parent": t.get("parent"),
            "history": t.get("history", []),
            "best": {"checkpoint": str(best_path), "step": best_step,
                     "val_loss": t.get("best_val_loss")} if has_best else None,
            "members": len(member_params(ck)), "ensemble": ensemble}


def _ensemble(path: Path) -> dict | None:
    """What info says of a run's ensemble.npz, if it has one."""
    if not path.exists():
        return None
    ck = ckpt_io.load(path)
    return {"checkpoint": str(path), "members": len(member_params(ck)),
            "val_loss": ck.train.get("best_val_loss")}


def description_text(d: dict) -> str:
    """describe()'s result as `info` prints it for a person."""
    c = d["config"]
    weight_drop = (d.get("options") or {}).get("weight_drop")
    lines = [f"model       {c['layers']} x {c['hidden']} {c['cell']}, dropout {c['dropout']}"
             + (f", weight drop {weight_drop}" if weight_drop else "")
             + f", {d['parameters']:,} parameters",
             f"vocabulary  {plural(len(d['vocabulary']), 'character')}: {d['vocabulary']!r}",
             f"trained     {plural(d['step'] or 0, 'step')}, "
             f"{plural(d['epoch'] or 0, 'epoch')} ({Path(d['checkpoint']).name})",
             f"best val    {loss_text(d['best_val_loss'])}"]
    if d["best_step"] is not None:
        lines[-1] += f" at step {d['best_step']}"
    if d["members"] > 1:
        lines[2] = (f"ensemble    {d['members']} members, trained apart "
                    f"({Path(d['checkpoint']).name})")
    if d["best"] and not d["ensemble"]:
        lines[-1] += " (best.npz: the weights sample and eval use)"
    if d["ensemble"]:
        e = d["ensemble"]
        lines.append(f"ensemble    {e['members']} members, val {loss_text(e['val_loss'])} "
                     f"({Path(e['checkpoint']).name}: the model sample and eval use)")
    if isinstance(d.get("parent"), dict):
        p = d["parent"]
        lines.append(f"started     from {p.get('checkpoint')} (sha256 "
                     f"{str(p.get('sha256'))[:12]}, step {p.get('step')}, trained on "
                     f"{p.get('corpus')})")
    curve = curve_lines(d["history"])
    if curve:
        lines += ["learning curve (loss at each validation)", *curve, "last validations"]
    for h in d["history"][-10:]:
        lines.append(f"  step {h['step']:>7}  train {loss_text(h.get('train_loss'))}  "
                     f"val {loss_text(h.get('val_loss'))}")
    return "\n".join(lines)
