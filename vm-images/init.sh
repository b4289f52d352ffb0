#!/bin/busybox sh
# /init of the Rush test guests (PID 1, busybox sh). Built into the base initramfs by
# `cargo xtask vm-test` (xtask/src/vm/image.rs); the test payload arrives as a second cpio
# appended to it and is started as /payload/run. The host reads the serial console and
# turns the final @@EXIT=<rc>@@ line into its exit status.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/payload/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
umask 022

echo "rush-vm: init started"

mount -t proc proc /proc
echo "rush-vm: kernel up $(cut -d' ' -f1 /proc/uptime)s"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
# As systemd mounts it, so that agents see what they would see on a real host.
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

hostname rush-vm
ip link set lo up

failed=""
while read -r ko; do
    [ -n "$ko" ] || continue
    out=$(insmod "/lib/modules/$(uname -r)/$ko" 2>&1) || failed="$failed $ko($out)"
done < /etc/rush-vm/modules
[ -z "$failed" ] || echo "rush-vm: WARNING: modules that did not load:$failed"

echo "rush-vm: kernel $(uname -r) ($(cat /etc/rush-vm/package 2>/dev/null))"
echo "rush-vm: cmdline $(cat /proc/cmdline)"
echo "rush-vm: LSMs $(cat /sys/kernel/security/lsm 2>/dev/null || echo '?')"
echo "rush-vm: cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "rush-vm: $(nproc) CPUs, $(sed -n 's/^MemTotal: *//p' /proc/meminfo) RAM, up $(cut -d' ' -f1 /proc/uptime)s"

if [ -x /payload/run ]; then
    cd /tmp
    /payload/run < /dev/null
    rc=$?
else
    echo "rush-vm: no /payload/run in the initramfs"
    rc=127
fi
cd /
sync
echo "rush-vm: payload finished with $rc after $(cut -d' ' -f1 /proc/uptime)s"
echo
echo "@@EXIT=$rc@@"
poweroff -f
# poweroff -f does not return; if it does, PID 1 exiting panics the kernel and
# panic=-1 -no-reboot ends QEMU.
