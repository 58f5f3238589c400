#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time on the committed corpus.
#
#   fuzz/run.sh                      # every target, 60 s each
#   FUZZ_SECONDS=10 fuzz/run.sh      # shorter
#   FUZZ_TARGETS="disk_meta" fuzz/run.sh
#   FUZZ_GROW_CORPUS=1 fuzz/run.sh   # keep new interesting inputs in fuzz/corpus/
#
# Needs `cargo install cargo-fuzz` (and a C++ compiler for libFuzzer). Only the
# stable toolchain is required: RUSTC_BOOTSTRAP=1 lets stable rustc accept the
# -Z flags cargo-fuzz passes (sanitizer-coverage instrumentation and ASan).
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script;
# turn it into a regression test (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")"

export RUSTC_BOOTSTRAP=1
SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-address}"
TARGETS="${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^kvtier-fuzz$')}"

# The cache server links RocksDB; building its C++ again with the fuzzing
# flags takes ~10 minutes on 2 cores. Reuse the archive of a normal release
# build when one exists (ROCKSDB_LIB_DIR may also be set by the caller).
if [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
  # The newest archive: a reused cache may also hold ones of older versions.
  lib="$(ls -t "${CARGO_TARGET_DIR:-../target}"/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1 || true)"
  if [ -n "$lib" ]; then
    export ROCKSDB_LIB_DIR="$(cd "$(dirname "$lib")" && pwd)" ROCKSDB_STATIC=1
  fi
fi

# Fuzzing builds live in fuzz/target, apart from the workspace's build.
unset CARGO_TARGET_DIR

summary=""
status=0
for target in $TARGETS; do
  mkdir -p "corpus/$target"
  if [ -n "${FUZZ_GROW_CORPUS:-}" ]; then
    dirs=("corpus/$target")
  else
    # New inputs go to a scratch directory; the committed seeds are read only.
    scratch="$(mktemp -d)"
    dirs=("$scratch" "corpus/$target")
  fi
  log="$(mktemp)"
  echo "== $target: ${SECONDS_PER_TARGET}s (sanitizer: $SANITIZER)"
  if cargo fuzz run --release --sanitizer "$SANITIZER" "$target" "${dirs[@]}" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
    # The first errors, then the end: a failed build prints its cause early.
    grep -n -m 20 -E '^error|error:|No space left' "$log" || true
    tail -n 40 "$log"
    df -h . | tail -n 1
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  summary+="$(printf '%-18s %-6s executions=%-10s coverage=%s' "$target" "$result" "${execs:-?}" "${cov:-?}")"$'\n'
  rm -f "$log"
  [ -n "${scratch:-}" ] && rm -rf "$scratch"
done
echo
echo "fuzz summary (${SECONDS_PER_TARGET}s per target):"
printf '%s' "$summary"
exit "$status"
