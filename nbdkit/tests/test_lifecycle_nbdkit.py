"""The end of a served image's life: a guest writes through nbdkit-addcow-plugin while
``hydrate=true`` fills the image in, the server stops, and addcow.detach leaves a raw image
file equal to what the export served (``qemu-img compare``); while the server runs, detach is
refused.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import addcow
from test_nbdkit import CS, MISSING, make_image, ok, serve, server, wait_hydrated

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"SKIPPED LOUDLY: missing {', '.join(MISSING)}")


def test_detach_leaves_the_raw_file_the_export_served(tmp_path: Path) -> None:
    size = 24 * CS + 4096
    meta, _ = make_image(tmp_path, size, 20 * CS + 77)
    writes = [(0x30 + i, (i * 5 % 24) * CS + i * 777, 3000 + i * 500) for i in range(8)]
    with server(meta, "hydrate=true", "hydrate-rate=2M") as uri:
        for byte, off, n in writes:
            ok(subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {byte:#x} {off} {n}", uri],
                              capture_output=True, text=True, timeout=120))
        wait_hydrated(meta)
        ok(subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(tmp_path / "exported.raw")],
                          capture_output=True, text=True, timeout=120))
    r = addcow.check(meta)
    assert (r.exit_code, r.allocated_clusters, r.total_clusters) == (0, 25, 25), r
    (tmp_path / "base.raw").unlink()  # not needed any more
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
