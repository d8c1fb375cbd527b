#!/usr/bin/env bash
# A real container stack for aioknot's tests, on one machine, as root:
#   - a private Docker engine (dockerd) on its own socket, with bridge + NAT networking so that
#     image builds can `pip install` from the package registries;
#   - a base image tagged python:X.Y-slim (X.Y = this machine's python3), made with debootstrap
#     because no registry with base images is reachable;
#   - a local registry (Debian's docker-registry, distribution 2.8) on 127.0.0.1:PORT whose
#     htpasswd auth accepts exactly moto's ECR token (user AWS, password 123456789012-auth-token).
#
# Idempotent: everything is reused when it is already there (state is cached in the state dir).
# Progress goes to stderr. On success, stdout gets eval-able lines:
#   eval "$(bash tests/infra/containers.sh)"
#
# Environment:
#   AIOKNOT_INFRA_DIR            state dir (default /var/cache/aioknot-test-infra)
#   AIOKNOT_TEST_REGISTRY_PORT   registry port on 127.0.0.1 (default 5123)
#   AIOKNOT_DEBIAN_MIRROR        mirror for debootstrap (default: the one apt uses, else deb.debian.org)
#   AIOKNOT_DOCKER_STORAGE_DRIVER  force a storage driver for the private dockerd (default: dockerd's pick)
set -euo pipefail

STATE="${AIOKNOT_INFRA_DIR:-/var/cache/aioknot-test-infra}"
PORT="${AIOKNOT_TEST_REGISTRY_PORT:-5123}"
REGISTRY="127.0.0.1:${PORT}"
REGISTRY_USER="AWS"
REGISTRY_PASSWORD="123456789012-auth-token"
SUITE="bookworm"
# Bump when the way the base image / its rootfs is made changes: it invalidates the cached copy.
RECIPE="aioknot-base-v2"
ROOTFS_RECIPE="rootfs-v1"

log() { printf '[containers.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[containers.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts dockerd); uid is $(id -u)"
command -v python3 >/dev/null || die "python3 not found: cannot tell which Python minor the base image needs"
PY_MINOR="$(python3 -c 'import sys;print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
BASE_IMAGE="python:${PY_MINOR}-slim"

mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
SOCK="$STATE/docker.sock"
DOCKER_HOST_URL="unix://$SOCK"
# unix socket paths are limited to 108 bytes; containerd's socket lives under the exec root.
[ "${#STATE}" -le 60 ] || die "AIOKNOT_INFRA_DIR path is too long for unix sockets (${#STATE} > 60 chars): $STATE"

# One run at a time per state dir. fd 9 is closed in every daemon we start (9>&-), or the
# daemon would hold the lock forever.
exec 9>"$STATE/lock"
if ! flock -n 9; then
    log "another run holds $STATE/lock; waiting"
    flock -w 900 9 || die "timed out waiting for $STATE/lock"
fi

# ---------------------------------------------------------------------------- packages
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }
{ have /usr/bin/docker && have dockerd; } || need_pkgs+=(docker.io)
have containerd || need_pkgs+=(containerd)
have runc || need_pkgs+=(runc)
have iptables || need_pkgs+=(iptables)
have docker-registry || need_pkgs+=(docker-registry)
have debootstrap || need_pkgs+=(debootstrap)
have htpasswd || need_pkgs+=(apache2-utils)
have curl || need_pkgs+=(curl)
have flock || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and there is no apt-get to install them"
    log "installing ${need_pkgs[*]}"
    # Keep the packages' own services (system dockerd on /var/run/docker.sock, a registry on
    # :5000) from starting: we run private instances. Only if no policy is in place already.
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    apt_rc=0
    {
        apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                "${need_pkgs[@]}"
    } >"$STATE/apt.log" 2>&1 || apt_rc=$?
    [ -z "$policy_added" ] || rm -f /usr/sbin/policy-rc.d
    if [ "$apt_rc" != 0 ]; then
        tail -n 30 "$STATE/apt.log" >&2
        die "apt-get failed (exit $apt_rc) installing: ${need_pkgs[*]} (log: $STATE/apt.log)"
    fi
fi
# The Debian CLI matches the Debian engine; /usr/local/bin may hold another `docker`.
DOCKER_CLI=/usr/bin/docker
[ -x "$DOCKER_CLI" ] || DOCKER_CLI="$(command -v docker)"
dk() { "$DOCKER_CLI" -H "$DOCKER_HOST_URL" "$@"; }

