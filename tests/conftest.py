"""Shared pytest fixtures.  Each section belongs to one part of tracecap; add yours as a new
clearly marked section rather than editing another's."""
import importlib.util
import os

import pytest


# =====================================================================================
# Section: real runtimes (tracecap.runtimes) -- fixtures `runtime` and `caffe_runtime`
#
# A test that takes `runtime` runs once per runtime: `runtime` is "opencv" or "caffe",
# to pass as runtimes.run(..., runtime=runtime).  The caffe case skips with one line
# when Caffe is not built, or FAILS when TRACECAP_REQUIRE_CAFFE=1 (CI sets it, so that
# skipped Caffe cases cannot pass unnoticed).  The opencv case skips when cv2 is missing.
# =====================================================================================

RUNTIME_NAMES = ["opencv", "caffe"]
CAFFE_NOT_BUILT = "Caffe runtime not built: run python -m tracecap.runtimes.build_caffe"
OPENCV_MISSING = "OpenCV runtime not installed: pip install opencv-python-headless"


def require_runtime(name):
    """Skip (or, for Caffe under TRACECAP_REQUIRE_CAFFE=1, fail) unless `name` can run."""
    if name == "opencv":
        if importlib.util.find_spec("cv2") is None:
            pytest.skip(OPENCV_MISSING)
        return name
    if name == "caffe":
        from tracecap.runtimes import caffe_runtime
        if not caffe_runtime.is_available():
            if os.environ.get("TRACECAP_REQUIRE_CAFFE") == "1":
                pytest.fail(CAFFE_NOT_BUILT + " (required: TRACECAP_REQUIRE_CAFFE=1)", pytrace=False)
            pytest.skip(CAFFE_NOT_BUILT)
        return name
    raise ValueError("unknown runtime %r" % name)


@pytest.fixture(params=RUNTIME_NAMES)
def runtime(request):
    """Each real runtime in turn: "opencv", then "caffe"."""
    return require_runtime(request.param)


@pytest.fixture
def caffe_runtime():
    """For tests about Caffe itself (e.g. CHECK failures): "caffe", or skip/fail as above."""
    return require_runtime("caffe")

# ======================== end of section: real runtimes ==============================


# =====================================================================================
# Section: threads. Two cores, shared with other work: OpenMP pools in torch and OpenCV
# that spin against each other make forwards 10-100x slower under load. One thread each
# keeps the suite's time predictable; results do not depend on it.
# =====================================================================================

def pytest_configure(config):
    import torch
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass

# ======================== end of section: threads ===================================
