package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

// publishScript is bitbake's link publish in shell: temp file, chmod, ln.
const publishScript = `set -e
k="$1"; d="$SSTATE_DIR/$(dirname "$k")"
mkdir -p "$d"
printf 'payload of %s' "$k" > "$SSTATE_DIR/$k.tmpXYZ12"
chmod 0664 "$SSTATE_DIR/$k.tmpXYZ12"
ln "$SSTATE_DIR/$k.tmpXYZ12" "$SSTATE_DIR/$k"
rm "$SSTATE_DIR/$k.tmpXYZ12"
`

func TestRunWrapper(t *testing.T) {
	testutil.RequireFUSE(t)
	env := testutil.S3Server(t)
	bucket := env.NewBucket(t)
	cfg := s3Config(t, env, bucket)
	bin := buildBinary(t)
	base := []string{"run", "--store", cfg.Stores[0].URL, "--store-endpoint", env.Endpoint, "--store-path-style", "--config", "/dev/null"}

	// the command sees SSTATE_DIR on the mount, publishes, and its exit status passes through
	k1 := testKey(500, "populate_sysroot")
	cmd := exec.Command(bin, append(base, "--cache-dir", t.TempDir(), "--", "sh", "-c", publishScript+`
grep -q " $SSTATE_DIR fuse" /proc/mounts || { echo "SSTATE_DIR $SSTATE_DIR is not a FUSE mount"; exit 9; }
exit 3`, "sh", k1)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Fatalf("exit status: %v\n%s", err, out)
	}
	if got := storeObjects(t, cfg)[k1]; string(got) != "payload of "+k1 {
		t.Fatalf("published object not in the bucket when the wrapper exited: %q\n%s", got, out)
	}

	// SIGTERM to the wrapper stops the command, and what it published is still uploaded
	k2 := testKey(501, "populate_sysroot")
	ready := filepath.Join(t.TempDir(), "ready")
	cmd = exec.Command(bin, append(base, "--cache-dir", t.TempDir(), "--", "sh", "-c", publishScript+`
trap 'echo got TERM; exit 143' TERM
touch "$2"
while :; do sleep 0.1; done`, "sh", k2, ready)...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("command did not start:\n%s", buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 143 {
		t.Fatalf("after SIGTERM: %v\n%s", err, buf.String())
	}
	if !strings.Contains(buf.String(), "got TERM") {
		t.Errorf("the command did not get SIGTERM:\n%s", buf.String())
	}
	if got := storeObjects(t, cfg)[k2]; string(got) != "payload of "+k2 {
		t.Fatalf("object published before SIGTERM not uploaded: %q\n%s", got, buf.String())
	}
	// a command that does not exist: 127
	cmd = exec.Command(bin, append(base, "--cache-dir", t.TempDir(), "--", "/nonexistent/tool")...)
	if err := cmd.Run(); err == nil || err.(*exec.ExitError).ExitCode() != 127 {
		t.Fatalf("missing command: %v", err)
	}
}
