"""Build the real Caffe runtime (C++ library + pycaffe, CPU only) into a cache folder.

    python -m tracecap.runtimes.build_caffe [--prefix DIR] [--jobs N]

Source: the PyPI source distribution ``brocolli-caffe==9.0.2``, a BVLC Caffe fork whose
pooling carries ``ceil_mode`` (field 13) like OpenCV's importer, plus extra layers
(HardSwish, HardSigmoid, ReLU6, Upsample, BilinearInterpolate, Permute, ...).  Its
``setup.py`` wants conda and Python <= 3.9, so this script drives its CMake project directly.

Layout of the cache folder (``--prefix``, else ``$TRACECAP_CAFFE_HOME``, else
``~/.cache/tracecap/caffe``); one slot per Python ABI and numpy major version, so that an
interpreter of another kind never replaces a build that others use::

    downloads/brocolli-caffe-9.0.2.tar.gz   the sdist, checked against a pinned sha256
    cp311-np2/stamp.json                    what was built: version, recipe, python, numpy
    cp311-np2/python/caffe/                 the installed pycaffe package (put python/ on sys.path)
    cp311-np2/src/, cp311-np2/build/        sources and CMake tree, only while building
                                            (or with --keep-build); build/build.log = compiler output

A second run finds a matching stamp, checks that ``import caffe`` works, and stops.
``find_caffe()`` gives the ``python/`` folder when a matching build is there, else None.
"""
import argparse
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

try:  # run as part of the package, or by path (.ci/caffe.sh) with this folder on sys.path
    from tracecap.runtimes.build_toolchain import (HDF5_INCLUDE, BuildError, _build_env, _numpy_facts, _run,
                                                   ensure_apt_packages, find_protoc, make_python_shim, say)
except ImportError:
    from build_toolchain import (HDF5_INCLUDE, BuildError, _build_env, _numpy_facts, _run, ensure_apt_packages,
                                 find_protoc, make_python_shim, say)

CAFFE_DIST = "brocolli-caffe"
CAFFE_VERSION = "9.0.2"
SDIST_NAME = f"{CAFFE_DIST}-{CAFFE_VERSION}.tar.gz"
SDIST_SHA256 = "c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"
# Bump when the way the package is built or installed changes: old stamps then no longer match.
RECIPE = 3




# --------------------------------------------------------------------------- locations

def default_home():
    """The cache folder: $TRACECAP_CAFFE_HOME, else ~/.cache/tracecap/caffe."""
    env = os.environ.get("TRACECAP_CAFFE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tracecap" / "caffe"


def wanted_stamp():
    """What a build for the running interpreter must record to be reusable.

    The compiled module depends on the Python ABI (major.minor) and on the numpy C API
    generation (numpy 1.x vs 2.x headers); other interpreters and environments with the same
    pair share a build.  The numpy include folder used is recorded in the stamp too.
    """
    _, np_version = _numpy_facts()
    return {
        "dist": CAFFE_DIST,
        "version": CAFFE_VERSION,
        "recipe": RECIPE,
        "python": "%d.%d" % sys.version_info[:2],
        "numpy_major": int(np_version.split(".")[0]),
    }


def slot_name(wanted=None):
    """Sub-folder of the cache for this interpreter's ABI, e.g. "cp311-np2"."""
    wanted = wanted or wanted_stamp()
    return "cp%s-np%d" % (wanted["python"].replace(".", ""), wanted["numpy_major"])


def _stamp_matches(stamp, wanted):
    return all(stamp.get(k) == v for k, v in wanted.items())


def find_caffe(prefix=None):
    """Path of the folder to put on sys.path to ``import caffe``, or None when not built.

    Cheap: reads the stamp file only (never imports caffe).  Looks in the cache's slot for
    this interpreter (Python major.minor + numpy major version).
    """
    home = Path(prefix).expanduser() if prefix else default_home()
    try:
        wanted = wanted_stamp()
    except ImportError:
        return None
    slot = home / slot_name(wanted)
    pydir = slot / "python"
    try:
        stamp = json.loads((slot / "stamp.json").read_text())
    except (OSError, ValueError):
        return None
    if not _stamp_matches(stamp, wanted):
        return None
    if not glob.glob(str(pydir / "caffe" / "_caffe*.so")):
        return None
    return str(pydir)


# --------------------------------------------------------------------------- helpers

def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(home):
    downloads = home / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / SDIST_NAME
    if target.exists() and _sha256(target) == SDIST_SHA256:
        say("source: %s already downloaded" % target)
        return target
    say("source: downloading %s==%s from PyPI (sdist)" % (CAFFE_DIST, CAFFE_VERSION))
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        try:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  "--disable-pip-version-check", "-d", tmp, "%s==%s" % (CAFFE_DIST, CAFFE_VERSION)])
        except subprocess.CalledProcessError as e:
            raise BuildError("pip download failed (exit %d)" % e.returncode)
        got = Path(tmp) / SDIST_NAME
        if not got.exists():
            raise BuildError("pip download did not produce " + SDIST_NAME)
        digest = _sha256(got)
        if digest != SDIST_SHA256:
            raise BuildError("sha256 mismatch for %s: got %s, want %s" % (SDIST_NAME, digest, SDIST_SHA256))
        os.replace(got, target)
    return target


