"""Finding libaddcow: $ADDCOW_LIB, beside the package, the system loader; a clear error."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import skip_unless_ci

import addcow
from addcow import _lib


def _real_lib() -> str:
    path = os.environ.get("ADDCOW_LIB") or addcow.library_path
    if not os.path.isfile(path):
        skip_unless_ci("the loaded libaddcow is not a file path")
    return path


def test_nothing_found_names_every_place(tmp_path: Path) -> None:
    with pytest.raises(_lib.LibraryNotFoundError) as e:
        _lib.load_library(
            env="/nonexistent/dir/libaddcow.so",
            package_dir=str(tmp_path),
            system_names=["libaddcow-test-missing.so.9"],
            find_library=lambda name: None,
        )
    err = e.value
    assert isinstance(err, ImportError)
    msg = str(err)
    for place in (
        "ADDCOW_LIB=/nonexistent/dir/libaddcow.so",
        str(tmp_path / "libaddcow.so*"),
        "find_library('addcow')",
        "libaddcow-test-missing.so.9",
    ):
        assert place in msg
    assert [p for p, _ in err.tried][0] == "ADDCOW_LIB=/nonexistent/dir/libaddcow.so"
    assert len(err.tried) == 4


def test_a_library_that_is_not_libaddcow_is_rejected(tmp_path: Path) -> None:
    libc = ctypes.util.find_library("c")
    if not libc:
        skip_unless_ci("no libc found")
    with pytest.raises(_lib.LibraryNotFoundError) as e:
        _lib.load_library(env=libc, package_dir=str(tmp_path), system=False)
    assert "addcow_probe" in str(e.value)


def test_beside_the_package(tmp_path: Path) -> None:
    shutil.copy(_real_lib(), tmp_path / "libaddcow.so.1")
    dll, where = _lib.load_library(env="", package_dir=str(tmp_path), system=False)
    assert where == str(tmp_path / "libaddcow.so.1")
    assert dll.addcow_version().decode() == addcow.version()


def test_env_var_comes_first(tmp_path: Path) -> None:
    (tmp_path / "libaddcow.so").write_bytes(b"not an ELF file")
    real = _real_lib()
    _, where = _lib.load_library(env=real, package_dir=str(tmp_path), system=False)
    assert where == real


def test_broken_env_var_falls_back_with_a_warning(tmp_path: Path) -> None:
    shutil.copy(_real_lib(), tmp_path / "libaddcow.so")
    with pytest.warns(RuntimeWarning, match="ADDCOW_LIB"):
        _, where = _lib.load_library(
            env=str(tmp_path / "missing.so"), package_dir=str(tmp_path), system=False
        )
    assert where == str(tmp_path / "libaddcow.so")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _lib.load_library(env="", package_dir=str(tmp_path), system=False)


def _system_has_libaddcow() -> bool:
    """Whether a fresh interpreter (nothing loaded yet: dlopen matches loaded SONAMEs) finds
    libaddcow through the system loader."""
    code = (
        "import ctypes, ctypes.util, sys\n"
        "if ctypes.util.find_library('addcow'): sys.exit(0)\n"
        "for n in ('libaddcow.so.1', 'libaddcow.so'):\n"
        "    try: ctypes.CDLL(n); sys.exit(0)\n"
        "    except OSError: pass\n"
        "sys.exit(1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ADDCOW_LIB"}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_import_fails_with_a_clear_error(tmp_path: Path) -> None:
    """`import addcow` in a fresh interpreter, with nothing to find, raises the error."""
    if _system_has_libaddcow():
        skip_unless_ci("the system loader finds a libaddcow")
    pkg = Path(addcow.__file__).parent
    shutil.copytree(pkg, tmp_path / "addcow", ignore=shutil.ignore_patterns("libaddcow.so*", "__pycache__"))
    env = dict(os.environ, ADDCOW_LIB="/nonexistent/libaddcow.so", PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", "import addcow"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "LibraryNotFoundError" in proc.stderr
    assert "/nonexistent/libaddcow.so" in proc.stderr
    assert str(tmp_path / "addcow" / "libaddcow.so*") in proc.stderr
    assert "find_library('addcow')" in proc.stderr
    err = proc.stderr
    assert err.index("system loader: libaddcow.so.1") < err.index("system loader: libaddcow.so:")
    # and with ADDCOW_LIB pointing at the real library, the same copy imports fine
    env["ADDCOW_LIB"] = _real_lib()
    proc = subprocess.run(
        [sys.executable, "-c", "import addcow; print(addcow.version())"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == addcow.version()
