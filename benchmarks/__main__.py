"""Run every ``benchmarks/bench_*.py`` module's ``run(quick) -> dict``; print one JSON document.

Exit status is non-zero when a benchmark raises or reports ``"ok": false`` (a correctness
failure). Timing never fails a run: results report figures against targets instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import traceback
from typing import Any

import benchmarks

PREFIX = "bench_"


def discover() -> list[str]:
    """Benchmark names (module names without the ``bench_`` prefix), sorted."""
    return sorted(
        info.name[len(PREFIX):]
        for info in pkgutil.iter_modules(benchmarks.__path__)
        if info.name.startswith(PREFIX)
    )


def run_one(name: str, quick: bool) -> dict[str, Any]:
    try:
        module = importlib.import_module(f"benchmarks.{PREFIX}{name}")
        result = module.run(quick)
        if not isinstance(result, dict):
            return {"ok": False, "error": f"run() returned {type(result).__name__}, not dict"}
        return result
    except Exception as exc:  # report it in the document, and fail the run
        traceback.print_exc(file=sys.stderr)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this benchmark (repeatable); e.g. simulator")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        wanted = {n.removeprefix(PREFIX) for n in args.only}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    results = {name: run_one(name, args.quick) for name in names}
    print(json.dumps({"benchmarks": results}, indent=2, sort_keys=True))
    return 0 if all(r.get("ok") is not False for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
