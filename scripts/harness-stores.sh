#!/bin/bash
# scripts/harness-stores.sh BINARY: an unchanged bitbake build restored from a mount over two
# stores (issue 13), with the harness of ../shared/harness set up in $HARNESS_DIR
# (default /work/harness, build user bbuser). As root:
#
#   1. populate: bitbake builds through a mount of one S3 store ("company", a versitygw bucket
#      on 127.0.0.1), with the mount's hash equivalence server;
#   2. split: every other sstate object (with its .siginfo/.sig) moves out of the bucket into a
#      plain directory served by `python3 -m http.server` on 127.0.0.1 ("public": no
#      .sstatefs index there); the company index is rebuilt (`sstatefs index build`) so that it
#      lists only what stayed;
#   3. restore: a mount with both stores in trust order (company, then public) on a fresh cache
#      directory; bitbake must restore everything (Local = Wanted, Missed 0);
#   4. changed recipe: a build with PROBE_SALT on the same mount; what it publishes must land in
#      the bucket only (the mirror directory is unchanged), checked after the mount drained.
#
# STOP_AFTER=split stops after step 2 (what a mount serving only the first store can check).
# Prints the counts and OK/FAIL lines; exit 0 when every check passed, 1 otherwise, 2 on a
# setup error. Logs and stores stay in the work directory it prints (KEEP=0 removes it on
# success). Stores are given in TOML files ([[store]] tables with names), which works whether
# or not the binary also takes --store NAME=URL.
set -u
BIN=$(readlink -f "${1:?usage: harness-stores.sh BINARY}")
H=${HARNESS_DIR:-/work/harness}
BBUSER=${BBUSER:-bbuser}
SALT=${SALT:-mtest-$$}
[ "$(id -u)" = 0 ] || { echo "harness-stores.sh: run as root (FUSE, runuser)" >&2; exit 2; }
[ -x "$H/run-probe.sh" ] || { echo "harness-stores.sh: no harness in $H (set HARNESS_DIR)" >&2; exit 2; }
export PATH=$(go env GOPATH 2>/dev/null)/bin:$PATH
command -v versitygw >/dev/null || { echo "harness-stores.sh: versitygw not on PATH" >&2; exit 2; }

W=$(mktemp -d /tmp/harness-stores.XXXX); chmod 755 "$W"
BUCKET=company
mkdir -p "$W/s3/$BUCKET" "$W/mirror" "$W/mnt"
chown "$BBUSER:$BBUSER" "$W/mnt"   # the mount owner (bbuser) may publish and use the hashserv socket

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
S3PORT=$(freeport); HTTPPORT=$(freeport)
export AWS_ACCESS_KEY_ID=mtest-access AWS_SECRET_ACCESS_KEY=mtest-secret-$$

PIDS=()
MNT_PID=
cleanup() {
    [ -n "$MNT_PID" ] && kill -TERM "$MNT_PID" 2>/dev/null && wait "$MNT_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    mountpoint -q "$W/mnt" && fusermount3 -u "$W/mnt"
}
trap cleanup EXIT

versitygw --port 127.0.0.1:$S3PORT --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" \
    --keep-alive --quiet posix "$W/s3" > "$W/versitygw.log" 2>&1 &
PIDS+=($!)
python3 -m http.server "$HTTPPORT" --bind 127.0.0.1 --directory "$W/mirror" > "$W/http.log" 2>&1 &
PIDS+=($!)
waiturl() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "no answer from $1" >&2; exit 2; }
waiturl "http://127.0.0.1:$S3PORT/"
waiturl "http://127.0.0.1:$HTTPPORT/"

cat > "$W/company.toml" <<EOF
[[store]]
name = "company"
url = "s3://$BUCKET"
endpoint = "http://127.0.0.1:$S3PORT"
path_style = true
EOF
cat "$W/company.toml" > "$W/two.toml"
cat >> "$W/two.toml" <<EOF

[[store]]
name = "public"
url = "http://127.0.0.1:$HTTPPORT/"
EOF

# mount CONFIG TAG: starts a mount in the background (MNT_PID) and waits until it is ready
mount_stores() {
    rm -f "$W/ready"
    "$BIN" mount --config "$1" --allow-other --cache-dir "$W/cache-$2" --ready-file "$W/ready" \
        --hashserv "unix://$W/hs-$2.sock" "$W/mnt" > "$W/mount-$2.log" 2>&1 &
    MNT_PID=$!
    for _ in $(seq 120); do
        [ -e "$W/ready" ] && return 0
        kill -0 "$MNT_PID" 2>/dev/null || break
        sleep 0.5
    done
    echo "mount $2 did not come up:"; tail -20 "$W/mount-$2.log"; exit 2
}
# unmount: SIGTERM, the mount drains its upload queue and exits
unmount_stores() { kill -TERM "$MNT_PID"; wait "$MNT_PID"; echo "mount exit=$?"; MNT_PID=; }
# bitbake TAG [VAR=value...]: one harness build against the mount; its output in $W/bitbake-TAG.txt
bitbake_run() {
    local tag=$1; shift
    env RUNS=1 BB_HASHSERVE="unix://$W/hs-$CUR.sock" "$@" "$H/run-probe.sh" "$W/mnt" > "$W/bitbake-$tag.txt" 2>&1
    local rc=$?
    grep -E "Sstate summary|Tasks Summary|bitbake exit|^ERROR" "$W/bitbake-$tag.txt"
    return $rc
}
objects() { find "$1" -type f -name 'sstate:*' -not -path '*/.sstatefs/*' | wc -l; }

