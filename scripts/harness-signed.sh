#!/bin/bash
# scripts/harness-signed.sh BINARY: an unchanged bitbake build restored through a mount whose
# store requires two sign-offs (issue 15), with a harness of ../shared/harness set up in
# $HARNESS_DIR (default /work/harness-sign; build user bbuser) whose local.conf signs and
# verifies sstate:
#
#   SSTATE_SIG_KEY = "<alice's fingerprint>"   SSTATE_SIG_PASSPHRASE = "..."
#   SSTATE_VERIFY_SIG = "1"   SSTATE_VALID_SIGS = "<alice's and bob's long key ids>"
#   GPG_PATH = "<a GnuPG home owned by bbuser holding both keys>"
#
# and $HARNESS_DIR/keys/ holding alice's and bob's public keys, $HARNESS_DIR/bob.sec and
# $HARNESS_DIR/bob.pass bob's secret key and passphrase. As root:
#
#   1. populate: bitbake builds through a mount of a versitygw bucket (no policy); its .sig files
#      are alice's (SSTATE_SIG_KEY);
#   2. bob signs off half of the archives (`sstatefs sign --list`);
#   3. restore through a mount with keyring = keys/, require_signoffs = 2, fresh cache: exactly
#      the archives bob did not sign are rebuilt (Missed = their number), the others restored,
#      and the mount logs the unsigned ones as hidden;
#   4. bob signs off the rest (`sstatefs sign --all`: resumable, signs only what is left);
#   5. restore again on a fresh cache: everything restored (Missed 0), bitbake's own
#      SSTATE_VERIFY_SIG accepting the presented .sig.
# Prints OK/FAIL lines; exit 0 when every check passed.
set -u
BIN=$(readlink -f "${1:?usage: harness-signed.sh BINARY}")
H=${HARNESS_DIR:-/work/harness-sign}
[ "$(id -u)" = 0 ] || { echo "harness-signed.sh: run as root" >&2; exit 2; }
for f in run-probe.sh keys bob.sec bob.pass; do [ -e "$H/$f" ] || { echo "harness-signed.sh: $H/$f missing (see the header)" >&2; exit 2; }; done
export PATH=$(go env GOPATH 2>/dev/null)/bin:$PATH
W=$(mktemp -d /tmp/harness-signed.XXXX); chmod 755 "$W"
mkdir -p "$W/s3/sstate" "$W/mnt"; chown bbuser:bbuser "$W/mnt"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=harness AWS_SECRET_ACCESS_KEY=harness-secret-$$
versitygw --port 127.0.0.1:$PORT --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" --keep-alive --quiet posix "$W/s3" > "$W/versitygw.log" 2>&1 &
GW=$!
MNT=
cleanup() { [ -n "$MNT" ] && kill -TERM $MNT 2>/dev/null && wait $MNT; kill $GW; wait $GW 2>/dev/null; mountpoint -q "$W/mnt" && fusermount3 -u "$W/mnt"; }
trap cleanup EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.2; done
STORE=(--store "company=s3://sstate" --store-endpoint "http://127.0.0.1:$PORT" --store-path-style)
POLICY=(--store-keyring "$H/keys" --store-require-signoffs 2)
fails=0
check() { if eval "$2"; then echo "OK: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi; }
mount_run() { # TAG [mount flags...]
    local tag=$1; shift
    rm -f "$W/ready"
    "$BIN" mount "${STORE[@]}" "$@" --allow-other --cache-dir "$W/cache-$tag" --ready-file "$W/ready" \
        --hashserv "unix://$W/hs.sock" "$W/mnt" > "$W/mount-$tag.log" 2>&1 &
    MNT=$!
    for _ in $(seq 120); do [ -e "$W/ready" ] && break; sleep 0.5; done
    env RUNS=1 BB_HASHSERVE="unix://$W/hs.sock" "$H/run-probe.sh" "$W/mnt" > "$W/bitbake-$tag.txt" 2>&1
    grep -E "Sstate summary|Tasks Summary|bitbake exit" "$W/bitbake-$tag.txt"
    kill -TERM $MNT; wait $MNT; MNT=
}
missed() { sed -n 's/.*Missed \([0-9]*\).*/\1/p' "$W/bitbake-$1.txt" | tail -1; }
wanted() { sed -n 's/.*Wanted \([0-9]*\).*/\1/p' "$W/bitbake-$1.txt" | tail -1; }

echo "== 1. populate (bitbake signs with alice)"
mount_run populate
archives=$(find "$W/s3/sstate" -name 'sstate:*.tar.zst' -not -path '*/.sstatefs/*' | sed "s#^$W/s3/sstate/##" | sort)
sigs=$(find "$W/s3/sstate" -name 'sstate:*.tar.zst.sig' | wc -l)
n=$(echo "$archives" | wc -l)
check "populate published $n archives, each with bitbake's .sig ($sigs)" '[ "$n" -gt 0 ] && [ "$sigs" = "$n" ]'

echo "== 2. bob signs off half of them"
echo "$archives" | awk 'NR % 2 == 1' > "$W/half.txt"
half=$(wc -l < "$W/half.txt")
"$BIN" sign "${STORE[@]}" --store company --key "$H/bob.sec" --passphrase-file "$H/bob.pass" --list "$W/half.txt" --quiet
check "sign --list exit 0" '[ $? = 0 ]'
"$BIN" verify "${STORE[@]}" "${POLICY[@]}" --store company --quiet > "$W/verify-half.txt" 2>&1
hidden=$(grep -c "^hidden: unsigned" "$W/verify-half.txt")
check "verify: the $((n - half)) archives bob did not sign would be hidden ($hidden)" '[ "$hidden" = $((n - half)) ]'

echo "== 3. restore with require_signoffs = 2: what bob did not sign is rebuilt"
mount_run half "${POLICY[@]}"
logged=$(grep -c "object hidden by the store's signature policy" "$W/mount-half.log")
check "bitbake missed exactly the unsigned archives ($(missed half) of $(wanted half), $((n - half)) unsigned)" '[ "$(missed half)" = $((n - half)) ]'
check "no setscene task failed (the hidden ones are simply missed)" '! grep -q "Setscene task.*failed" "$W/bitbake-half.txt"'
check "the mount logged them hidden ($logged)" '[ "$logged" -ge $((n - half)) ]'
for a in $(comm -23 <(echo "$archives") <(sort "$W/half.txt")); do
    b=$(basename "$a")
    grep -q "Extracting.*$b\|$b.*restored" "$W/bitbake-half.txt" && { echo "FAIL: unsigned $b restored"; fails=$((fails + 1)); }
done

echo "== 4. bob signs off the rest (resumable)"
"$BIN" sign "${STORE[@]}" --store company --key "$H/bob.sec" --passphrase-file "$H/bob.pass" --all --quiet > "$W/sign-all.txt" 2>&1
check "sign --all exit 0" '[ $? = 0 ]'
"$BIN" verify "${STORE[@]}" "${POLICY[@]}" --store company --quiet > "$W/verify-all.txt" 2>&1
check "verify: every archive shown" '[ $? = 0 ]'

echo "== 5. restore on a fresh cache: everything restored, bitbake verifying the presented .sig"
mount_run all "${POLICY[@]}"
check "restore complete (Missed $(missed all), Wanted $(wanted all))" '[ "$(missed all)" = 0 ] && [ -n "$(wanted all)" ]'
check "bitbake raised no signature warning" '! grep -q "Cannot verify signature\|No signature file" "$W/bitbake-all.txt"'
check "no setscene task failed, bitbake exit 0" '! grep -q "Setscene task.*failed" "$W/bitbake-all.txt" && grep -q "bitbake exit=0" "$W/bitbake-all.txt"'
echo "work directory: $W"
[ $fails = 0 ] && echo "ALL OK" || { echo "$fails FAILED"; exit 1; }
