"""How ``auditor run`` runs its loop: GC settings restored, pandas declined only inside, and
pyarrow on the system allocator."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys

import pytest

from auditor import runtime


def test_quiet_gc_collects_less_often_inside_and_restores_after() -> None:
    before = gc.get_threshold()
    with runtime.quiet_gc():
        assert gc.get_threshold()[0] == runtime.GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before


def test_run_returns_the_coroutines_result_on_either_loop() -> None:
    async def answer() -> int:
        return 42

    assert runtime.run(answer(), use_uvloop=False) == 42
    assert runtime.run(answer()) == 42  # uvloop when installed


def test_pandas_is_declined_inside_the_run_only() -> None:
    # A fresh interpreter: this one may have imported pandas already (then it is kept).
    code = """
import importlib.util, sys
from auditor import runtime
with runtime.without_pandas():
    try:
        import pandas
    except ImportError:
        print("declined")
    import pyarrow as pa
    pa.array(["x"])  # the import pyarrow tries here is declined quietly
    print("pandas" in sys.modules)
if importlib.util.find_spec("pandas") is not None:
    import pandas
    print("imported after")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[:2] == ["declined", "False"]


def test_the_command_line_loads_pyarrow_on_the_system_allocator() -> None:
    # A fresh interpreter, importing what `auditor run` imports, in its order.
    code = """
import auditor.cli
import pyarrow as pa
import pyarrow.parquet as pq
print(pa.default_memory_pool().backend_name)
"""
    env = {k: v for k, v in os.environ.items() if k != runtime.ALLOCATOR_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["system"]
    # a choice made in the environment is kept
    env[runtime.ALLOCATOR_ENV] = "mimalloc"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["mimalloc"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.skipif(not runtime.uvloop_available(), reason="pinned only on uvloop")
def test_the_run_keeps_large_blocks_mapped_after_one_is_freed() -> None:
    # Fresh interpreters: the threshold is process-wide.  mallinfo2's hblks counts the
    # blocks malloc has mapped.  Unpinned, freeing the 4 MB block raises the threshold, and
    # the 1 MB block comes from the heap; in a run on uvloop, it is mapped (and unmapped
    # when freed).
    code = """
import asyncio, ctypes, sys
from auditor import runtime

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

async def mapped_after_a_large_free():
    libc.free(libc.malloc(4 << 20))
    before = libc.mallinfo2().hblks
    block = libc.malloc(1 << 20)
    mapped = libc.mallinfo2().hblks - before
    libc.free(block)
    return mapped

if sys.argv[1] == "run":
    print(runtime.run(mapped_after_a_large_free()))
else:
    print(asyncio.run(mapped_after_a_large_free()))
"""
    results = [
        subprocess.run([sys.executable, "-c", code, how],
                       capture_output=True, text=True, check=True).stdout.strip()
        for how in ("plain", "run")
    ]
    assert results == ["0", "1"]
