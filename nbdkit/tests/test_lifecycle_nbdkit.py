"""The end of a served image's life: a guest writes through nbdkit-addcow-plugin, every cluster
gets allocated through the export, the server stops, and addcow.detach leaves a raw image file
equal to what the export served (``qemu-img compare``); while the server runs, detach is
refused.
"""

from __future__ import annotations

import shutil
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import addcow
from test_nbdkit import CS, MISSING, make_image, ok, serve

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"SKIPPED LOUDLY: missing {', '.join(MISSING)}")


def test_detach_leaves_the_raw_file_the_export_served(tmp_path: Path) -> None:
    size = 12 * CS + 4096
    # The backing file covers the whole image with data, so that rewriting the export copies
    # data (never zeros) into every cluster.
    meta, _ = make_image(tmp_path, size, size)
    writes = [f"write -P 0x{0x30 + i:02x} {off} {n}" for i, (off, n) in enumerate(
        [(0, 512), (CS + 100, 3000), (5 * CS - 512, 1024), (12 * CS, 4096)])]
    ok(serve(meta, 'qemu-io -f raw ' + " ".join(f"-c '{w}'" for w in writes) + ' "$uri"'))
    # What the guest sees, then every cluster written back through the export (a hydration).
    ok(serve(meta, 'qemu-img convert -f raw -O raw "$uri" exported.raw'))
    ok(serve(meta, 'qemu-img convert -n -f raw -O raw exported.raw "$uri"'))
    with addcow.open(meta) as img:
        assert img.allocation() == (13, 13)
    r = addcow.check(meta)
    assert (r.exit_code, r.allocated_clusters, r.total_clusters) == (0, 13, 13), r
    addcow.detach(meta, remove=True)
    assert not meta.exists()
    subprocess.run(
        [shutil.which("qemu-img") or "qemu-img", "compare", "-f", "raw", "-F", "raw", "vm.raw", "exported.raw"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )


def test_detach_refuses_while_served(tmp_path: Path) -> None:
    meta, _ = make_image(tmp_path, 2 * CS, 2 * CS)
    ok(serve(meta, 'qemu-img convert -n -f raw -O raw "$uri" "$uri"'))
    detach = f"import addcow; addcow.detach({str(meta)!r}, remove=True)"
    result = serve(meta, f"{sys.executable} -c {shlex.quote(detach)}")
    assert result.returncode != 0 and "in use" in result.stderr, result.stderr
    assert meta.exists()
    addcow.detach(meta, remove=True)
    assert not meta.exists()
