"""python -m cbn bench (being written)."""


def add_arguments(parser):
    """Register the bench options on ``parser``."""
    parser.add_argument("--quick", action="store_true")


def run(args):
    """Run the benchmark; returns an exit code."""
    raise SystemExit("python -m cbn bench: not yet available in this build")
