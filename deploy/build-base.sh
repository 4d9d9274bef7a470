#!/usr/bin/env bash
# A minimal Debian bookworm with python3, imported as the Containerfile's base image, for
# machines that reach Debian's package mirror but no container registry. Kept between runs:
# does nothing when the image already exists (FORCE=1 rebuilds).
set -euo pipefail
image=${KQD_BASE_IMAGE:-localhost/kqd-base:bookworm}
# The Debian mirror this machine's apt already uses (DEBIAN_MIRROR overrides it).
apt_mirror() {
    { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true
      grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' || true; } \
        | grep -v -- '-security' | head -n 1 || true
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
if [ -z "$mirror" ]; then
    echo "no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2
    exit 2
fi
if [ -z "${FORCE:-}" ] && podman image exists "$image"; then
    echo "base image $image exists"
    exit 0
fi
rootfs=$(mktemp -d /var/tmp/kqd-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image"
echo "built base image $image"
