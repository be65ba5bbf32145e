#!/usr/bin/env bash
# Builds QEMU 10.0.2's tools (qemu-img, qemu-io, qemu-nbd, qemu-storage-daemon) with the add-cow
# block driver of qemu/ linked against the libaddcow of this tree:
#
#     scripts/qemu-build.sh [LIBBUILD]      # LIBBUILD: libaddcow's meson build dir (build/)
#
# 1. The source: Debian's repack of QEMU 10.0.2 (the only route to it from these machines, see
#    qemu/README.md), fetched with apt-get into a private apt state (the system's sources and
#    lists are not touched), checked against a pinned sha256 and cached in
#    $ADDCOW_QEMU_CACHE (default ~/.cache/libaddcow). The cache only saves the download.
# 2. libaddcow: LIBBUILD is compiled (configured first if needed) and installed into
#    build-qemu/addcow-root (a DESTDIR); QEMU's meson finds it through pkg-config
#    (build-qemu/pkgconfig/addcow.pc, the installed one with its prefix moved there).
# 3. build-qemu/src: the tarball unpacked, qemu/add-cow.patch applied (redone only when the
#    tarball or the patch changed), qemu/add-cow.c copied to block/add-cow.c when it differs.
# 4. build-qemu/venv: meson 1.5.0 and pycotap (QEMU's configure cannot download them offline,
#    and the repack has no bundled wheels).
# 5. build-qemu/build: configure (once) and ninja the four tools. Re-running when nothing
#    changed takes seconds.
# Prints the tools' directory on the last line of stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

qemu_version=10.0.2
tarball=qemu_${qemu_version}+ds.orig.tar.xz
sha256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
out=${ADDCOW_QEMU_BUILD:-$root/build-qemu}
cache=${ADDCOW_QEMU_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libaddcow}
libbuild=${1:-$root/build}
tools=(qemu-img qemu-io qemu-nbd storage-daemon/qemu-storage-daemon)

say() { echo "qemu-build: $*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

sha_ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$sha256" ]]; }

# Debian's deb-src for bookworm-backports, in an apt state of our own (Dir::State::Lists etc.),
# so the system's sources.list and package lists stay as they are.
download_tarball() {
    local dest=$1 tmp
    command -v apt-get >/dev/null || die "apt-get is needed to fetch $tarball"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/qemu-fetch.XXXXXX")
    mkdir -p "$tmp/parts" "$tmp/lists/partial" "$tmp/cache/archives/partial"
    cat >"$tmp/parts/backports-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    local apt=(apt-get -q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$tmp/parts"
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o APT::Sandbox::User=root)
    say "downloading $tarball (Debian bookworm-backports source)"
    (cd "$tmp" && "${apt[@]}" update >/dev/null && "${apt[@]}" source --tar-only qemu >/dev/null) ||
        { rm -rf "$tmp"; die "apt-get source --tar-only qemu failed"; }
    sha_ok "$tmp/$tarball" || { rm -rf "$tmp"; die "$tarball missing or its sha256 is not $sha256 (the suite moved on? qemu/README.md)"; }
    mv "$tmp/$tarball" "$dest"
    rm -rf "$tmp"
}

# The verified tarball's path: from the cache, else downloaded into it (or into build-qemu/ when
# the cache cannot be written).
fetch() {
    local dir
    for dir in "$cache" "$out/cache"; do
        sha_ok "$dir/$tarball" && { echo "$dir/$tarball"; return; }
    done
    for dir in "$cache" "$out/cache"; do
        if mkdir -p "$dir" 2>/dev/null && [[ -w $dir ]]; then
            download_tarball "$dir/$tarball"
            echo "$dir/$tarball"
            return
        fi
    done
    die "no writable cache directory ($cache, $out/cache)"
}

