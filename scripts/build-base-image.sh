#!/usr/bin/env bash
# The base image the project Dockerfile starts FROM (default debian:bookworm-slim).
#
# Idempotent: when the tag is already in the local engine, nothing is done. Otherwise a pull
# is tried, bounded by a timeout (these machines reach no container registry, and a pull
# that cannot succeed must not hang the build); when it fails, a minimal Debian bookworm is
# built from Debian packages with debootstrap (variant minbase, from the mirror apt already
# uses on this host), imported into the engine and tagged with the same name, so the
# Dockerfile never needs to know which way the base came.
#
#   scripts/build-base-image.sh [TAG]        TAG defaults to $BASE_IMAGE or debian:bookworm-slim
#   PULL_TIMEOUT=20 (seconds)  DEBIAN_MIRROR=http://...  override the pull bound / the mirror
set -euo pipefail

tag="${1:-${BASE_IMAGE:-debian:bookworm-slim}}"
suite=bookworm
pull_timeout="${PULL_TIMEOUT:-20}"

say() { printf 'base image: %s\n' "$*"; }

if ! docker info >/dev/null 2>&1; then
  echo "base image: the Docker engine does not answer (docker info failed)." >&2
  echo "HINT: start it as root (dockerd, or systemctl start docker) and re-run." >&2
  exit 1
fi

if docker image inspect "$tag" >/dev/null 2>&1; then
  say "$tag is already in the engine; nothing to do"
  exit 0
fi

say "trying docker pull $tag (at most ${pull_timeout}s)"
if timeout "$pull_timeout" docker pull -q "$tag" >/dev/null 2>&1; then
  say "pulled $tag"
  exit 0
fi
say "pull failed or timed out; building $tag from Debian packages with debootstrap"

# The mirror apt uses on this host (deb822 .sources or one-line sources.list), so the
# build reaches the same Debian archive the host's own installs do.
host_mirror() {
  local uri
  uri="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)"
  if [ -z "$uri" ]; then
    uri="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
security_mirror="${mirror%/debian}/debian-security"
[ "$security_mirror" != "$mirror/debian-security" ] || security_mirror=http://deb.debian.org/debian-security

if ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "base image: debootstrap is missing. HINT: apt-get install -y debootstrap (as root)" >&2
    exit 1
  fi
  say "installing debootstrap (Debian package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "base image: debootstrap needs root. HINT: run this script as root." >&2
  exit 1
fi

rootfs="$(mktemp -d /tmp/tracktion-base-rootfs.XXXXXX)"
trap 'say "removing $rootfs"; rm -rf --one-file-system "$rootfs"' EXIT

say "debootstrap --variant=minbase $suite from $mirror into $rootfs"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 20 "$rootfs.log" >&2
  rm -f "$rootfs.log"
  exit 1
}
rm -f "$rootfs.log"

# The same apt sources a bookworm image has (with updates and security), and the slim
# images' habit of not unpacking documentation, so later layers stay small.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EXCLUDES
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APTCLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APTCLEAN
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete

say "importing into the engine as $tag"
tar --numeric-owner -C "$rootfs" -c . \
  | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
say "done: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$tag")"
