"""How ``auditor run`` runs its event loop: uvloop when installed, a quieter GC, less memory.

Two settings are about the rate gate's precision as much as speed.  The gate banks almost
nothing (that is what keeps every sliding second under the limit), so a slot the event
loop is too busy to take is lost for good, and the loop's longest pauses decide how much:

- **The garbage collector.**  With the default thresholds, a few thousand requests a
  second trigger a young collection every ~700 allocations (about a millisecond each,
  hundreds a run), and now and then a full one that walks every object the imports left
  behind (60 ms measured).  :func:`quiet_gc` freezes what exists before the run (imports,
  configuration: nothing the run can free) out of the collector's sight and collects the
  young generation ten times less often.  The run's own cycles are still collected.
- **uvloop**, when the ``uvloop`` extra is installed: a faster loop and transports.

Three are about memory:

- pyarrow's default allocator (mimalloc) keeps a heap per thread and holds on to what it
  freed: ~28 MB of a 100,000-id run's peak with a reader and a writer thread, and ~16 MB
  more that the Parquet writer kept after one 10,000-row part.  The system allocator is as
  fast for batches this small.  Importing this module makes it pyarrow's default (unless
  the environment names one in :data:`ALLOCATOR_ENV`).  That works only before pyarrow
  loads, so the command line imports this module first: the Parquet writer allocates from
  the default that pyarrow's C++ library picked when it loaded (``pq.write_table`` takes no
  pool), and ``pa.set_memory_pool`` does not change that one.  :func:`run` still calls it,
  for a process that had loaded pyarrow before.
- The first ``pa.array(list)`` makes pyarrow import pandas, when pandas is installed, only
  to ask whether the list is a pandas object: ~45 MB of resident memory, a quarter of the
  budget for a million ids.  The run never hands pyarrow a pandas object, so :func:`run`
  declines that import (:func:`without_pandas`); a process that has pandas keeps it.
- glibc's malloc serves blocks from 128 KiB up with their own mapping, returned to the
  system when freed, but each such free raises that threshold to the block's size (up to
  32 MB).  After the first Arrow buffers of a chunk or a part are freed, later ones come
  from the heap, which keeps them: ~8 MB of a 100,000-id run's peak.  :func:`run` pins
  the threshold at 128 KiB (:func:`pin_mmap_threshold`) when it runs uvloop.  Not on
  asyncio's own loop: its transports read into a fresh 256 KiB buffer per ``recv``, and
  mapping each of them cost ~15 % more CPU per request.

Library users run the coroutine on their own loop; :func:`run` is what ``auditor run``
uses, and they may use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Coroutine, Iterator, Sequence
from types import ModuleType
from typing import Any, TypeVar

#: Read once, when pyarrow's C++ library loads: so set before ``import pyarrow`` below.
ALLOCATOR_ENV = "ARROW_DEFAULT_MEMORY_POOL"
os.environ.setdefault(ALLOCATOR_ENV, "system")

import pyarrow as pa  # noqa: E402  (after the allocator choice above)

T = TypeVar("T")

#: Allocations between young collections during a run (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Freeze the heap as it is, and collect the young generation less often, until exit."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, before[1], before[2])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


class _DeclinePandas(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "pandas":
            raise ImportError("auditor runs without pandas")
        return None


@contextlib.contextmanager
def without_pandas() -> Iterator[None]:
    """Within the block, ``import pandas`` fails (unless pandas is imported already)."""
    if "pandas" in sys.modules:
        yield
        return
    finder = _DeclinePandas()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


#: glibc's default mmap threshold, which :func:`pin_mmap_threshold` makes fixed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt()'s parameter number, from glibc's malloc.h


def pin_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc map every block of *size* bytes or more, for the whole process.

    Setting the threshold turns off glibc's raising it as mapped blocks are freed (see the
    module's docstring); blocks below it still come from the heap.  Returns False where
    the C library has no ``mallopt`` (not glibc) or refuses the setting.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


def uvloop_available() -> bool:
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed, under :func:`quiet_gc` and
    :func:`without_pandas`, with pyarrow on the system allocator, and on uvloop with
    glibc's mmap threshold pinned (:func:`pin_mmap_threshold`)."""
    pa.set_memory_pool(pa.system_memory_pool())
    with quiet_gc(), without_pandas():
        if use_uvloop:
            try:
                uvloop = importlib.import_module("uvloop")
            except ImportError:
                pass
            else:
                pin_mmap_threshold()
                result: T = uvloop.run(main)
                return result
        return asyncio.run(main)