# libaddcow built from this tree and installed into $out/addcow-root.
install_libaddcow() {
    if [[ ! -f $libbuild/meson-private/coredata.dat ]]; then
        meson setup "$libbuild" >&2 || die "meson setup $libbuild"
    fi
    meson compile -C "$libbuild" >&2 || die "meson compile -C $libbuild"
    meson install -C "$libbuild" --destdir "$out/addcow-root" --quiet >&2 ||
        die "meson install -C $libbuild"
    local pc prefix
    pc=$(find "$out/addcow-root" -name addcow.pc -print -quit)
    [[ -n $pc ]] || die "no addcow.pc under $out/addcow-root"
    # addcow.pc relocated into the DESTDIR (PKG_CONFIG_SYSROOT_DIR would move glib's paths too).
    prefix=$(sed -n 's/^prefix=//p' "$pc")
    mkdir -p "$out/pkgconfig"
    sed "s|^prefix=.*|prefix=$out/addcow-root$prefix|" "$pc" >"$out/pkgconfig/addcow.pc.new"
    cmp -s "$out/pkgconfig/addcow.pc.new" "$out/pkgconfig/addcow.pc" ||
        mv "$out/pkgconfig/addcow.pc.new" "$out/pkgconfig/addcow.pc"
    rm -f "$out/pkgconfig/addcow.pc.new"
    export PKG_CONFIG_PATH=$out/pkgconfig
    pkg-config --exists addcow || die "pkg-config does not find addcow in $PKG_CONFIG_PATH"
}

# build-qemu/src/qemu-10.0.2, patched; unpacked again when the tarball or the patch changed.
prepare_source() {
    local tar=$1 src=$out/src/qemu-$qemu_version stamp want
    want="$sha256 $(sha256sum qemu/add-cow.patch | cut -d' ' -f1)"
    stamp=$out/src/stamp
    if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        say "unpacking and patching QEMU $qemu_version"
        rm -rf "$out/src" "$out/build"
        mkdir -p "$out/src"
        tar -xJf "$tar" -C "$out/src" --no-same-owner || die "unpacking $tar"
        patch -d "$src" -p1 --quiet --forward <qemu/add-cow.patch || die "qemu/add-cow.patch does not apply"
        echo "$want" >"$stamp"
    fi
    cmp -s qemu/add-cow.c "$src/block/add-cow.c" || cp qemu/add-cow.c "$src/block/add-cow.c"
}

# meson and pycotap for QEMU's configure, which cannot download them here.
prepare_venv() {
    local venv=$out/venv
    [[ -x $venv/bin/meson && -f $venv/stamp ]] && return
    say "creating $venv (meson 1.5.0, pycotap 1.3.1)"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv (apt: python3-venv)"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
        'meson==1.5.0' 'pycotap==1.3.1' >&2 || die "pip install meson pycotap"
    touch "$venv/stamp"
}

configure_qemu() {
    local build=$out/build src=$out/src/qemu-$qemu_version
    [[ -f $build/build.ninja ]] && return
    say "configuring QEMU (tools only, --enable-addcow)"
    rm -rf "$build"
    mkdir -p "$build"
    (cd "$build" && "$src/configure" --python="$out/venv/bin/python3" \
        --without-default-features --target-list= --disable-system --disable-user \
        --enable-tools --disable-docs --disable-install-blobs --disable-download \
        --enable-addcow --extra-cflags=-Werror=implicit-function-declaration) >"$out/configure.log" 2>&1 ||
        { tail -30 "$out/configure.log" >&2; die "configure (log: $out/configure.log)"; }
}

# meson, ninja, pkg-config (scripts/bootstrap.sh); glib's headers for QEMU.
source scripts/bootstrap.sh >&2
if ! pkg-config --exists glib-2.0; then
    [[ -z ${ADDCOW_NO_BOOTSTRAP:-} ]] || die "glib-2.0 development files missing (apt: libglib2.0-dev)"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    say "installing libglib2.0-dev with apt-get"
    "${sudo[@]}" apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq libglib2.0-dev >/dev/null ||
        die "apt-get install libglib2.0-dev failed"
fi
for tool in meson ninja pkg-config python3 patch xz; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
mkdir -p "$out"
tar=$(fetch)
install_libaddcow
prepare_source "$tar"
prepare_venv
configure_qemu
ninja -C "$out/build" "${tools[@]}" >&2 || die "ninja (QEMU's tools)"
echo "$out/build"
