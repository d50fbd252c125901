"""One line, one write: under ``horovodrun``/``mpirun`` every rank's output is tagged line by
line (``[1,0]<stderr>:``), and Python's ``print`` writes the text and its newline in two
writes when output is unbuffered (``PYTHONUNBUFFERED=1``, which horovodrun sets), so another
rank's tag could land between them. ``say`` writes the text with its newline at once."""
from __future__ import annotations

import sys


def say(text: str, err: bool = False) -> None:
    """Write ``text`` and a newline to stdout (stderr with ``err``) in one write, flushed."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()
