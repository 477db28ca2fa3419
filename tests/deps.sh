#!/usr/bin/env bash
# Dependency check of the test command (tests/run.sh): every crate that comes in two
# versions must be in tests/duplicates.allow with exactly those versions and a reason, and
# every entry there must still be a duplicate. cargo-deny would do more but is not packaged
# in Debian (it would compile on every clean CI run) and its advisory database cannot be
# fetched here; the advisories we know of are in docs/DEPENDENCIES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
allow=tests/duplicates.allow

# "name version", one line per version of a duplicated crate (the roots of cargo tree's
# inverted trees).
found=$(cargo tree --workspace --duplicates --locked --offline 2>/dev/null \
  | sed -n 's/^\([A-Za-z0-9_-]\+\) v\([^ ]\+\).*/\1 \2/p' | sort -u)

# The same from the allow-list; an entry without a reason after its versions is an error.
entries=$(grep -v '^[[:space:]]*#' "$allow" | grep -v '^[[:space:]]*$' || true)
listed=$(awk '{ for (i = 2; i <= NF && $i ~ /^[0-9]/; i++) print $1, $i }' <<<"$entries" | sort -u)
unexplained=$(awk '{ for (i = 2; i <= NF && $i ~ /^[0-9]/; i++); if (i > NF) print $1 }' <<<"$entries")

status=0
if [ -n "$unexplained" ]; then
  echo "tests/deps.sh: entries without a reason in $allow:" >&2
  sed 's/^/  /' <<<"$unexplained" >&2
  status=1
fi
new=$(comm -23 <(echo "$found") <(echo "$listed"))
stale=$(comm -13 <(echo "$found") <(echo "$listed"))
if [ -n "$new" ]; then
  echo "tests/deps.sh: duplicated crates not in $allow (unify them, or add them with the reason):" >&2
  sed 's/^/  /' <<<"$new" >&2
  status=1
fi
if [ -n "$stale" ]; then
  echo "tests/deps.sh: versions in $allow that are no longer duplicated (remove or correct them):" >&2
  sed 's/^/  /' <<<"$stale" >&2
  status=1
fi
[ $status -eq 0 ] && echo "==> $(cut -d' ' -f1 <<<"$found" | sort -u | wc -l) duplicated crates, each allowed with a reason"
exit $status
