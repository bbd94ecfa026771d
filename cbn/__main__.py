"""Command line: ``python -m cbn info`` and ``python -m cbn bench``."""

import argparse
import sys


def main(argv=None):
    """Entry point of ``python -m cbn``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The process exit code.
    """
    parser = argparse.ArgumentParser(prog="python -m cbn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build and runtime configuration")
    bench = sub.add_parser("bench", help="time cbn against NumPy (and torch) and the copy floor")
    from . import bench as bench_cli

    bench_cli.add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import show_config

        show_config()
        return 0
    return bench_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