def unpack(sdist, home):
    srcroot = home / "src"
    if srcroot.exists():
        shutil.rmtree(srcroot)
    srcroot.mkdir(parents=True)
    say("unpacking into " + str(srcroot))
    with tarfile.open(sdist) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(srcroot, filter="data")
        else:  # Python < 3.12 without the backported filters
            for m in tf.getmembers():
                p = os.path.normpath(m.name)
                if p.startswith("..") or os.path.isabs(p):
                    raise BuildError("unsafe path in sdist: " + m.name)
            tf.extractall(srcroot)
    src = srcroot / ("%s-%s" % (CAFFE_DIST, CAFFE_VERSION))
    if not (src / "CMakeLists.txt").exists():
        raise BuildError("unexpected sdist layout: no CMakeLists.txt in " + str(src))
    return src


# This fork turned the two per-layer progress lines of Net::Init into debug-only logs
# (DLOG), which a release build drops.  BVLC Caffe prints them with LOG: they are what tells
# which layer a CHECK failure belongs to ("Creating Layer X" comes after the layer object is
# made, "Setting up X" after its SetUp succeeds), so the build restores them.  They are INFO
# lines: quiet with GLOG_minloglevel=1 or higher.
_NET_CPP_LINES = [
    ('    DLOG_IF(INFO, Caffe::root_solver())\n        << "Creating Layer " << layer_param.name();\n',
     '    LOG_IF(INFO, Caffe::root_solver())\n        << "Creating Layer " << layer_param.name();\n'),
    ('    DLOG_IF(INFO, Caffe::root_solver())\n        << "Setting up " << layer_names_[layer_id];\n',
     '    LOG_IF(INFO, Caffe::root_solver())\n        << "Setting up " << layer_names_[layer_id];\n'),
]


def patch_sources(src):
    net_cpp = src / "src" / "caffe" / "net.cpp"
    text = net_cpp.read_text()
    for old, new in _NET_CPP_LINES:
        if text.count(old) != 1:
            raise BuildError("src/caffe/net.cpp does not have the expected logging line %r; "
                             "the source patch needs updating" % old.strip())
        text = text.replace(old, new)
    net_cpp.write_text(text)
    say("patched src/caffe/net.cpp: per-layer 'Creating Layer'/'Setting up' log lines kept in release builds")


