#!/usr/bin/env bash
# Local stand-ins for the registry base images, on a machine whose Docker engine cannot pull.
#
#   epic-local/debian:bookworm   debootstrap --variant=minbase bookworm, then `docker import`
#   epic-local/python:3.11       + Debian's python3 (3.11) with venv and pip, and this
#                                machine's CA bundle for pip (PIP_CERT; a TLS-intercepting proxy)
#   epic-local/mosquitto:2       + Debian's mosquitto 2 (/usr/sbin/mosquitto)
#
# Then build with them:  EPIC_PYTHON_BASE=epic-local/python:3.11 \
#                        EPIC_MOSQUITTO_BASE=epic-local/mosquitto:2 docker compose up
# (or `docker compose --env-file docker/local-base.env up`). Elsewhere the defaults, python:3.11-slim and
# eclipse-mosquitto:2, are pulled as usual and this script is not needed.
#
# Needs root (debootstrap) and Debian's package mirror; installs debootstrap with apt-get if
# missing. Idempotent: an image that exists is kept (--force rebuilds all three).
# Exit status 0: the three images exist. Cold: a few minutes; warm: about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

MIRROR=${EPIC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DEBIAN_IMAGE=epic-local/debian:$SUITE
PYTHON_IMAGE=epic-local/python:3.11
MOSQUITTO_IMAGE=epic-local/mosquitto:2
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

have() { [ "$FORCE" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }
say() { echo "build-local-base: $*" >&2; }

docker version --format '{{.Server.Version}}' >/dev/null || { say "no Docker engine"; exit 2; }

if ! have "$DEBIAN_IMAGE"; then
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    root=$(mktemp -d /tmp/epic-debootstrap.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    say "debootstrap --variant=minbase $SUITE (a few minutes)"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    # Slim it as the official images do: no apt lists, caches, docs or man pages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
           "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log \
           "$root"/usr/share/locale/*
    echo "deb $MIRROR $SUITE main" > "$root/etc/apt/sources.list"
    cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
    cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CFG
    say "importing $DEBIAN_IMAGE"
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$root"; trap - EXIT
fi

if ! have "$PYTHON_IMAGE"; then
    say "building $PYTHON_IMAGE"
    # This machine's trust store goes with it: where HTTPS to PyPI passes a proxy with its own
    # CA (the host's pip is told so), pip inside `docker build` must trust the same CAs.
    ctx=$(mktemp -d /tmp/epic-python-base.XXXXXX)
    cp "${EPIC_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/host-ca.crt"
    cat > "$ctx/Dockerfile" <<'DOCKERFILE'
ARG BASE
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python
COPY host-ca.crt /usr/local/share/epic/host-ca.crt
ENV LANG=C.UTF-8 \
    PIP_CERT=/usr/local/share/epic/host-ca.crt \
    SSL_CERT_FILE=/usr/local/share/epic/host-ca.crt \
    REQUESTS_CA_BUNDLE=/usr/local/share/epic/host-ca.crt
CMD ["python3"]
DOCKERFILE
    docker build -q -t "$PYTHON_IMAGE" --build-arg BASE="$DEBIAN_IMAGE" "$ctx" >/dev/null \
        || { rm -rf "$ctx"; exit 1; }
    rm -rf "$ctx"
fi

if ! have "$MOSQUITTO_IMAGE"; then
    say "building $MOSQUITTO_IMAGE"
    docker build -q -t "$MOSQUITTO_IMAGE" --build-arg BASE="$DEBIAN_IMAGE" - >/dev/null 2>&1 <<'DOCKERFILE'
ARG BASE
FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        mosquitto \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 1883
CMD ["/usr/sbin/mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]
DOCKERFILE
fi

say "ready: $DEBIAN_IMAGE $PYTHON_IMAGE $MOSQUITTO_IMAGE"
