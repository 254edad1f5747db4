import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import subprocess  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """The C++ tests' synthetic artifacts (runtime/tests/make_tiny_artifact.py), built once:
    `tiny.exitc` (3 segments, 2 exits, a conditional form) and `side.exitc` (side inputs, batch
    axis 1), with their expected cases; the directory holding them."""
    out = tmp_path_factory.mktemp("tiny_artifacts")
    subprocess.run([sys.executable, os.path.join(ROOT, "runtime", "tests", "make_tiny_artifact.py"), "--out", str(out)],
                   check=True, capture_output=True)
    return out
