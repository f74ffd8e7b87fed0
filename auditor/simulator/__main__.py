"""``python -m auditor.simulator``: the same as ``auditor simulate``."""

from __future__ import annotations

import argparse

from auditor.simulator.cli import configure_parser, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m auditor.simulator",
                                     description="Serve a simulated Bandwidth Voice API.")
    configure_parser(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
