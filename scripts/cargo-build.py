#!/usr/bin/env python3
"""Builds libaddcow with cargo for meson (see meson.build) and lays it out like a C library.

    cargo-build.py --manifest-path Cargo.toml --target-dir BUILD/cargo-target --profile release \
        --out-dir BUILD --soversion 1 --lib-version 1.0.0 --depfile BUILD/libaddcow.d

runs `cargo build --lib --profile PROFILE --target-dir DIR` (with `--bin NAME`: `--lib --bin NAME`,
one cargo run for both, and NAME is copied into OUT-DIR too), checks that the cdylib's DT_SONAME is
libaddcow.so.SOVERSION (build.rs sets it), and puts into OUT-DIR:

    libaddcow.so.LIB-VERSION   a copy of the cdylib
    libaddcow.so.SOVERSION     -> libaddcow.so.LIB-VERSION   (the SONAME: what programs load)
    libaddcow.so               -> libaddcow.so.SOVERSION     (what -laddcow finds at link time)
    libaddcow.a                a copy of the staticlib

With --depfile it writes a Makefile-style depfile naming every input of the build (from cargo's
own libaddcow.d, plus Cargo.toml, Cargo.lock, build.rs and cbindgen.toml, which cargo's file
leaves out), so ninja reruns this script only when one of them changed. The outputs are always
rewritten, so their mtimes are newer than the inputs afterwards.

    cargo-build.py --print-version --manifest-path Cargo.toml

prints the package version from Cargo.toml (meson checks it against its project version).

Exits non-zero with a message on stderr on any problem.
"""

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

LIB = "addcow"


def die(msg):
    print(f"cargo-build.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def package_version(manifest):
    """The `version` of the [package] table of Cargo.toml."""
    text = manifest.read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11

        return tomllib.loads(text)["package"]["version"]
    except ImportError:
        pass
    except (KeyError, ValueError) as e:
        die(f"{manifest}: no [package] version: {e}")
    section = None
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"\[([^\]]+)\]", line)
        if m:
            section = m.group(1).strip()
            continue
        m = re.fullmatch(r'version\s*=\s*"([^"]+)"\s*(#.*)?', line)
        if section == "package" and m:
            return m.group(1)
    die(f"{manifest}: no [package] version")


def elf_soname(path):
    """DT_SONAME of an ELF shared object, or None when it has none."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        die(f"{path} is not an ELF file")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
    sections = []
    for i in range(shnum):
        base = shoff + i * shentsize
        if is64:
            _, sh_type, _, _, off, size, link, _, _, entsize = struct.unpack_from(
                end + "IIQQQQIIQQ", data, base
            )
        else:
            _, sh_type, _, _, off, size, link, _, _, entsize = struct.unpack_from(
                end + "IIIIIIIIII", data, base
            )
        sections.append((sh_type, off, size, link, entsize))
    SHT_DYNAMIC, DT_NULL, DT_SONAME = 6, 0, 14
    for sh_type, off, size, link, entsize in sections:
        if sh_type != SHT_DYNAMIC:
            continue
        strtab_off = sections[link][1]
        fmt = end + ("qQ" if is64 else "iI")
        for pos in range(off, off + size, entsize or struct.calcsize(fmt)):
            tag, val = struct.unpack_from(fmt, data, pos)
            if tag == DT_NULL:
                break
            if tag == DT_SONAME:
                stop = data.index(b"\0", strtab_off + val)
                return data[strtab_off + val : stop].decode()
    return None


def parse_cargo_depfile(path):
    """Every prerequisite in cargo's Makefile-style dep-info file."""
    deps = []
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        # "target: dep dep ..." with spaces in names escaped as "\ ".
        m = re.match(r"^(?:\\.|[^:\\])+:(?:\s+(.*))?$", line)
        if not m:
            continue
        rest = m.group(1) or ""
        for dep in re.split(r"(?<!\\)\s+", rest.strip()):
            if dep:
                deps.append(dep.replace("\\ ", " "))
    return deps


def write_depfile(path, target, deps):
    def esc(p):
        return str(p).replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")

    unique = sorted(set(str(d) for d in deps))
    body = " \\\n  ".join(esc(d) for d in unique)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{esc(target)}: \\\n  {body}\n", encoding="utf-8")
    os.replace(tmp, path)