# ---------------------------------------------------------------------------- dockerd
# Is pid $2 a live (not zombie) process named $1? (PID 1 here may not reap orphans.)
running() {
    local state
    [ -n "$2" ] && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ] || return 1
    state="$(sed 's/.*) //' "/proc/$2/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != Z ]
}
engine_up() { [ -S "$SOCK" ] && dk version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if engine_up; then
    log "dockerd already answers on $SOCK"
else
    log "starting dockerd on $SOCK"
    mkdir -p "$STATE/docker" "$STATE/exec"
    if [ -f "$STATE/dockerd.pid" ] && running dockerd "$(cat "$STATE/dockerd.pid")"; then
        log "dockerd pid $(cat "$STATE/dockerd.pid") is alive but not answering; waiting for it"
    else
        rm -f "$SOCK" "$STATE/dockerd.pid"
        driver_args=()
        [ -z "${AIOKNOT_DOCKER_STORAGE_DRIVER:-}" ] ||
            driver_args=(--storage-driver "$AIOKNOT_DOCKER_STORAGE_DRIVER")
        # Debian keeps runc/containerd in /usr/sbin and /usr/bin; make sure dockerd finds them.
        PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
            setsid dockerd \
            -H "$DOCKER_HOST_URL" \
            --data-root "$STATE/docker" \
            --exec-root "$STATE/exec" \
            --pidfile "$STATE/dockerd.pid" \
            "${driver_args[@]}" \
            </dev/null >>"$STATE/dockerd.log" 2>&1 9>&- &
        disown || true
    fi
    for _ in $(seq 1 120); do
        engine_up && break
        sleep 0.5
    done
    if ! engine_up; then
        tail -n 30 "$STATE/dockerd.log" >&2 || true
        die "dockerd did not come up on $SOCK (log: $STATE/dockerd.log)"
    fi
    log "dockerd $(dk version --format '{{.Server.Version}}') up ($(dk info --format '{{.Driver}}') storage)"
fi

# ---------------------------------------------------------------------------- base image
image_recipe() { dk image inspect --format '{{index .Config.Labels "org.aioknot.recipe"}}' "$1" 2>/dev/null || true; }
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[ -f "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE"
CA_SUM="$(sha256sum "$CA_BUNDLE" | cut -c1-16)"
WANT_RECIPE="$RECIPE-$SUITE-py$PY_MINOR-ca$CA_SUM"

if [ "$(image_recipe "$BASE_IMAGE")" = "$WANT_RECIPE" ]; then
    log "base image $BASE_IMAGE is up to date"
else
    ROOTFS_TAR="$STATE/$ROOTFS_RECIPE-$SUITE.tar"
    if [ ! -s "$ROOTFS_TAR" ]; then
        mirror="${AIOKNOT_DEBIAN_MIRROR:-}"
        if [ -z "$mirror" ]; then
            mirror="$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
                /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
                grep -oE 'https?://[^ ]+' | head -n 1 || true)"
            mirror="${mirror:-http://deb.debian.org/debian}"
        fi
        log "debootstrap $SUITE from $mirror (about a minute)"
        ROOTFS="$STATE/rootfs.tmp"
        rm -rf "$ROOTFS"
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            "$SUITE" "$ROOTFS" "$mirror" >"$STATE/debootstrap.log" 2>&1 ||
            { tail -n 30 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
        # Behave like the official python:X.Y-slim image where our Dockerfiles rely on it.
        pyver="$(chroot "$ROOTFS" python3 -c 'import sys;print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        for name in python python3 "python$pyver"; do ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/$name"; done
        for name in pip pip3 "pip$pyver"; do ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/$name"; done
        # PEP 668: official images let pip install system-wide; so must we.
        rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
            "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
        # debootstrap copies the host's resolver config; Docker provides its own.
        : >"$ROOTFS/etc/resolv.conf"
        : >"$ROOTFS/etc/hostname"
        tar --numeric-owner -C "$ROOTFS" -cf "$ROOTFS_TAR.tmp" .
        mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
        rm -rf "$ROOTFS"
        log "cached rootfs $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1))"
    else
        log "using cached rootfs $ROOTFS_TAR"
    fi
    # The machine's TLS goes through a proxy whose CA is only in the host's bundle: append the
    # host bundle's copy in place of Debian's, in a copy of the cached tarball.
    log "importing $BASE_IMAGE"
    old_id="$(dk image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)"
    work="$(mktemp -d "$STATE/import.XXXXXX")"
    mkdir -p "$work/overlay/etc/ssl/certs"
    cp "$CA_BUNDLE" "$work/overlay/etc/ssl/certs/ca-certificates.crt"
    cp "$ROOTFS_TAR" "$work/rootfs.tar"
    tar --delete -f "$work/rootfs.tar" ./etc/ssl/certs/ca-certificates.crt
    tar --numeric-owner --owner=0 --group=0 -C "$work/overlay" -rf "$work/rootfs.tar" \
        ./etc/ssl/certs/ca-certificates.crt
    dk import \
        --change "LABEL org.aioknot.recipe=$WANT_RECIPE" \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV LANG=C.UTF-8" \
        --change "ENV PIP_CERT=$CA_BUNDLE" \
        --change "ENV SSL_CERT_FILE=$CA_BUNDLE" \
        --change "ENV REQUESTS_CA_BUNDLE=$CA_BUNDLE" \
        --change "ENV PIP_DISABLE_PIP_VERSION_CHECK=1" \
        --change "ENV PIP_ROOT_USER_ACTION=ignore" \
        --change 'CMD ["python3"]' \
        "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$work"
    # Drop the superseded base image unless something still uses it (then rmi just fails).
    [ -z "$old_id" ] || dk rmi "$old_id" >/dev/null 2>&1 || true
    got="$(dk run --rm "$BASE_IMAGE" python -c 'import sys;print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    [ "$got" = "$PY_MINOR" ] ||
        die "$SUITE's python is $got but this machine's python3 is $PY_MINOR: pickles would not load"
fi

# pip from PyPI inside a container on this engine: needs NAT, DNS and the CA bundle.
IMAGE_ID="$(dk image inspect --format '{{.Id}}' "$BASE_IMAGE")"
PIP_STAMP="$STATE/pip-verified-${IMAGE_ID#sha256:}"
if [ ! -e "$PIP_STAMP" ]; then
    log "checking that pip in a container on this engine can install from PyPI"
    if ! out="$(dk run --rm "$BASE_IMAGE" sh -c \
        'pip install --no-cache-dir --quiet six && python -c "import six; print(six.__version__)"' 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "pip install inside a container failed (network/NAT/DNS/CA?); dockerd log: $STATE/dockerd.log"
    fi
    log "pip in a container works (installed six $out)"
    rm -f "$STATE"/pip-verified-*
    : >"$PIP_STAMP"
fi

# ---------------------------------------------------------------------------- registry
REG="$STATE/registry"
mkdir -p "$REG/data"
AUTH_B64="$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASSWORD" | base64 -w0)"
# Client config (docker CLI / docker-py: DOCKER_CONFIG=this dir) holding the registry login.
# One dir per port, so that stacks on two ports can share a state dir.
DOCKER_CONFIG_DIR="$STATE/docker-config-$PORT"
mkdir -p "$DOCKER_CONFIG_DIR"
printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$REGISTRY" "$AUTH_B64" >"$DOCKER_CONFIG_DIR/config.json.tmp"
mv "$DOCKER_CONFIG_DIR/config.json.tmp" "$DOCKER_CONFIG_DIR/config.json"

http_code() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$@" || true; }
registry_ok() {
    [ "$(http_code "http://$REGISTRY/v2/")" = 401 ] &&
        [ "$(http_code -u "$REGISTRY_USER:$REGISTRY_PASSWORD" "http://$REGISTRY/v2/")" = 200 ]
}
if registry_ok; then
    log "registry already answers on $REGISTRY"
else
    code="$(http_code "http://$REGISTRY/v2/")"
    if [ "$code" != 000 ]; then
        die "something else answers on $REGISTRY (HTTP $code to /v2/); set AIOKNOT_TEST_REGISTRY_PORT"
    fi
    log "starting docker-registry on $REGISTRY"
    htpasswd -Bbc "$REG/htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" 2>/dev/null
    [ -s "$REG/secret" ] || head -c 24 /dev/urandom | base64 >"$REG/secret"
    cat >"$REG/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
  secret: $(cat "$REG/secret")
auth:
  htpasswd:
    realm: aioknot-test-registry
    path: $REG/htpasswd
EOF
    setsid docker-registry serve "$REG/config.yml" </dev/null >>"$REG/registry.log" 2>&1 9>&- &
    registry_pid=$!
    disown || true
    for _ in $(seq 1 60); do
        registry_ok && break
        running docker-registry "$registry_pid" || break
        sleep 0.25
    done
    if ! running docker-registry "$registry_pid"; then
        tail -n 20 "$REG/registry.log" >&2 || true
        die "docker-registry exited (port $PORT taken?; log: $REG/registry.log)"
    fi
    if ! registry_ok; then
        tail -n 20 "$REG/registry.log" >&2 || true
        die "docker-registry did not come up on $REGISTRY (log: $REG/registry.log)"
    fi
    echo "$registry_pid" >"$REG/registry.pid"
fi

log "ready: engine $DOCKER_HOST_URL, registry $REGISTRY, base image $BASE_IMAGE"
q() { printf '%q' "$1"; }
echo "export DOCKER_HOST=$(q "$DOCKER_HOST_URL")"
echo "export AIOKNOT_TEST_REGISTRY=$(q "$REGISTRY")"
echo "export AIOKNOT_TEST_REGISTRY_USER=$(q "$REGISTRY_USER")"
echo "export AIOKNOT_TEST_REGISTRY_PASSWORD=$(q "$REGISTRY_PASSWORD")"
echo "export AIOKNOT_TEST_BASE_IMAGE=$(q "$BASE_IMAGE")"
echo "export AIOKNOT_TEST_DOCKER_CONFIG=$(q "$DOCKER_CONFIG_DIR")"
