#!/usr/bin/env bash
# Checks what `meson install` puts on a system, without touching the system:
#
#     scripts/check-install.sh BUILDDIR
#
# installs BUILDDIR into a temporary DESTDIR, checks the file layout (header, libaddcow.so.X.Y.Z
# with DT_SONAME libaddcow.so.1, the libaddcow.so.1 and libaddcow.so symlinks, libaddcow.a,
# addcow.pc, bin/addcow running `--version`), then builds scripts/pkgconfig-consumer.c with `pkg-config --cflags --libs addcow`
# against the DESTDIR and runs it (shared, with LD_LIBRARY_PATH into the DESTDIR; and static,
# with `pkg-config --static`). Needs meson, cc, pkg-config, readelf. Exits non-zero on any
# problem, saying what.
set -euo pipefail

die() {
    echo "check-install: FAILED: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 BUILDDIR"
here=$(cd "$(dirname "$0")" && pwd)
builddir=$(cd "$1" && pwd) || die "no build directory $1"
[[ -f $builddir/meson-private/coredata.dat ]] || die "$builddir is not a meson build directory"
for tool in meson pkg-config readelf "${CC:-cc}"; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
cc=${CC:-cc}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/addcow-check-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
destdir=$tmp/destdir

meson install -C "$builddir" --destdir "$destdir" --quiet || die "meson install failed"

# prefix, libdir, includedir as configured (libdir and includedir may be relative to prefix).
read -r prefix libdir includedir bindir < <(meson introspect "$builddir" --buildoptions |
    python3 -c '
import json, os, sys
o = {x["name"]: x["value"] for x in json.load(sys.stdin)}
p = o["prefix"]
print(p, os.path.join(p, o["libdir"]), os.path.join(p, o["includedir"]), os.path.join(p, o["bindir"]))
') || die "meson introspect failed"
lib=$destdir$libdir
inc=$destdir$includedir
echo "check-install: prefix $prefix, libdir $libdir, includedir $includedir"

# Layout.
[[ -f $inc/addcow.h ]] || die "$inc/addcow.h not installed"
cmp -s "$inc/addcow.h" "$here/../include/addcow.h" || die "installed addcow.h differs from include/addcow.h"
real=$(cd "$lib" && ls libaddcow.so.*.*.* 2>/dev/null) || die "no $lib/libaddcow.so.X.Y.Z installed"
[[ $(wc -w <<<"$real") -eq 1 ]] || die "more than one versioned library: $real"
[[ -f $lib/$real && ! -L $lib/$real ]] || die "$lib/$real is not a regular file"
[[ -L $lib/libaddcow.so.1 ]] || die "$lib/libaddcow.so.1 is not a symlink"
[[ $(readlink "$lib/libaddcow.so.1") == "$real" ]] || die "libaddcow.so.1 -> $(readlink "$lib/libaddcow.so.1"), expected $real"
[[ -L $lib/libaddcow.so ]] || die "$lib/libaddcow.so is not a symlink"
[[ $(readlink "$lib/libaddcow.so") == libaddcow.so.1 ]] || die "libaddcow.so -> $(readlink "$lib/libaddcow.so"), expected libaddcow.so.1"
soname=$(readelf -d "$lib/$real" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ $soname == libaddcow.so.1 ]] || die "$real has SONAME '$soname', expected libaddcow.so.1"
[[ -f $lib/libaddcow.a ]] || die "$lib/libaddcow.a not installed"
cli=$destdir$bindir/addcow
[[ -f $cli && -x $cli ]] || die "$cli (the addcow command) not installed"
cli_version=$("$cli" --version) || die "$cli --version failed"
[[ $cli_version == "addcow $(meson introspect "$builddir" --projectinfo | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')" ]] ||
    die "$cli --version says '$cli_version', not the project version"
echo "check-install: $cli_version"
pcdir=$lib/pkgconfig
[[ -f $pcdir/addcow.pc ]] || die "$pcdir/addcow.pc not installed"
# The symbol table is read once: `readelf | grep -q` fails under pipefail when grep stops early
# and readelf dies of SIGPIPE.
syms=$(readelf --dyn-syms -W "$lib/$real") || die "readelf $real failed"
for sym in addcow_open addcow_create addcow_is_allocated addcow_last_error; do
    grep -qw "$sym" <<<"$syms" || die "$real does not export $sym"
done
echo "check-install: layout OK:"
(cd "$destdir" && find . \( -type l -printf '  %p -> %l\n' \) -o \( -type f -printf '  %p\n' \) | sort)

# pkg-config against the DESTDIR: the sysroot is prepended to -I and -L; keep even system dirs.
pc() {
    PKG_CONFIG_PATH=$pcdir PKG_CONFIG_LIBDIR=$pcdir PKG_CONFIG_SYSROOT_DIR=$destdir \
        PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1 pkg-config "$@"
}
pc --exists addcow || die "pkg-config does not find addcow in $pcdir"
[[ $(pc --modversion addcow) == "$(meson introspect "$builddir" --projectinfo | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')" ]] ||
    die "addcow.pc version $(pc --modversion addcow) is not the project version"
cflags=$(pc --cflags addcow)
libs=$(pc --libs addcow)
static_libs=$(pc --static --libs addcow)
echo "check-install: pkg-config --cflags --libs addcow: $cflags $libs"
[[ " $cflags " == *" -I$inc "* ]] || die "--cflags '$cflags' does not point at $inc"
[[ " $libs " == *" -L$lib "* ]] || die "--libs '$libs' does not point at $lib"

# Shared: linked by SONAME, loaded from the DESTDIR.
# shellcheck disable=SC2086 # word splitting of pkg-config output is intended
"$cc" -Wall -Wextra -Werror -o "$tmp/consumer" "$here/pkgconfig-consumer.c" $cflags $libs ||
    die "compiling against the installed library failed"
grep -q 'NEEDED.*\[libaddcow\.so\.1\]' <<<"$(readelf -d "$tmp/consumer")" ||
    die "consumer does not need libaddcow.so.1"
resolved=$(LD_LIBRARY_PATH=$lib ldd "$tmp/consumer" | awk '$1 == "libaddcow.so.1" { print $3 }')
[[ $resolved == "$lib/libaddcow.so.1" ]] || die "libaddcow.so.1 resolves to '$resolved', not into the DESTDIR"
echo -n "check-install: shared: "
LD_LIBRARY_PATH=$lib "$tmp/consumer" || die "the consumer failed against the installed shared library"

# Static: pkg-config --static must name every library libaddcow.a needs.
# shellcheck disable=SC2086
"$cc" -Wall -Wextra -Werror -o "$tmp/consumer-static" "$here/pkgconfig-consumer.c" $cflags \
    ${static_libs/-laddcow/-l:libaddcow.a} || die "static link with '$static_libs' failed"
if grep -q 'libaddcow' <<<"$(readelf -d "$tmp/consumer-static")"; then
    die "the static consumer still needs libaddcow.so"
fi
echo -n "check-install: static: "
"$tmp/consumer-static" || die "the consumer failed against the installed static library"

echo "check-install: OK"
