#!/usr/bin/env bash
# One-command, idempotent host preparation for migrate (Debian 12, run as root).
# Installs system packages, builds CRIU >= 4.2 from Debian's source package only when
# the installed criu is older or fails `criu check`, installs pycriu into the project's
# venv, and the project itself (editable, with test dependencies).
# Environment: VENV (default ROOT/.venv), MIGRATE_EXTRAS (pip extras, default "test"; empty
# for a production host), MIGRATE_CACHE. The last line says whether anything changed, so
# configuration management (playbooks/prepare.yml) can report changes truthfully.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
CACHE="${MIGRATE_CACHE:-/var/cache/migrate-setup}"
CRIU_MIN="4.2"
STAMP="$VENV/.migrate-setup-stamp"
EXTRAS="${MIGRATE_EXTRAS-test}"
CHANGED=0

log() { printf '[setup] %s\n' "$*" >&2; }
changed() { CHANGED=1; log "$@"; }

[ "$(id -u)" = 0 ] || { echo "setup must run as root (it installs packages and builds CRIU)" >&2; exit 2; }

SYS_PKGS=(python3 python3-venv docker.io containerd runc iptables openssh-server openssh-client iproute2 busybox-static
  gcc libc6-dev make zstd procps psmisc kmod ca-certificates dpkg-dev
  libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
  libprotobuf-c-dev libprotobuf-dev pkgconf protobuf-c-compiler protobuf-compiler
  python3-protobuf uuid-dev libaio-dev)

missing_pkgs() {
  local p out=()
  for p in "${SYS_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out+=("$p")
  done
  echo "${out[@]:-}"
}

install_system_packages() {
  local missing
  missing="$(missing_pkgs)"
  if [ -z "$missing" ]; then log "system packages present"; return; fi
  changed "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

version_ge() { # version_ge A B: A >= B
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

criu_ok() {
  local bin="$1" v
  [ -x "$bin" ] || return 1
  v="$("$bin" --version 2>/dev/null | awk '/^Version:/{print $2}')"
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
  "$bin" check >/dev/null 2>&1
}

# The mirror URI comes from the system's own apt sources: no host name is written here.
mirror_uri() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources)"
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//){print $i; exit}}' /etc/apt/sources.list)"
  fi
  [ -n "$uri" ] || { echo "cannot find a Debian mirror URI in the apt sources" >&2; return 1; }
  # Use the debian archive itself, not the security one.
  echo "${uri%-security}"
}

fetch_criu_source() {
  local src="$CACHE/src" uri
  if compgen -G "$src/criu_*.orig.tar.*" >/dev/null; then return; fi
  mkdir -p "$src" "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial" "$CACHE/apt/etc"
  uri="$(mirror_uri)"
  printf 'deb-src [trusted=yes] %s sid main\n' "$uri" > "$CACHE/apt/etc/sid-src.list"
  local opts=(-o "Dir::Etc::SourceList=$CACHE/apt/etc/sid-src.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt"
    -o "Acquire::AllowInsecureRepositories=true" -o "APT::Get::AllowUnauthenticated=true")
  log "fetching CRIU source package (sid) from the system's mirror"
  apt-get "${opts[@]}" update -qq
  (cd "$src" && apt-get "${opts[@]}" source --download-only criu >/dev/null 2>&1 || true)
  compgen -G "$src/criu_*.orig.tar.*" >/dev/null || { echo "could not download CRIU's source package" >&2; return 1; }
}

build_criu() {
  local src="$CACHE/src" tree="$CACHE/criu-src"
  fetch_criu_source
  if [ ! -x "$tree/criu/criu" ]; then
    rm -rf "$tree"; mkdir -p "$tree"
    tar -xf "$(ls "$src"/criu_*.orig.tar.* | head -n1)" -C "$tree" --strip-components=1
    log "building CRIU ($(ls "$src"/criu_*.orig.tar.* | head -n1 | xargs basename))"
    make -C "$tree" -j"$(nproc)" criu >"$CACHE/criu-build.log" 2>&1 || { tail -n 30 "$CACHE/criu-build.log" >&2; return 1; }
  fi
  install -m 0755 "$tree/criu/criu" /usr/local/sbin/criu
}

ensure_criu() {
  if criu_ok /usr/local/sbin/criu || criu_ok "$(command -v criu 2>/dev/null || echo /nonexistent)"; then
    log "criu $(criu --version | awk '/^Version:/{print $2}') ok"
  else
    build_criu
    criu_ok /usr/local/sbin/criu || { echo "built criu fails 'criu check'" >&2; /usr/local/sbin/criu check >&2 || true; return 1; }
    changed "installed criu $(/usr/local/sbin/criu --version | awk '/^Version:/{print $2}') to /usr/local/sbin"
  fi
}

ensure_pycriu() {
  if "$VENV/bin/python" -c 'import pycriu, pycriu.images' >/dev/null 2>&1; then return; fi
  local tree="$CACHE/criu-src"
  if [ ! -d "$tree/lib/pycriu" ]; then
    fetch_criu_source
    rm -rf "$tree"; mkdir -p "$tree"
    tar -xf "$(ls "$CACHE"/src/criu_*.orig.tar.* | head -n1)" -C "$tree" --strip-components=1
  fi
  if [ ! -f "$tree/lib/pycriu/rpc_pb2.py" ]; then
    log "generating pycriu"
    make -C "$tree" -j"$(nproc)" lib >"$CACHE/pycriu-build.log" 2>&1 || { tail -n 30 "$CACHE/pycriu-build.log" >&2; return 1; }
  fi
  changed "installing pycriu into $VENV"
  "$VENV/bin/pip" install -q "protobuf<4" "$tree/lib"
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    changed "creating $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
}

ensure_project() {
  local h spec="$ROOT"
  [ -z "$EXTRAS" ] || spec="$ROOT[$EXTRAS]"
  h="$( (cat "$ROOT/pyproject.toml"; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$h" ] && "$VENV/bin/python" -c 'import migrate' 2>/dev/null; then
    log "project installed"; return
  fi
  changed "installing migrate (editable${EXTRAS:+, extras: $EXTRAS})"
  "$VENV/bin/pip" install -q -e "$spec"
  echo "$h" > "$STAMP"
}

sysctls() {
  # CRIU's lazy-pages page server sizes a pipe above the default 1 MiB cap; without
  # CAP_SYS_RESOURCE that fails silently (PLATFORM.md). Root may raise the cap.
  local cur
  cur="$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)"
  if [ "$cur" -lt 4194304 ]; then
    echo 4194304 > /proc/sys/fs/pipe-max-size && changed "fs.pipe-max-size raised to 4 MiB" || true
  fi
  sysctl -qw net.ipv4.ip_forward=1 >/dev/null 2>&1 || true
}

criu_runc_conf() {
  # runc hands CRIU the options in /etc/criu/runc.conf on restore too. Docker (20.10) cannot
  # ask runc to restore file locks (flock, fcntl), and CRIU drops them silently unless
  # `file-locks` is set: the dump side passes it itself, the restore side needs this line.
  local conf=/etc/criu/runc.conf
  if ! grep -qx 'file-locks' "$conf" 2>/dev/null; then
    mkdir -p /etc/criu
    echo 'file-locks' >> "$conf"
    changed "$conf: file-locks (CRIU restores flock/fcntl locks)"
  fi
}

install_system_packages
ensure_criu
ensure_venv
ensure_pycriu
ensure_project
sysctls
criu_runc_conf
if [ "$CHANGED" = 1 ]; then log "ready (changed)"; else log "ready (no changes)"; fi