def configure(src, build, jobs):
    shim, pyver, np_include, libdirs = make_python_shim(build)
    hdf5_libdir = None
    for d in libdirs:
        if os.path.exists(os.path.join(d, "hdf5", "serial", "libhdf5.so")):
            hdf5_libdir = os.path.join(d, "hdf5", "serial")
            break
    cxx_flags = []  # CMAKE_BUILD_TYPE=Release brings -O3 -DNDEBUG
    if os.path.isdir(HDF5_INCLUDE):
        cxx_flags.append("-I" + HDF5_INCLUDE)
    link_flags = []
    if hdf5_libdir:
        link_flags.append("-L" + hdf5_libdir)
    say("configuring with cmake (python %s, numpy headers %s)" % (pyver, np_include))
    cmd = ["cmake", "-S", src, "-B", build,
           "-DCMAKE_BUILD_TYPE=Release",
           "-DCPU_ONLY=ON", "-DBUILD_python=ON", "-DBUILD_python_layer=OFF",
           "-DANACONDA_HOME=" + str(shim),
           "-DPYTHON_VERSION=" + pyver,
           "-DNUMPY_INCLUDE_DIR=" + np_include,
           "-DPYTHON_INCLUDE_DIRS=" + sysconfig.get_paths()["include"],
           "-DCMAKE_CXX_FLAGS=" + " ".join(cxx_flags),
           "-DCMAKE_SHARED_LINKER_FLAGS=" + " ".join(link_flags)]
    protoc = find_protoc()
    if protoc:
        say("protoc: %s (matches the protobuf headers)" % protoc)
        cmd += ["-DProtobuf_PROTOC_EXECUTABLE=" + protoc]
    log = build / "configure.log"
    with open(log, "w") as f:
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=_build_env())
    if r.returncode != 0:
        raise BuildError("cmake configure failed (exit %d); last lines of %s:\n%s"
                         % (r.returncode, log, _tail(log, 30)))


def _tail(path, n):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def compile_pycaffe(build, jobs, verbose=False):
    say("compiling target pycaffe with %d job(s); full output in %s" % (jobs, build / "build.log"))
    log = build / "build.log"
    cmd = ["cmake", "--build", str(build), "--target", "pycaffe", "--", "-j%d" % jobs]
    last_shown = -100
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", env=_build_env())
        for line in p.stdout:
            f.write(line)
            if verbose:
                sys.stdout.write(line)
                continue
            # Show progress roughly every 10%, not every object file.
            s = line.lstrip()
            if s.startswith("[") and "%]" in s:
                try:
                    pct = int(s[1:s.index("%]")].strip())
                except ValueError:
                    continue
                if pct >= last_shown + 10:
                    last_shown = pct
                    say("  %3d%% %s" % (pct, s[s.index("%]") + 2:].strip()[:90]))
        rc = p.wait()
    if rc != 0:
        errors = [l for l in Path(log).read_text(errors="replace").splitlines() if "error" in l.lower()]
        raise BuildError("compilation failed (exit %d); first errors:\n%s\nlast lines of %s:\n%s"
                         % (rc, "\n".join(errors[:15]), log, _tail(log, 20)))


# caffe/io.py imports scikit-image and scipy at module level, and caffe/__init__.py imports
# caffe.io, so a plain install needs both just to `import caffe`.  They serve only the
# image-loading helpers (load_image, resize_image, oversample), which tracecap never calls.
# The installed copy imports them on first use instead: with them installed everything
# behaves as upstream; without them the helpers raise an ImportError that says what to install.
_IO_IMPORTS = "import skimage.io\nfrom scipy.ndimage import zoom\n"
_IO_LAZY = '''\
# tracecap build_caffe: scikit-image and scipy are imported on first use (they serve the
# image helpers only), so that `import caffe` does not need them.
class _ImportOnUse(object):
    def __init__(self, top, first, pip_name):
        self._top, self._first, self._pip_name = top, first, pip_name

    def __getattr__(self, attr):
        import importlib
        try:
            importlib.import_module(self._first)
            mod = importlib.import_module(self._top)
        except ImportError as e:
            raise ImportError("caffe.io image helpers need %s (pip install %s): %s"
                              % (self._top, self._pip_name, e))
        try:
            return getattr(mod, attr)
        except AttributeError:
            return importlib.import_module(self._top + "." + attr)


skimage = _ImportOnUse("skimage", "skimage.io", "scikit-image")


def zoom(*args, **kwargs):
    return _ImportOnUse("scipy.ndimage", "scipy.ndimage", "scipy").zoom(*args, **kwargs)
'''


