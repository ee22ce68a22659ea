#!/bin/sh
# The emulators the export tests run exported models under (make emulators):
#   - qemu-x86_64-static -cpu Haswell: an x86 CPU with AVX2 but neither AVX-512 nor VNNI,
#     whose u8s8 int8 kernel saturates;
#   - qemu-aarch64-static -cpu cortex-a72 with an arm64 Python 3.11 in a sysroot and
#     aarch64 wheels of the runner's dependencies: a Raspberry Pi 4's core.
# Idempotent: the Makefile calls it only when the stamp file is missing. Needs root (apt).
set -eu
ROOT=${1:?usage: setup_export_emulators.sh DIR PYTHON}
PY=${2:?usage: setup_export_emulators.sh DIR PYTHON}
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g
libffi8 libssl3 libgcc-s1 libstdc++6 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6
libtinfo6 libreadline8 libcrypt1 libdb5.3 libgomp1"
# Same versions as the x86 venv, so both architectures run the same onnxruntime.
WHEELS=$("$PY" -m pip freeze | grep -i -E '^(numpy|onnxruntime|protobuf|flatbuffers|packaging|coloredlogs|humanfriendly|zstandard|click)==')

if ! command -v qemu-aarch64-static >/dev/null || ! command -v qemu-x86_64-static >/dev/null \
   || ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "installing qemu-user-static and the arm64 package lists"
  dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq qemu-user-static >/dev/null
fi

mkdir -p "$ROOT/debs" "$ROOT/sysroot" "$ROOT/site"
cd "$ROOT/debs"
for pkg in $DEBS; do
  ls "${pkg}"_*_arm64.deb >/dev/null 2>&1 || apt-get download -qq "$pkg:arm64"
done
for deb in *.deb; do dpkg -x "$deb" "$ROOT/sysroot"; done

# shellcheck disable=SC2086  # one requirement per word
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --upgrade \
  --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
  --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp \
  --target "$ROOT/site" $WHEELS

# What export.cpu reads under emulated Haswell: qemu-user emulates CPUID (which
# onnxruntime's x86 kernels follow) but not /proc/cpuinfo.
cat > "$ROOT/cpuinfo-haswell" <<'CPU'
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz (emulated by qemu -cpu Haswell)
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm abm fsgsbase bmi1 avx2 smep bmi2 erms
CPU

# onnxruntime reads /proc/cpuinfo to pick its kernels; under qemu-user that file describes
# the x86 host and its detection crashes, so the tests bind-mount this one (a Pi 4's core).
cat > "$ROOT/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

processor	: 1
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B Rev 1.4
CPU
