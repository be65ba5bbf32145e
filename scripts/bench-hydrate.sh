#!/usr/bin/env bash
# Hydration throughput and its cost to guests (issue 11, "Tests and measures"): an image of
# SIZE (default 1 GiB) over a backing file of random data, hydrated
#   - by Image.hydrate (the primitive, one call through the Python binding), then a flush;
#   - by the background job (HydrateJob, 1 MiB batches, no rate limit), which flushes at its end;
# against
#   - `cp --sparse=never` of the backing file, then `sync` of the copy: the physical limit of a
#     copy on this machine;
#   - QEMU flattening the qcow2 twin (external data file, same backing file):
#     `qemu-img rebase -b ''`, then `sync` of the data file.
# Every copy ends durable, and the backing file is read once first so that all of them start
# with it in the page cache. Then guest 4 KiB random writes on a fresh image, with and without
# a job hydrating beside them: median and 99th percentile latency. Then write-zeroes and
# discard over the whole image in 1 MiB requests, then a flush, against fallocate(2) on a raw
# copy of the backing file (the same requests, then fsync): on a hydrated image (discard;
# write-zeroes with and without MAY_UNMAP) and on a fresh one (nothing allocated: clusters are
# allocated without copying the backing file).
#
#   bash scripts/bench-hydrate.sh [SIZE_MIB]
#
# Not part of scripts/test.sh: CI does not time things.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}

cargo build --release --quiet
lib="${CARGO_TARGET_DIR:-$PWD/target}/release/libaddcow.so"
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/addcow-bench-hydrate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

head -c $((size_mib << 20)) /dev/urandom >"$tmp/base.raw"
# Written back before any timing (its writeback would slow the first run), then cached.
sync "$tmp/base.raw"
cat "$tmp/base.raw" >/dev/null

seconds() { # seconds COMMAND...: wall time of COMMAND
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
report() { # report NAME SECONDS
    printf '%-34s %7.2f s  %8.1f MiB/s\n' "$1" "$2" "$(echo "$size_mib / $2" | bc -l)"
}

cp_sync() { cp --sparse=never "$tmp/base.raw" "$tmp/copy.raw" && sync "$tmp/copy.raw"; }
report "cp --sparse=never + sync" "$(seconds cp_sync)"
rm -f "$tmp/copy.raw"

if command -v qemu-img >/dev/null; then
    (cd "$tmp" && qemu-img create -q -f qcow2 -o data_file=twin.raw,cluster_size=65536 \
        -b base.raw -F raw twin.qcow2 "${size_mib}M")
    # From the image's directory: QEMU resolves the relative data file name against it.
    rebase() { (cd "$tmp" && qemu-img rebase -q -f qcow2 -b '' twin.qcow2 && sync twin.raw); }
    report "qemu-img rebase -b '' (qcow2)" "$(seconds rebase)"
    rm -f "$tmp/twin.qcow2" "$tmp/twin.raw"
else
    echo "qemu-img not found: no qcow2 comparison"
fi

ADDCOW_LIB="$lib" PYTHONPATH="$PWD/python" python3 - "$tmp" "$size_mib" <<'EOF'
import os, random, statistics, sys, time
import addcow

tmp, size = sys.argv[1], int(sys.argv[2]) << 20

def fresh(name):
    path = os.path.join(tmp, name + ".add-cow")
    for f in os.listdir(tmp):  # the earlier runs' images: their space back before this one
        if f != "base.raw":
            os.remove(os.path.join(tmp, f))
    os.sync()
    addcow.create(path, name + ".raw", backing_file="base.raw", size=size)
    return addcow.open(path, "r+")

def report(name, secs):
    print(f"{name:<34} {secs:7.2f} s  {size / secs / 2**20:8.1f} MiB/s")

with fresh("prim") as img:
    t = time.monotonic()
    img.hydrate()
    img.flush()
    report("libaddcow Image.hydrate + flush", time.monotonic() - t)
with fresh("job") as img:
    t = time.monotonic()
    with img.hydrate_start() as job:
        job.wait()
        p = job.progress
    report("libaddcow job (1 MiB batches)", time.monotonic() - t)
    print(f"{'':34} job's own rate {p.bytes_per_sec / 2**20:.1f} MiB/s, {p.copied} clusters")

def latencies(img, n=3000):
    rng = random.Random(1)
    buf = os.urandom(4096)
    out = []
    for _ in range(n):
        off = rng.randrange(size // 4096) * 4096
        t = time.perf_counter()
        img.write(off, buf)
        out.append(time.perf_counter() - t)
    out.sort()
    return out[len(out) // 2] * 1e6, out[len(out) * 99 // 100] * 1e6

with fresh("lat0") as img:
    p50, p99 = latencies(img)
print(f"guest 4 KiB random writes, alone:          p50 {p50:7.1f} us  p99 {p99:8.1f} us")
with fresh("lat1") as img:
    with img.hydrate_start() as job:
        p50, p99 = latencies(img)
        still = job.progress.state == addcow.JobState.RUNNING
print(f"guest 4 KiB random writes, job hydrating:  p50 {p50:7.1f} us  p99 {p99:8.1f} us"
      + ("" if still else "  (the job finished during the run)"))

# Write-zeroes and discard against fallocate(2) on a raw file.
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10
MIB = 1 << 20

def raw_fallocate(mode):
    path = os.path.join(tmp, "raw.raw")
    with open(os.path.join(tmp, "base.raw"), "rb") as src, open(path, "wb") as dst:
        while chunk := src.read(64 * MIB):
            dst.write(chunk)
        os.fsync(dst.fileno())
    fd = os.open(path, os.O_RDWR)
    try:
        t = time.monotonic()
        for off in range(0, size, MIB):
            if libc.fallocate(fd, mode | KEEP_SIZE, off, MIB) != 0:
                raise OSError(ctypes.get_errno(), "fallocate")
        os.fsync(fd)
        return time.monotonic() - t
    finally:
        os.close(fd)
        os.remove(path)

def library(name, hydrated, op):
    with fresh(name) as img:
        if hydrated:
            img.hydrate()
            img.flush()
        t = time.monotonic()
        for off in range(0, size, MIB):
            op(img, off)
        img.flush()
        return time.monotonic() - t

print("whole image in 1 MiB requests, then flush/fsync:")
report("fallocate PUNCH_HOLE (raw file)", raw_fallocate(PUNCH_HOLE))
report("discard (hydrated image)", library("d1", True, lambda i, o: i.discard(o, MIB)))
report("write_zeroes MAY_UNMAP (hydrated)",
       library("z1", True, lambda i, o: i.write_zeroes(o, MIB, may_unmap=True)))
report("fallocate ZERO_RANGE (raw file)", raw_fallocate(ZERO_RANGE))
report("write_zeroes (hydrated image)", library("z2", True, lambda i, o: i.write_zeroes(o, MIB)))
report("discard (fresh image)", library("d2", False, lambda i, o: i.discard(o, MIB)))
report("write_zeroes (fresh image)", library("z3", False, lambda i, o: i.write_zeroes(o, MIB)))
EOF
