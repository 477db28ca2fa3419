#!/usr/bin/env bash
# Runs every test of labagent, as the README says. Installs what the tests need first, so a
# fresh Debian machine with the Rust toolchain passes the same way as a developer's.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests use: strace (store-before-ACK ordering test), openssl, mosquitto and
# mosquitto_passwd (the MQTT tests run a real broker; mosquitto lives in /usr/sbin).
missing=()
# openssl: keys and signatures for the fleet signing interop test (fleet_sign.rs).
for tool in strace openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_passwd >/dev/null 2>&1 || missing+=(mosquitto)
# cross/ and QEMU tests (packaging.rs, qemu_aarch64.rs): qemu-user, the aarch64 cross gcc
# (links the musl target), systemd-analyze for the unit's exposure.
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# format = "fhir" turns instrument local times into offsets from the system's tzdata.
[ -f /usr/share/zoneinfo/Europe/Berlin ] || missing+=(tzdata)
# packaging.rs: lintian on the .deb; its lifecycle test installs it with dpkg, whose
# Depends (ca-certificates) must be there. service.rs: promtool (Debian's prometheus
# package) checks the metrics exposition.
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
dpkg -s ca-certificates >/dev/null 2>&1 || missing+=(ca-certificates)
# The bare-metal firmware under system emulation (firmware_qemu.rs).
command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# python-hl7's mllp_send: a real external MLLP client (tests/tests/hl7_mllp_send.rs).
python3 -c 'import hl7' 2>/dev/null || python3 -m pip install -q hl7
# npm packages the tests use: oidc-provider (uplink interop with a real OAuth 2.0 server).
if [ ! -d tests/oidc/node_modules ]; then
  echo "==> npm ci (tests/oidc)"
  npm ci --prefix tests/oidc --silent --no-audit --no-fund
fi
# Medplum's own FHIR validator (@medplum/core validateResource) for the format = "fhir"
# tests; 4.5.2 is the newest release that supports Node.js 20.
if [ ! -d tests/fhir/node_modules/@medplum/core ]; then
  echo "==> npm ci (tests/fhir)"
  npm ci --prefix tests/fhir --silent --no-audit --no-fund
fi

# The hal must build for a bare-metal target (no_std + alloc).
rustup target add aarch64-unknown-linux-musl >/dev/null 2>&1 || rustup target add aarch64-unknown-linux-musl
# The firmware (cross/firmware, its own workspace) is built for a Cortex-M3.
rustup target add thumbv7m-none-eabi >/dev/null 2>&1 || rustup target add thumbv7m-none-eabi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> hal without alloc: builds for thumbv7m-none-eabi, and its tests pass (no heap buffers)"
cargo build --quiet -p labagent-hal --no-default-features --target thumbv7m-none-eabi
cargo test --quiet -p labagent-hal --no-default-features
echo "==> firmware (cross/firmware): fmt, clippy, host tests, release build for thumbv7m-none-eabi"
fw=cross/firmware/Cargo.toml
cargo fmt --manifest-path "$fw" -- --check
cargo clippy --quiet --manifest-path "$fw" --release --target thumbv7m-none-eabi -- -D warnings
cargo test --quiet --manifest-path "$fw" --lib --target "$(rustc -vV | sed -n 's/^host: //p')"
cargo build --quiet --manifest-path "$fw" --release --target thumbv7m-none-eabi
echo "==> build binaries (end-to-end tests run the real labagent)"
cargo build --quiet --workspace --bins --examples
echo "==> dependency duplicates against tests/duplicates.allow"
bash tests/deps.sh
echo "==> aarch64-musl under qemu-aarch64: hal and config tests; labagent for qemu_aarch64.rs"
qemu_start=$(date +%s)
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64 \
  cargo test --quiet -p labagent-hal -p labagent-config --target aarch64-unknown-linux-musl
cargo build --quiet -p labagent --bin labagent --target aarch64-unknown-linux-musl
echo "==> aarch64 part: $(( $(date +%s) - qemu_start ))s"
echo "==> cargo test"
cargo test --workspace --no-fail-fast

echo "==> all tests passed in $(( $(date +%s) - start ))s"
