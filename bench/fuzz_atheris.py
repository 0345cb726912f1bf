"""Coverage-guided fuzzing (atheris, libFuzzer) of Part 10 framing and data-set parsing.

Optional: atheris is not a dependency (``pip install atheris==2.3.0``; it ships wheels for
CPython 3.11 on x86-64 Linux). Any exception other than InvalidInstance is a crash that
libFuzzer reports with the input that caused it::

    nice python bench/fuzz_atheris.py -runs=200000 -max_len=4096 [corpus_dir]
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from pacs.errors import InvalidInstance
    from pacs.instance import ParsedInstance
    from pacs.part10 import locate


def one_input(data: bytes) -> None:
    """locate() -> read_dataset() -> index attributes: a result or InvalidInstance."""
    with contextlib.suppress(InvalidInstance):
        ParsedInstance.from_dataset(locate(data).read_dataset())


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
