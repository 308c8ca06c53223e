# Sourced by scripts/setup-engines.sh: defines setup_images.
# shellcheck shell=bash

# What sandboxer's image store uses on every engine: skopeo fetches from registries and
# copies between layouts and engines, umoci checks OCI layouts, mmdebstrap builds the
# built-in Debian images, and busybox-static gives the helper that sandboxes of OCI
# images get.
setup_images() {
    apt_install skopeo umoci mmdebstrap busybox-static
}
