#!/usr/bin/env bash
# Builds the local image the Docker executor's tests run: swarmkit-test/busybox:latest, a rootfs
# holding only Debian's static busybox and its applet links. There is no registry to pull from,
# so the image is made with `docker import`. Does nothing when the image already exists with the
# applets listed below (its `swarmkit-test.applets` label); an image with other applets is rebuilt.
# Usage: scripts/test-image.sh
set -euo pipefail

image=swarmkit-test/busybox:latest
applets="sh sleep echo cat true false env test kill ls ps id printenv pwd hostname wc grep nc ip timeout"

if ! docker info >/dev/null 2>&1; then
  echo "test-image: no Docker engine answers (docker info failed); start one or set DOCKER_HOST" >&2
  exit 1
fi

# Test binaries run in parallel and each may call this script: one builds, the others wait for it
# and then find the image.
exec 9>"${TMPDIR:-/tmp}/swarmkit-test-image.lock"
flock 9

have=$(docker image inspect --format '{{index .Config.Labels "swarmkit-test.applets"}}' "$image" 2>/dev/null || true)
if [ "$have" = "$applets" ]; then
  echo "test-image: $image already present"
  exit 0
fi

# The static build is a separate package; the dynamic one would need libc in the image.
static_busybox() { dpkg -s busybox-static >/dev/null 2>&1; }
if ! static_busybox; then
  echo "test-image: installing busybox-static"
  export DEBIAN_FRONTEND=noninteractive
  sudo=
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -E"; fi
  $sudo apt-get install -y -q busybox-static >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q busybox-static >/dev/null; } ||
    { echo "test-image: could not install busybox-static with apt-get" >&2; exit 1; }
fi
busybox=$(dpkg -L busybox-static | grep -E '/busybox$' | head -n1 || true)
if [ -z "$busybox" ] || [ ! -x "$busybox" ]; then
  echo "test-image: busybox-static is installed but its busybox binary was not found" >&2
  exit 1
fi

root=$(mktemp -d /tmp/swarmkit-test-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for a in $applets; do ln -s busybox "$root/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

tar -C "$root" -cf - . |
  docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
    --change "LABEL swarmkit-test.applets=\"$applets\"" - "$image" >/dev/null
echo "test-image: built $image"
