#!/usr/bin/env bash
# examples/serve_topk end to end: histories (plain and JSON lines, with bad lines among good
# ones), per-user event sessions on an LLMRec checkpoint, and --bench.
#   serve_topk.sh <serve_topk binary> <sasrec checkpoint (200 items)> <llmrec checkpoint (100 items)>
set -euo pipefail
bin=$1 sasrec=$2 llmrec=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; echo "--- output:"; cat "$work/out.txt"; exit 1; }

cat > "$work/histories.txt" <<'IN'
# comments and blank lines are skipped

1 2 3
{"user": "a", "history": [4, 5], "k": 3, "exclude": [6]}
1 99999
{"history": []}
oops
4,5,6
{"user": "b", "history": [7], "k": 0}
IN
set +e
"$bin" --checkpoint "$sasrec" --input "$work/histories.txt" -k 5 > "$work/out.txt"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "exit code $rc, expected 2 (some lines failed)"
[ "$(grep -c '"items"' "$work/out.txt")" -eq 3 ] || fail "expected 3 served lines"
[ "$(grep -c '"error"' "$work/out.txt")" -eq 4 ] || fail "expected 4 error lines"
grep -q '^{"items":\[[0-9]*,[0-9]*,[0-9]*,[0-9]*,[0-9]*\],"line":3,' "$work/out.txt" || fail "line 3: five items"
grep -q '"line":4,"scores":\[[^],]*,[^],]*,[^],]*\],"user":"a"' "$work/out.txt" || fail "line 4: three items for user a"
grep -q '"items":\[[0-9,]*\],"line":4' "$work/out.txt" && ! grep -q '"items":\[[0-9,]*\b6\b[0-9,]*\],"line":4' "$work/out.txt" \
  || fail "line 4: item 6 excluded"
grep -q '{"error":".*item 99999 at position 1, outside 1..200","line":5}' "$work/out.txt" || fail "line 5: unknown item"
grep -q '{"error":".*history 0 is empty","line":6}' "$work/out.txt" || fail "line 6: empty history"
grep -q '{"error":".*\\"oops\\" is not an item id","line":7}' "$work/out.txt" || fail "line 7: malformed"
grep -q '"line":8,' "$work/out.txt" || fail "line 8 served after the errors"
grep -q '{"error":".*k must be at least 1, got 0","line":9}' "$work/out.txt" || fail "line 9: k of 0"

printf 'u1 3\nu2 5\nu1 4\n{"user": "u1", "item": 7}\nu1 1000\nu2 6\n' > "$work/events.txt"
set +e
"$bin" --checkpoint "$llmrec" --events --precision int8 -k 4 < "$work/events.txt" > "$work/out.txt"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "events: exit code $rc, expected 2"
[ "$(grep -c '"items"' "$work/out.txt")" -eq 5 ] || fail "events: expected 5 served events"
grep -q '{"error":".*item 1000 is outside 1..100","line":5}' "$work/out.txt" || fail "events: unknown item"
grep -q '"line":6,.*"user":"u2"' "$work/out.txt" || fail "events: u2 served after the error"

"$bin" --checkpoint "$sasrec" --input "$work/histories.txt" --bench --repeats 2 --precision bf16 > "$work/out.txt"
grep -q '"cpu":' "$work/out.txt" || fail "bench: no machine"
grep -q '"top_k_ms":{"p50":[0-9.e-]*,"p99":' "$work/out.txt" || fail "bench: no latency"
grep -q '"queries":3' "$work/out.txt" || fail "bench: 3 good queries"
grep -q '"scoring":"bf16: ' "$work/out.txt" || fail "bench: the policy"
"$bin" --checkpoint "$llmrec" --input "$work/events.txt" --events --bench --repeats 2 > "$work/out.txt"
grep -q '"append_ms":{"p50":' "$work/out.txt" || fail "bench: no append latency"
echo "serve_topk: all checks passed"