fails=0
check() { if eval "$2"; then echo "OK: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi; }

echo "== populate through a mount of the company bucket alone"
CUR=populate; mount_stores "$W/company.toml" populate
bitbake_run populate CLEAR_UNIHASH_CACHE=1
unmount_stores
total=$(objects "$W/s3/$BUCKET")
check "populate published sstate objects into the bucket ($total)" '[ "$total" -gt 0 ]'

echo "== split: every other object (with its .siginfo/.sig) to the plain HTTP mirror"
n=0
while IFS= read -r f; do
    n=$((n + 1))
    [ $((n % 2)) = 0 ] || continue
    rel=${f#"$W/s3/$BUCKET/"}
    for g in "$f" "$f.siginfo" "$f.sig"; do
        [ -e "$g" ] || continue
        mkdir -p "$W/mirror/$(dirname "$rel")"
        mv "$g" "$W/mirror/${g#"$W/s3/$BUCKET/"}"
    done
done < <(find "$W/s3/$BUCKET" -type f -name 'sstate:*' -not -name '*.siginfo' -not -name '*.sig' -not -path '*/.sstatefs/*' | sort)
"$BIN" index build --config "$W/company.toml" --quiet 2>&1 | tail -2
in_bucket=$(objects "$W/s3/$BUCKET"); in_mirror=$(objects "$W/mirror")
echo "objects: bucket $in_bucket, mirror $in_mirror"
check "objects split between the two stores" '[ "$in_bucket" -gt 0 ] && [ "$in_mirror" -gt 0 ] && [ $((in_bucket + in_mirror)) = "$total" ]'
check "no index in the mirror" '[ ! -e "$W/mirror/.sstatefs" ]'
m_split=$(find "$W/mirror" -type f -exec sha256sum {} + | sort)

if [ "${STOP_AFTER:-}" = split ]; then
    echo "work directory: $W (STOP_AFTER=split)"; [ "$fails" = 0 ] && exit 0; exit 1
fi

echo "== restore through a mount of company + public on a fresh cache directory"
CUR=two; mount_stores "$W/two.toml" two
bitbake_run restore CLEAR_UNIHASH_CACHE=1   # unihashes from the mount's merged server
check "restore: every setscene task restored (Local = Wanted, Missed 0)" \
    "grep -qE 'Sstate summary: Wanted ([0-9]+) Local \\1 .* Missed 0 ' '$W/bitbake-restore.txt'"
check "the mirror was asked for objects" "grep -qE '\"(GET|HEAD) /[^ ]*sstate(:|%3[aA])' '$W/http.log'"

echo "objects after the restore: bucket $(objects "$W/s3/$BUCKET"), mirror $(objects "$W/mirror") (what a restore publishes, if anything, goes to the bucket)"

echo "== build with a changed recipe (PROBE_SALT=$SALT) on the same mount"
b_before=$(find "$W/s3/$BUCKET" -type f | sort)
bitbake_run salted PROBE_SALT="$SALT" CLEAR_UNIHASH_CACHE=1
salted_rc=$?
unmount_stores
b_after=$(find "$W/s3/$BUCKET" -type f | sort); m_after=$(find "$W/mirror" -type f -exec sha256sum {} + | sort)
new_in_bucket=$(comm -13 <(echo "$b_before") <(echo "$b_after") | grep -c 'sstate:')
echo "objects: bucket $(objects "$W/s3/$BUCKET") (+$new_in_bucket new sstate files), mirror $(objects "$W/mirror")"
comm -13 <(echo "$b_before") <(echo "$b_after") | sed "s|$W/s3/$BUCKET/|  new in bucket: |" | head -20
check "changed-recipe build succeeded" '[ "$salted_rc" = 0 ]'
check "it published into the bucket" '[ "$new_in_bucket" -gt 0 ]'
check "the mirror directory is unchanged since the split (restore and changed-recipe build)" '[ "$m_split" = "$m_after" ]'

echo "work directory: $W"
if [ "$fails" = 0 ]; then
    echo "ALL OK"
    [ "${KEEP:-1}" = 0 ] && rm -rf "$W"
    exit 0
fi
echo "$fails check(s) failed"
exit 1