def copy(src, dst):
    """Copies src to dst atomically with a fresh mtime (ninja compares it with the inputs)."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755 if dst.suffix != ".a" else 0o644)
    os.replace(tmp, dst)


def symlink(target, link):
    tmp = link.with_name(link.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest-path", type=Path, required=True, help="the crate's Cargo.toml")
    ap.add_argument("--print-version", action="store_true", help="print the package version and exit")
    ap.add_argument("--cargo", default=os.environ.get("CARGO", "cargo"), help="cargo to run (default: $CARGO or cargo)")
    ap.add_argument("--target-dir", type=Path, help="cargo --target-dir")
    ap.add_argument("--profile", default="release", help="cargo profile: release or dev (debug)")
    ap.add_argument("--out-dir", type=Path, help="where the library files go")
    ap.add_argument("--soversion", help="SONAME major: the cdylib must have SONAME libaddcow.so.SOVERSION")
    ap.add_argument("--lib-version", help="full version of the shared library file name")
    ap.add_argument("--depfile", type=Path, help="depfile to write for ninja")
    ap.add_argument("--depfile-target", help="target name in the depfile (default: the versioned .so)")
    ap.add_argument("--bin", help="also build this binary target (the addcow command) into OUT-DIR")
    ap.add_argument("--verbose", action="store_true", help="let cargo print its progress")
    args = ap.parse_args()

    manifest = args.manifest_path.resolve()
    if not manifest.is_file():
        die(f"no such manifest: {manifest}")
    if args.print_version:
        print(package_version(manifest))
        return
    for name in ("target_dir", "out_dir", "soversion", "lib_version"):
        if getattr(args, name) is None:
            die(f"--{name.replace('_', '-')} is required")
    if not args.lib_version.startswith(args.soversion + "."):
        die(f"--lib-version {args.lib_version} does not start with --soversion {args.soversion}")

    profile = {"debug": "dev"}.get(args.profile, args.profile)
    profile_dir = {"dev": "debug", "test": "debug", "bench": "release"}.get(profile, profile)
    target_dir = args.target_dir.resolve()
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    cmd = [args.cargo, "build", "--lib", "--manifest-path", str(manifest),
           "--target-dir", str(target_dir), "--profile", profile]
    if args.bin:
        cmd += ["--bin", args.bin]
    if not args.verbose:
        cmd.append("--quiet")
    try:
        rc = subprocess.call(cmd)
    except FileNotFoundError:
        die(f"cannot run {args.cargo!r}: not found (install Rust, or set CARGO)")
    if rc != 0:
        die(f"`{' '.join(cmd)}` failed with exit status {rc}")

    built = target_dir / profile_dir
    so, a = built / f"lib{LIB}.so", built / f"lib{LIB}.a"
    for f in (so, a):
        if not f.is_file():
            die(f"cargo did not produce {f} (is crate-type cdylib + staticlib still in Cargo.toml?)")
    soname = f"lib{LIB}.so.{args.soversion}"
    actual = elf_soname(so)
    if actual != soname:
        die(f"{so} has SONAME {actual!r}, expected {soname!r} (build.rs sets it; keep it and meson.build's soversion in step)")

    real = f"lib{LIB}.so.{args.lib_version}"
    copy(so, out_dir / real)
    symlink(real, out_dir / soname)
    symlink(soname, out_dir / f"lib{LIB}.so")
    copy(a, out_dir / f"lib{LIB}.a")
    if args.bin:
        exe = built / args.bin
        if not exe.is_file():
            die(f"cargo did not produce {exe}")
        copy(exe, out_dir / args.bin)

    if args.depfile:
        cargo_dep = built / f"lib{LIB}.d"
        if not cargo_dep.is_file():
            die(f"cargo did not write {cargo_dep}")
        root = manifest.parent
        deps = parse_cargo_depfile(cargo_dep)
        if args.bin:
            deps += parse_cargo_depfile(built / f"{args.bin}.d")
        deps += [manifest] + [root / f for f in ("Cargo.lock", "build.rs", "cbindgen.toml") if (root / f).exists()]
        write_depfile(args.depfile, args.depfile_target or str(out_dir / real), deps)


if __name__ == "__main__":
    main()
