#!/bin/bash
# Runs rush-agentd's lib tests matching a filter (default `bpf::`: the net and file smoke
# tests) as root, with RUSH_TEST_STRICT=1, inside the QEMU guests of the kernel test tier
# (Debian 6.1 and 6.12). Reuses what `cargo xtask vm-test` caches (kernels and base
# initramfs under ${RUSH_CACHE_DIR:-$HOME/.cache/rush}/vm, see vm-images/README.md), so run
# that once first; this only adds a payload with the test executable and boots.
#
#   rush-ebpf/tools/vm-lsm-test.sh [6.1|6.12|all] [test filter and libtest args...]
#   RUSH_TEST_EXE=/path/to/rush_agentd-<hash> rush-ebpf/tools/vm-lsm-test.sh all bpf::
#
# Console logs: target/vm-lsm-test/console-<series>.log. Exit status 0 iff every guest ran
# the tests and they passed.
set -euo pipefail
series=${1:-all}
shift || true
[ $# -gt 0 ] || set -- bpf:: --test-threads 2
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${RUSH_CACHE_DIR:-$HOME/.cache/rush}/vm
out=$root/target/vm-lsm-test
mkdir -p "$out"

exe=${RUSH_TEST_EXE:-}
if [ -z "$exe" ]; then
    exe=$(cd "$root" && cargo test -p rush-agentd --lib --no-run --message-format=json |
        grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
fi
[ -x "$exe" ] || { echo "no test executable ($exe)" >&2; exit 2; }

# The payload: the test executable, every library ldd names at its host path, /payload/run.
stage=$(mktemp -d "$out/stage.XXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/payload/tests"
strip --strip-debug -o "$stage/payload/tests/rush-agentd-lib" "$exe"
for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
    [ -e "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done
args=$(printf " '%s'" "$@")
cat > "$stage/payload/run" <<EOF
#!/bin/sh
export RUSH_TEST_STRICT=1 RUST_BACKTRACE=1
/payload/tests/rush-agentd-lib --nocapture$args
EOF
chmod +x "$stage/payload/run"
(cd "$stage" && find . | cpio -o -H newc -R 0:0 --quiet) > "$out/payload.cpio"

case $series in
    all) list="6.1 6.12" ;;
    *) list=$series ;;
esac
rc=0
for s in $list; do
    case $s in
        6.1) kdir=$(ls -d "$cache"/linux-image-6.1.0-* 2>/dev/null | tail -1) ;;
        6.12) kdir=$(ls -d "$cache"/linux-image-6.12.* 2>/dev/null | tail -1) ;;
        *) echo "unknown series $s" >&2; exit 2 ;;
    esac
    base=$(ls -t "$kdir"/initramfs-*.cpio 2>/dev/null | head -1 || true)
    [ -n "$kdir" ] && [ -n "$base" ] || { echo "no cached $s kernel/initramfs: run cargo xtask vm-test once" >&2; exit 2; }
    cat "$base" "$out/payload.cpio" > "$out/initrd-$s.cpio"
    # As xtask/src/vm/qemu.rs boots: single-threaded TCG (see vm-images/README.md).
    timeout 900 qemu-system-x86_64 -accel tcg,thread=single -cpu max -machine q35 -m 1024 -smp 2 \
        -nographic -no-reboot -nic none -kernel "$(ls "$kdir"/root/boot/vmlinuz-*)" \
        -initrd "$out/initrd-$s.cpio" -append "console=ttyS0 quiet panic=-1" </dev/null 2>&1 |
        tr -d '\r' | tee "$out/console-$s.log" | sed -u "s/^/[$s] /"
    rm -f "$out/initrd-$s.cpio"
    # /init prints the payload's status as @@EXIT=<rc>@@.
    if grep -q '^@@EXIT=0@@' "$out/console-$s.log" && grep -q '^test result: ok' "$out/console-$s.log"; then
        echo "== $s: PASS"
    else
        echo "== $s: FAIL (see $out/console-$s.log)"
        rc=1
    fi
done
exit $rc
