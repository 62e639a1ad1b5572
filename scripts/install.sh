#!/usr/bin/env bash
# Installs keylime-rs with the layout of a distribution package, into / or a staging tree.
#
#   scripts/install.sh [--prefix P] [--destdir DIR] [--build] [--profile release|debug]
#                      [--bindir-from DIR]
#   scripts/install.sh --uninstall [--prefix P] [--destdir DIR]
#
# --prefix     where programs, units, man pages and docs go (default /usr)
# --destdir    a staging root prepended to every path (default: none, the running system)
# --build      build the release binaries first (cargo build --release --locked)
# --profile    take the binaries from target/<profile> (default release)
# --bindir-from  take the binaries from DIR
# --uninstall  remove what an earlier install put there (it keeps a manifest); the operator's
#              files under /etc/keylime stay
#
# Default configs go to /usr/etc/keylime whatever the prefix: that is where the daemons look.
# Nothing is written under /etc. Installing into / also creates the service user and the
# directories (systemd-sysusers, systemd-tmpfiles) when systemd is there, as a package would.
# To run the installed daemons against a staging tree, give them --config-root DIR (or set
# KEYLIME_CONFIG_ROOT=DIR): DIR stands in for / when they look up /usr/etc and /etc.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr
destdir=
build=no
profile=release
bindir_from=
uninstall=no

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit "$1"
}

while (($#)); do
    case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --build) build=yes; shift ;;
    --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
    --bindir-from) bindir_from=${2:?--bindir-from needs a directory}; shift 2 ;;
    --uninstall) uninstall=yes; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install.sh: unknown argument \"$1\"" >&2; usage 2 ;;
    esac
done

case $prefix in
/*) ;;
*) echo "install.sh: --prefix $prefix: must be an absolute path" >&2; exit 2 ;;
esac
if [[ -n $destdir ]]; then
    [[ $uninstall == yes ]] || mkdir -p "$destdir"
    destdir=$(cd "$destdir" && pwd) || exit 1
fi
prefix=${prefix%/}
root="$destdir"
manifest="$root$prefix/share/keylime-rs/install-manifest"

daemons=(keylime_verifier keylime_registrar keylime_agent)
programs=(kctl keylime_tenant "${daemons[@]}")

if [[ $uninstall == yes ]]; then
    if [[ ! -f $manifest ]]; then
        echo "install.sh: $manifest: not found; nothing installed there" >&2
        exit 1
    fi
    # Only what this script installs: files below the prefix or in /usr/etc/keylime, never a
    # path that climbs out (`..`), whatever else the manifest may hold.
    while IFS= read -r path; do
        case $path in
        *..* | "") ;;
        "$prefix"/* | /usr/etc/keylime/*) rm -f -- "$root$path" ;;
        *) echo "install.sh: $manifest: not removing $path (outside $prefix)" >&2 ;;
        esac
    done <"$manifest"
    rm -f -- "$manifest"
    # Directories of this package only; shared ones (bin, man1) stay.
    for dir in "$prefix/share/keylime-rs" "$prefix/share/doc/keylime-rs/docs" \
        "$prefix/share/doc/keylime-rs" /usr/etc/keylime/agent.conf.d /usr/etc/keylime; do
        rmdir -- "$root$dir" 2>/dev/null || true
    done
    echo "removed keylime-rs from ${root:-/}$prefix (the files under /etc/keylime stay)"
    exit 0
fi

if [[ $build == yes ]]; then
    (cd "$repo" && cargo build --release --locked --bins \
        -p kl-verifier -p kl-registrar -p kl-agent -p kctl)
    profile=release
fi
bin_src=${bindir_from:-$repo/target/$profile}
for program in "${programs[@]}"; do
    if [[ ! -x $bin_src/$program ]]; then
        echo "install.sh: $bin_src/$program: not found (build with --build, or pass --profile debug or --bindir-from DIR)" >&2
        exit 1
    fi
done

installed=()
# install_file MODE SOURCE PATH: PATH is the installed path without the destdir.
install_file() {
    install -D -m "$1" -- "$2" "$root$3"
    installed+=("$3")
}
# install_output MODE PATH COMMAND...: the file's content is what COMMAND prints (not a
# pipeline: the manifest is kept in this shell).
install_output() {
    local mode=$1 path=$2 tmp
    shift 2
    tmp=$(mktemp)
    if ! "$@" >"$tmp"; then
        rm -f -- "$tmp"
        echo "install.sh: $path: \`$*\` failed" >&2
        exit 1
    fi
    install_file "$mode" "$tmp" "$path"
    rm -f -- "$tmp"
}

for program in "${programs[@]}"; do
    install_file 0755 "$bin_src/$program" "$prefix/bin/$program"
done

# Units name /usr/bin; another prefix gets its own path.
for daemon in "${daemons[@]}"; do
    dir=${daemon#keylime_}
    install_output 0644 "$prefix/lib/systemd/system/$daemon.service" \
        sed "s|^ExecStart=/usr/bin/|ExecStart=$prefix/bin/|" "$repo/daemons/$dir/$daemon.service"
done
install_file 0644 "$repo/scripts/dist/sysusers.conf" "$prefix/lib/sysusers.d/keylime.conf"
install_file 0644 "$repo/scripts/dist/tmpfiles.conf" "$prefix/lib/tmpfiles.d/keylime.conf"

# Default configs and man pages, rendered by each program from its own option table and clap
# definition.
for daemon in "${daemons[@]}"; do
    component=${daemon#keylime_}
    install_output 0644 "/usr/etc/keylime/$component.conf" "$bin_src/$daemon" --render config
    install_output 0644 "$prefix/share/man/man8/$daemon.8" "$bin_src/$daemon" --render man
done
install_file 0644 "$repo/scripts/dist/agent-run-as.conf" /usr/etc/keylime/agent.conf.d/10-run-as.conf
install_output 0644 /usr/etc/keylime/tenant.conf "$bin_src/kctl" render config
install_output 0644 "$prefix/share/man/man1/kctl.1" "$bin_src/kctl" render man
install_output 0644 "$prefix/share/man/man1/keylime_tenant.1" "$bin_src/keylime_tenant" --render man

install_output 0644 "$prefix/share/bash-completion/completions/kctl" "$bin_src/kctl" completion bash
install_output 0644 "$prefix/share/zsh/vendor-completions/_kctl" "$bin_src/kctl" completion zsh
install_output 0644 "$prefix/share/fish/vendor_completions.d/kctl.fish" "$bin_src/kctl" completion fish

install_file 0644 "$repo/README.md" "$prefix/share/doc/keylime-rs/README.md"
for doc in "$repo"/docs/*.md; do
    install_file 0644 "$doc" "$prefix/share/doc/keylime-rs/docs/$(basename "$doc")"
done

mkdir -p "$(dirname "$manifest")"
# A reinstall keeps what an earlier install listed, so --uninstall still removes files this
# version no longer ships.
{
    printf '%s\n' "${installed[@]}" "${prefix}/share/keylime-rs/install-manifest"
    if [[ -f $manifest ]]; then cat -- "$manifest"; fi
} | sort -u >"$manifest.new"
mv -- "$manifest.new" "$manifest"

# On the running system: the service user and the directories, as a package's scriptlets would.
if [[ -z $destdir ]] && command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$prefix/lib/sysusers.d/keylime.conf"
    systemd-tmpfiles --create "$prefix/lib/tmpfiles.d/keylime.conf"
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
    fi
fi
echo "installed keylime-rs into ${root:-/}$prefix (${#installed[@]} files; manifest $manifest)"