def install_package(src, build, home):
    """Copy the pycaffe package (python files, generated caffe_pb2, _caffe.so) into home/python."""
    pkg_src = src / "python" / "caffe"
    lib = None
    for cand in [build / "lib" / "_caffe.so"] + [Path(p) for p in glob.glob(str(build / "**" / "_caffe*.so"), recursive=True)]:
        if cand.exists():
            lib = cand.resolve()
            break
    if lib is None:
        raise BuildError("built module _caffe.so not found under " + str(build))
    gen_pb2 = build / "include" / "caffe" / "proto" / "caffe_pb2.py"
    if not gen_pb2.exists():
        raise BuildError("generated caffe_pb2.py not found at " + str(gen_pb2))

    stage = home / "python.new"
    if stage.exists():
        shutil.rmtree(stage)
    dest = stage / "caffe"
    say("installing the python package into " + str(home / "python" / "caffe"))
    shutil.copytree(pkg_src, dest, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "test", "imagenet", "*.cpp", "_caffe.so"))
    (dest / "proto").mkdir(exist_ok=True)
    (dest / "proto" / "__init__.py").touch()
    shutil.copy2(gen_pb2, dest / "proto" / "caffe_pb2.py")  # from this build's protoc
    shutil.copy2(lib, dest / "_caffe.so")

    io_py = dest / "io.py"
    text = io_py.read_text()
    if _IO_IMPORTS not in text:
        raise BuildError("caffe/io.py does not have the expected imports; the lazy-import "
                         "rewrite needs updating for this source")
    io_py.write_text(text.replace(_IO_IMPORTS, _IO_LAZY, 1))

    final = home / "python"
    if final.exists():
        shutil.rmtree(final)
    os.replace(stage, final)
    return final


class MissingPythonPackage(BuildError):
    pass


# Python packages pycaffe imports at `import caffe` (module name -> pip name).
PY_DEPS = {"google.protobuf": "protobuf", "six": "six", "numpy": "numpy"}


def ensure_python_deps(allow_install=True):
    """pycaffe needs protobuf, six and numpy in the environment that imports it."""
    import importlib.util
    missing = []
    for mod, pip_name in PY_DEPS.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(pip_name)
    if not missing:
        say("python packages: %s present" % ", ".join(sorted(PY_DEPS.values())))
        return
    say("python packages missing for pycaffe: " + " ".join(missing))
    if not allow_install:
        raise MissingPythonPackage("install them first: %s -m pip install %s"
                                   % (sys.executable, " ".join(missing)))
    try:
        _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + missing)
    except subprocess.CalledProcessError as e:
        raise MissingPythonPackage("pip install %s failed (exit %d)" % (" ".join(missing), e.returncode))


