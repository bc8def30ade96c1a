#!/bin/busybox sh
# busybox ash: shellcheck knows no ash and checks it as the nearest, dash.
# shellcheck shell=dash
# /init of the boot shim of the systemd VM flavour (see run-systemd.sh): a
# tiny initramfs (static busybox and the modules listed in /etc/shim-modules)
# whose only job is to make the root disk /dev/vda visible (virtio_blk is a
# module in the Debian kernels), mount it and hand over to its systemd.
export PATH=/bin

say() { echo "shim: $*" >/dev/console; }
die() {
    say "error: $*"
    poweroff -f
    while :; do sleep 3600; done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# In dependency order (run-systemd.sh resolved it with modules.dep).
while read -r m; do
    insmod "/modules/$m" || say "insmod $m failed"
done </etc/shim-modules

i=0
while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -le 200 ] || die "no /dev/vda after 20 s"
    sleep 0.1
done

mkdir -p /newroot
# Read-write at once: /etc/fstab says so too, and nothing runs fsck.
mount -t ext4 -o rw /dev/vda /newroot || die "cannot mount /dev/vda"
# An absolute symlink (to /lib/systemd/systemd): it resolves only after
# switch_root.
[ -e /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || die "/dev/vda has no /sbin/init"

umount /proc
umount /sys
mount --move /dev /newroot/dev || umount /dev
exec switch_root /newroot /sbin/init
