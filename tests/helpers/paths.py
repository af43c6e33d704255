"""Where things are, independent of how deep a test file sits."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]  # tests/: helpers/ is importable from here (subprocesses put it on sys.path)
ROOT = TESTS.parent  # the repository