def smoke_test(pydir):
    """Import caffe in a fresh interpreter; return its version string."""
    code = ("import sys; sys.path.insert(0, %r); import caffe; "
            "print(caffe.__version__, caffe.__file__)" % str(pydir))
    env = dict(os.environ, GLOG_minloglevel="2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    if r.returncode != 0:
        err = (r.stderr or r.stdout)[-3000:]
        if "ModuleNotFoundError" in err and "No module named 'caffe" not in err:
            raise MissingPythonPackage("`import caffe` needs a Python package this environment "
                                       "lacks (rebuilding would not help):\n" + err)
        raise BuildError("`import caffe` failed from %s:\n%s" % (pydir, err))
    return r.stdout.strip()


# --------------------------------------------------------------------------- main

def _stamp_difference(stamp_path, wanted):
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return "unreadable stamp"
    diff = ["%s: %s, need %s" % (k, stamp.get(k), v) for k, v in wanted.items() if stamp.get(k) != v]
    return "; ".join(diff) or "its files are missing"


def build(prefix=None, jobs=None, force=False, allow_apt=True, allow_pip=True, keep_build=False,
          verbose=False):
    """Build (or reuse) Caffe under ``prefix``; return the folder to put on sys.path."""
    t0 = time.time()
    root = Path(prefix).expanduser() if prefix else default_home()
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    jobs = jobs or os.cpu_count() or 1
    wanted = wanted_stamp()
    home = root / slot_name(wanted)
    home.mkdir(exist_ok=True)
    say("Caffe %s %s (CPU only, with pycaffe) for %s in %s"
        % (CAFFE_DIST, CAFFE_VERSION, sys.executable, home))

    with open(home / ".lock", "w") as lockf:
        try:
            fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another build holds %s; waiting for it" % (home / ".lock"))
            fcntl.flock(lockf, fcntl.LOCK_EX)

        ensure_apt_packages(allow_install=allow_apt)
        ensure_python_deps(allow_install=allow_pip)

        stamp_path = home / "stamp.json"
        if not force and find_caffe(root):
            say("found a matching build (stamp %s); checking that it imports" % stamp_path)
            try:
                version = smoke_test(home / "python")
            except MissingPythonPackage:
                raise
            except BuildError as e:
                say("the cached build does not import, rebuilding:\n" + str(e))
            else:
                say("ok: caffe %s" % version)
                say("done in %.1f s (cached). Use: sys.path.insert(0, %r)" % (time.time() - t0, str(home / "python")))
                return str(home / "python")
        elif force:
            say("--force: rebuilding")
        elif stamp_path.exists():
            say("existing build does not match (%s); rebuilding" % _stamp_difference(stamp_path, wanted))
        else:
            say("no build yet")

        if stamp_path.exists():
            stamp_path.unlink()
        sdist = fetch_sdist(root)
        src = unpack(sdist, home)
        patch_sources(src)
        build_dir = home / "build"
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir()
        t_build = time.time()
        configure(src, build_dir, jobs)
        compile_pycaffe(build_dir, jobs, verbose=verbose)
        say("compiled in %.1f s" % (time.time() - t_build))
        pydir = install_package(src, build_dir, home)
        version = smoke_test(pydir)
        say("ok: caffe %s" % version)
        stamp = dict(wanted, numpy_include=_numpy_facts()[0], numpy_version=_numpy_facts()[1],
                     python_executable=sys.executable,
                     built_at=time.strftime("%Y-%m-%dT%H:%M:%S"), build_seconds=round(time.time() - t0, 1))
        stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
        if not keep_build:
            say("removing the build tree and unpacked sources (keep them with --keep-build)")
            shutil.rmtree(build_dir, ignore_errors=True)
            shutil.rmtree(home / "src", ignore_errors=True)
        say("done in %.1f s. Use: sys.path.insert(0, %r)" % (time.time() - t0, str(pydir)))
        return str(pydir)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m tracecap.runtimes.build_caffe",
        description="Build Caffe (%s %s, CPU only, with pycaffe) into a cache folder. "
                    "Idempotent: a second run reuses the build." % (CAFFE_DIST, CAFFE_VERSION))
    ap.add_argument("--prefix", help="cache folder (default: $TRACECAP_CAFFE_HOME or ~/.cache/tracecap/caffe)")
    ap.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: all cores)")
    ap.add_argument("--force", action="store_true", help="rebuild even when a matching build exists")
    ap.add_argument("--no-apt", action="store_true", help="never run apt-get; fail if packages are missing")
    ap.add_argument("--no-pip", action="store_true",
                    help="never pip-install pycaffe's python dependencies (protobuf, six); fail if missing")
    ap.add_argument("--keep-build", action="store_true", help="keep the unpacked sources and build tree")
    ap.add_argument("--verbose", "-v", action="store_true", help="show the full compiler output")
    ap.add_argument("--where", action="store_true", help="print the pycaffe folder if built (exit 1 if not) and stop")
    args = ap.parse_args(argv)
    try:
        import numpy  # noqa: F401  (the module is compiled against this environment's numpy)
    except ImportError:
        say("FAILED: numpy is not installed for %s (pip install numpy)" % sys.executable)
        return 1
    if args.where:
        p = find_caffe(args.prefix)
        print(p or "not built")
        return 0 if p else 1
    try:
        build(args.prefix, args.jobs, force=args.force, allow_apt=not args.no_apt, allow_pip=not args.no_pip,
              keep_build=args.keep_build, verbose=args.verbose)
    except BuildError as e:
        say("FAILED: %s" % e)
        return 1
    except subprocess.CalledProcessError as e:
        say("FAILED: command %s exited %d" % (e.cmd, e.returncode))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
