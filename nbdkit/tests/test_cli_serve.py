"""`addcow serve`: the command-line tool running nbdkit with the plugin, driven by QEMU's tools.

ADDCOW_CLI names the `addcow` binary (default: build/addcow, which meson builds beside the
plugin); NBDKIT_PLUGIN the plugin, handed to it as ADDCOW_NBDKIT_PLUGIN. Writes go through
`addcow serve --run 'qemu-io ...'`; the result is read back with `addcow map` and `compare`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("ADDCOW_CLI", ROOT / "build" / "addcow"))
PLUGIN = os.environ.get("NBDKIT_PLUGIN", "")

MISSING = [
    name
    for name, found in (
        ("NBDKIT_PLUGIN", PLUGIN),
        (str(CLI), CLI.is_file()),
        ("nbdkit", shutil.which("nbdkit")),
        ("qemu-io", shutil.which("qemu-io")),
    )
    if not found
]
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI is set and the addcow serve tests cannot run: missing {', '.join(MISSING)}")

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"SKIPPED LOUDLY: missing {', '.join(MISSING)}")


def addcow(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ADDCOW_NBDKIT_PLUGIN=PLUGIN)
    return subprocess.run([str(CLI), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    (tmp_path / "base.raw").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    r = addcow(tmp_path, "create", "-l", "2", "-b", "base.raw", "-o", "img.raw", "o.add-cow")
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_serve_writes_through_qemu_io_and_hydrates(image: Path) -> None:
    r = addcow(image, "serve", "--run", 'qemu-io -f raw -c "write -P 0x5a 65536 4096" "$nbd"', "o.add-cow")
    assert r.returncode == 0, r.stderr
    entries = json.loads(addcow(image, "map", "--output=json", "o.add-cow").stdout)
    own = [(e["start"], e["length"]) for e in entries if e["depth"] == 0]
    assert own == [(65536, 65536)]
    expected = bytearray((image / "base.raw").read_bytes())
    expected[65536:65536 + 4096] = b"\x5a" * 4096
    (image / "expected.raw").write_bytes(bytes(expected))
    assert addcow(image, "compare", "o.add-cow", "expected.raw").returncode == 0

    # --hydrate: the plugin's background job copies the rest while qemu-io reads.
    r = addcow(image, "serve", "--hydrate", "--run", 'qemu-io -f raw -c "read -P 0x5a 65536 4096" "$nbd"', "o.add-cow")
    assert r.returncode == 0, r.stderr + r.stdout


def test_serve_read_only_refuses_writes(image: Path) -> None:
    r = addcow(image, "serve", "-r", "--run", 'qemu-io -f raw -c "write 0 512" "$nbd"', "o.add-cow")
    assert r.returncode != 0 and "Permission denied" in r.stdout + r.stderr, r.stdout + r.stderr
    info = json.loads(addcow(image, "info", "--output=json", "o.add-cow").stdout)
    assert info["format-specific"]["data"]["allocated-clusters"] == 0
