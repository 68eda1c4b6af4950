#!/usr/bin/env python3
"""The two corpora of other kinds that benchmarks/quality.py trains on beside tinyshakespeare,
built on the machine that runs it from what is installed there, and never committed:

    python benchmarks/quality_corpora.py [OUTDIR]     # prints each corpus's path and size

python-stdlib.txt   the .py files of the running Python's standard library (site-packages
                    left out), concatenated in sorted order of their paths, cut to 2 MB
                    (2,000,000 characters) at a line's end.
man-cyrillic.txt    the Ukrainian and Russian manual pages installed under /usr/share/man
                    (uk, then ru), rendered to plain text by man(1) at 80 columns without
                    hyphenation or justification, in sorted order of their paths.

Both are deterministic for a given machine: the same installed files give the same bytes.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

STDLIB_CHARS = 2_000_000
MAN_LANGUAGES = ("uk", "ru")
MAN_ROOT = Path("/usr/share/man")


def python_stdlib(out: Path) -> Path:
    """The standard library's .py files, sorted by path, cut to STDLIB_CHARS at a newline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.relative_to(root).parts)
    parts, total = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= STDLIB_CHARS:
            break
    text = "".join(parts)[:STDLIB_CHARS]
    text = text[:text.rfind("\n") + 1]
    out.write_text(text, encoding="utf-8")
    return out


def man_cyrillic(out: Path) -> Path:
    """The uk and ru manual pages as plain text, one after another."""
    pages = [p for lang in MAN_LANGUAGES for p in sorted((MAN_ROOT / lang).rglob("*.gz"))]
    if not pages:
        sys.exit(f"quality_corpora.py: no manual pages under {MAN_ROOT}/{{uk,ru}} "
                 f"(install manpages-uk or manpages-ru)")
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    texts = []
    for page in pages:
        shown = subprocess.run(["man", "-l", "--nh", "--nj", str(page)], capture_output=True,
                               env=env)
        plain = subprocess.run(["col", "-bx"], input=shown.stdout, capture_output=True)
        text = plain.stdout.decode("utf-8", errors="replace").strip("\n")
        if text:
            texts.append(text + "\n")
    out.write_text("\n".join(texts), encoding="utf-8")
    return out


BUILDERS = {"python-stdlib": python_stdlib, "man-cyrillic": man_cyrillic}


def build(name: str, outdir: Path) -> Path:
    """The corpus `name` under outdir, built once (an existing file is kept)."""
    path = outdir / f"{name}.txt"
    if not path.exists():
        outdir.mkdir(parents=True, exist_ok=True)
        BUILDERS[name](path)
    return path


def main():
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(os.environ.get("TMPDIR", "/tmp")) / "charrnn-quality-corpora"
    for name in BUILDERS:
        path = build(name, outdir)
        text = path.read_text(encoding="utf-8")
        print(f"{path}\t{len(text):,} characters\t{len(set(text))} distinct")


if __name__ == "__main__":
    main()
