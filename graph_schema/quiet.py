"""Silencing warnings from a block, safely from several threads.

``warnings.catch_warnings`` saves and restores the process-wide filter list: two threads inside
such blocks at once interleave their saves and restores, so one thread's block can end up with the
other's filters (with pytest's ``filterwarnings = error``, a warning pandapower raises inside a
solve then became an exception and a failed estimate, sporadically). Every block that silences
warnings here takes one process-wide lock first, so they never interleave."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()


@contextmanager
def quiet_warnings() -> Iterator[None]:
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
