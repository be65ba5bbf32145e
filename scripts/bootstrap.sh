# Sourced by scripts/demo.sh and scripts/test.sh (bash, from the repository root): makes sure
# meson (>= 1.0), ninja and pkg-config are on PATH, installing what is missing.
#   - meson and ninja: with pip into a virtualenv under build-tools/ (ignored by git like every
#     build*/ directory; `rm -rf build build-asan` keeps it), or with `pip install --user` when
#     the venv module is missing.
#   - pkg-config, nbdkit, nbdkit-plugin-dev, qemu-utils, libnbd-bin (nbdinfo for the plugin's
#     extents test): with apt-get (as root, or through sudo).
# Set ADDCOW_NO_BOOTSTRAP=1 to only check, never install.

addcow_bootstrap_die() {
    echo "bootstrap: $*" >&2
    return 1
}

# 0 when `meson --version` is at least 1.0.
addcow_meson_ok() {
    local v
    v=$(meson --version 2>/dev/null) || return 1
    [[ ${v%%.*} =~ ^[0-9]+$ ]] && ((${v%%.*} >= 1))
}

addcow_bootstrap() {
    local root venv
    root=$(pwd)
    venv="$root/build-tools/venv"
    # A venv from an earlier run comes first on PATH.
    if [[ -x "$venv/bin/meson" ]]; then
        export PATH="$venv/bin:$PATH"
    fi
    if ! addcow_meson_ok || ! command -v ninja >/dev/null 2>&1; then
        [[ -z ${ADDCOW_NO_BOOTSTRAP:-} ]] || addcow_bootstrap_die "meson >= 1.0 and ninja are required" || return 1
        command -v python3 >/dev/null 2>&1 || addcow_bootstrap_die "python3 is required to install meson and ninja" || return 1
        echo "bootstrap: installing meson and ninja with pip into $venv" >&2
        if { [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"; } &&
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'meson>=1.0' ninja; then
            export PATH="$venv/bin:$PATH"
        else
            echo "bootstrap: no usable venv; falling back to pip install --user" >&2
            rm -rf "$venv"
            python3 -m pip install --quiet --disable-pip-version-check --user 'meson>=1.0' ninja ||
                addcow_bootstrap_die "pip install --user meson ninja failed" || return 1
            export PATH="$(python3 -m site --user-base)/bin:$PATH"
        fi
        addcow_meson_ok || addcow_bootstrap_die "meson >= 1.0 still not found after installing it" || return 1
        command -v ninja >/dev/null 2>&1 || addcow_bootstrap_die "ninja still not found after installing it" || return 1
    fi
    # Debian packages: pkg-config, and nbdkit with its plugin header for nbdkit/ (the plugin and
    # its interop tests).
    local apt=()
    command -v pkg-config >/dev/null 2>&1 || apt+=(pkg-config)
    command -v nbdkit >/dev/null 2>&1 || apt+=(nbdkit)
    command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || apt+=(qemu-utils)
    [[ -f /usr/include/nbdkit-plugin.h ]] || apt+=(nbdkit-plugin-dev)
    command -v nbdinfo >/dev/null 2>&1 || apt+=(libnbd-bin)
    if ((${#apt[@]})); then
        [[ -z ${ADDCOW_NO_BOOTSTRAP:-} ]] || addcow_bootstrap_die "missing: ${apt[*]}" || return 1
        local sudo=()
        if [[ $(id -u) != 0 ]]; then
            command -v sudo >/dev/null 2>&1 || addcow_bootstrap_die "installing ${apt[*]} needs root" || return 1
            sudo=(sudo)
        fi
        command -v apt-get >/dev/null 2>&1 || addcow_bootstrap_die "${apt[*]} missing and there is no apt-get to install them" || return 1
        echo "bootstrap: installing ${apt[*]} with apt-get" >&2
        "${sudo[@]}" apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${apt[@]}" >/dev/null ||
            addcow_bootstrap_die "apt-get install ${apt[*]} failed" || return 1
        command -v pkg-config >/dev/null 2>&1 || addcow_bootstrap_die "pkg-config still not found after installing it" || return 1
    fi
    echo "bootstrap: meson $(meson --version), ninja $(ninja --version), pkg-config $(pkg-config --version)" >&2
}

addcow_bootstrap
