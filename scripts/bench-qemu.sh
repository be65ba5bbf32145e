#!/usr/bin/env bash
# qemu-img bench through QEMU's add-cow driver (qemu/add-cow.c) against its closest peer, qcow2
# with an external data file (64 KiB clusters, same backing file, same directory), with the
# patched tools of scripts/qemu-build.sh:
#
#   bash scripts/bench-qemu.sh [SIZE_MIB] [COUNT]     # defaults 256 MiB, 20000 requests
#
# Cases, 4 KiB requests at queue depth 1 and 32: random-ish (strided) reads and writes of
# allocated clusters (the image fully written first), and allocating writes (one request per
# unallocated cluster: copy-on-write of the rest of a 64 KiB cluster from the backing file;
# with 4 KiB clusters, add-cow layout 2 against qcow2 with 4 KiB clusters, no copy). Then
# depth 256 over unallocated clusters with overlapping requests, which must complete (no
# hang). Prints requests per second (median of ROUNDS runs, default 3) and the add-cow/qcow2 ratio. Not part of the test command:
# CI does not time things. TMPDIR chooses where the files go.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-256}
count=${2:-20000}
qb=$(bash scripts/qemu-build.sh build 2>/dev/null | tail -1)
img=$qb/qemu-img
dir=$(mktemp -d "${TMPDIR:-/tmp}/bench-qemu.XXXXXX")
trap 'rm -rf "$dir"' EXIT
size=$((size_mib << 20))

head -c "$size" /dev/urandom >"$dir/base.raw"

# fresh FMT CLUSTER: a new image over base.raw, nothing allocated (add-cow: layout 1 for
# 64 KiB clusters, layout 2 otherwise).
fresh() {
    local layout=1
    [[ $2 == 65536 ]] || layout=2
    rm -f "$dir"/t.* "$dir"/d.*
    case $1 in
    add-cow) "$img" create -q -f add-cow -o image_file=d.raw,backing_file=base.raw,backing_fmt=raw,layout=$layout,cluster_size=$2 \
        "$dir/t.img" "$size" ;;
    qcow2) "$img" create -q -f qcow2 -o data_file="$dir/d.raw",cluster_size=$2 -b base.raw -F raw \
        "$dir/t.img" "$size" ;;
    esac
}

# bench FMT ARGS...: requests per second of one qemu-img bench run.
bench() {
    local fmt=$1 t
    shift
    t=$("$img" bench -f "$fmt" "$@" "$dir/t.img" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p')
    awk -v n="$count" -v t="$t" 'BEGIN { printf "%.0f", n / t }'
}

# One case for both formats: NAME SETUP CLUSTER ARGS...; SETUP is "allocated" or "fresh".
# Each format runs ROUNDS times (default 3), alternating, on a fresh image; the median counts.
row() {
    local name=$1 setup=$2 cluster=$3 a=() q=() i
    shift 3
    for ((i = 0; i < ${ROUNDS:-3}; i++)); do
        for fmt in add-cow qcow2; do
            fresh "$fmt" "$cluster"
            if [[ $setup == allocated ]]; then
                "$img" bench -q -f "$fmt" -w -c $((size / 1048576)) -s 1M -d 4 "$dir/t.img" >/dev/null
            fi
            r=$(bench "$fmt" -c "$count" "$@")
            [[ $fmt == add-cow ]] && a+=("$r") || q+=("$r")
        done
    done
    a=$(printf '%s\n' "${a[@]}" | sort -n | sed -n "$(( (${#a[@]} + 1) / 2 ))p")
    q=$(printf '%s\n' "${q[@]}" | sort -n | sed -n "$(( (${#q[@]} + 1) / 2 ))p")
    printf '%-28s %10s %10s %7s\n' "$name" "$a" "$q" "$(awk -v a="$a" -v q="$q" 'BEGIN { printf "%.2fx", a / q }')"
}

stride=$(( (size - 4096) / count / 4096 * 4096 ))
printf '%-28s %10s %10s %7s\n' "case (4 KiB, req/s)" add-cow qcow2 ratio
for depth in 1 32; do
    row "read allocated  depth $depth" allocated 65536 -d "$depth" -s 4096 -S "$stride"
    row "write allocated depth $depth" allocated 65536 -w -d "$depth" -s 4096 -S "$stride"
done
alloc=$(( size / 65536 < count ? size / 65536 : count ))
count=$alloc
for depth in 1 32; do
    row "allocating 64k cl. depth $depth" fresh 65536 -w -d "$depth" -s 4096 -S 65536
    row "allocating 4k cl. depth $depth" fresh 4096 -w -d "$depth" -s 4096 -S 65536
done
fresh add-cow 65536
timeout 120 "$img" bench -q -f add-cow -w -c "$alloc" -d 256 -s 4096 -S 2048 "$dir/t.img" &&
    echo "depth 256, overlapping allocating writes: completed" ||
    { echo "depth 256: FAILED or hung" >&2; exit 1; }
