#!/bin/sh
# Run inside the offline kind base rootfs (chroot) after its packages are installed:
# what kind's images/base/Dockerfile does after `clean-install`, for Debian's
# containerd, runc and CNI plugins instead of kind's own builds.
set -eu
find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete
rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
  /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
  /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> /etc/systemd/journald.conf
ln -sf /usr/lib/systemd/systemd /sbin/init
systemctl enable kubelet.service containerd.service undo-mount-hacks.service
systemctl mask systemd-binfmt.service
mkdir -p /etc/kubernetes/manifests
# kind expects upstream's install paths
ln -sf /usr/bin/containerd /usr/local/bin/containerd
ln -sf /usr/bin/containerd-shim-runc-v2 /usr/local/bin/containerd-shim-runc-v2
mkdir -p /opt/cni/bin
for plugin in /usr/lib/cni/*; do ln -sf "$plugin" /opt/cni/bin/; done
ctr oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
: > /etc/resolv.conf
rm -f /etc/hostname
