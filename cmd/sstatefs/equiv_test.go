package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/sstate"
)

func hexOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestEquivalentNameResolves: an object stored under its unihash is read
// through the name carrying an equivalent taskhash, with the same bytes and
// size, .siginfo included; nothing is copied in the store.
func TestEquivalentNameResolves(t *testing.T) {
	dir := t.TempDir()
	uni, task, other := hexOf("unihash"), hexOf("taskhash"), hexOf("unrelated")
	name := func(h string) sstate.Name {
		return sstate.Name{Native: "debian-12", PN: "zlib-native", Arch: "x86_64-linux", PV: "1.3", PR: "r0", PkgArch: "x86_64", Version: "14", Hash: h, Task: "populate_sysroot", Ext: ".tar.zst"}
	}
	pkg, sig := []byte(strings.Repeat("package bytes ", 5000)), []byte("siginfo bytes")
	stored := name(uni)
	for k, d := range map[string][]byte{stored.String(): pkg, stored.String() + ".siginfo": sig} {
		p := filepath.Join(dir, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, d, 0o644)
	}
	cfg := testConfig(t, "file://"+dir)
	ctx := context.Background()
	if err := indexBuild(ctx, cfg.Stores[0], 2, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	store, _ := stores.Open(ctx, cfg.Stores[0])
	j := index.NewJournal(store, index.JournalOptions{Writer: "test"})
	if err := j.Reported(ctx, index.Equivalence{Method: "oe.sstatesig.OEOuthashBasic", Taskhash: task, Outhash: hexOf("out"), Unihash: uni, PN: "zlib-native", Task: "populate_sysroot", Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	m := startTestMount(t, cfg)
	asked := name(task).String()
	fi, err := os.Stat(filepath.Join(m.Mountpoint(), asked))
	if err != nil || fi.Size() != int64(len(pkg)) {
		t.Fatalf("stat through the taskhash name: %v %v", fi, err)
	}
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), asked)); err != nil || !bytes.Equal(got, pkg) {
		t.Fatalf("read through the taskhash name: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), asked+".siginfo")); err != nil || !bytes.Equal(got, sig) {
		t.Fatalf("siginfo through the taskhash name: %v", err)
	}
	// a hash with no equivalence stays absent
	if _, err := os.Stat(filepath.Join(m.Mountpoint(), name(other).String())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unrelated name: %v", err)
	}
	if s := m.View().Stats(); s.Resolved < 2 {
		t.Errorf("resolved lookups %d, want at least 2", s.Resolved)
	}
	// nothing was copied in the store
	n := 0
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.Contains(p, ".sstatefs") {
			n++
		}
		return nil
	})
	if n != 2 {
		t.Errorf("store holds %d objects, want the 2 it had", n)
	}
}

// hsClient speaks the raw protocol: handshake, one JSON object per line.
type hsClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialHashserv(t *testing.T, sock string) *hsClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	io.WriteString(c, "OEHASHEQUIV 1.1\nneeds-headers: false\n\n")
	return &hsClient{conn: c, r: bufio.NewReader(c)}
}

func (h *hsClient) call(t *testing.T, line string) string {
	t.Helper()
	if _, err := io.WriteString(h.conn, line+"\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := h.r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return strings.TrimSpace(resp)
}

// TestMountHashserv: the mount serves bitbake's protocol from the store's
// index; a report with a known outhash maps a new taskhash to the existing
// unihash, exists-stream says true only for objects present, and the
// recorded equivalence makes the mount (and a second mount) resolve the new
// taskhash's name to the existing object.
func TestMountHashserv(t *testing.T) {
	dir := t.TempDir()
	uni, t1, t2, out := hexOf("U"), hexOf("T1"), hexOf("T2"), hexOf("O")
	obj := sstate.Name{Native: "debian-12", PN: "p-native", Arch: "x86_64-linux", PV: "1", PR: "r0", PkgArch: "x86_64", Version: "14", Hash: uni, Task: "populate_sysroot", Ext: ".tar.zst"}
	p := filepath.Join(dir, obj.String())
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("the built output"), 0o644)
	cfg := testConfig(t, "file://"+dir)
	if err := indexBuild(context.Background(), cfg.Stores[0], 1, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "hs.sock")
	cfg.Hashserv.Listen = "unix://" + sock
	m := startTestMount(t, cfg)
	c := dialHashserv(t, sock)
	if got := c.call(t, `{"ping": {}}`); got != `{"alive": true}` {
		t.Fatalf("ping: %s", got)
	}
	method := "oe.sstatesig.OEOuthashBasic"
	report := func(task, uh string) string {
		return c.call(t, fmt.Sprintf(`{"report": {"taskhash": %q, "method": %q, "outhash": %q, "unihash": %q, "PN": "p-native", "PV": "1", "PR": "r0", "task": "populate_sysroot"}}`, task, method, out, uh))
	}
	if got := report(t1, uni); !strings.Contains(got, `"unihash": "`+uni+`"`) {
		t.Fatalf("first report: %s", got)
	}
	// same output, new taskhash, bitbake proposes its taskhash as unihash:
	// the server answers with the existing unihash
	if got := report(t2, t2); !strings.Contains(got, `"unihash": "`+uni+`"`) {
		t.Fatalf("report with a known outhash: %s", got)
	}
	if got := c.call(t, `{"exists-stream": null}`); got != `"ok"` {
		t.Fatalf("exists-stream: %s", got)
	}
	if got := c.call(t, uni); got != "true" {
		t.Errorf("exists-stream of a present object: %s", got)
	}
	if got := c.call(t, hexOf("nothing")); got != "false" {
		t.Errorf("exists-stream of an absent object: %s", got)
	}
	c.call(t, "END")
	// once the batch holding the reports is written (after
	// publish.record_interval; the drain writes it now), the mount resolves
	// the new taskhash's name
	m.Drain()
	asked := obj
	asked.Hash = t2
	if got, err := os.ReadFile(filepath.Join(m.Mountpoint(), asked.String())); err != nil || string(got) != "the built output" {
		t.Fatalf("read through the equivalent name: %q %v", got, err)
	}
	// and a second mount reads the equivalence from the store
	cfg2 := testConfig(t, "file://"+dir)
	m2 := startTestMount(t, cfg2)
	if got, err := os.ReadFile(filepath.Join(m2.Mountpoint(), asked.String())); err != nil || string(got) != "the built output" {
		t.Fatalf("second mount: %q %v", got, err)
	}
	if n := m2.Live().Current().NumEquivalences(); n != 2 {
		t.Errorf("second mount sees %d equivalences, want 2", n)
	}
	// a bad request gets bitbake's error answer, and nothing is recorded
	c2 := dialHashserv(t, sock)
	if got := c2.call(t, fmt.Sprintf(`{"report": {"taskhash": %q, "method": "x", "outhash": %q, "unihash": "abc"}}`, hexOf("T3"), out)); !strings.Contains(got, "invoke-error") {
		t.Errorf("invalid unihash: %s", got)
	}
	if _, ok := m.Live().Current().Equivalence("x", hexOf("T3")); ok {
		t.Error("an invalid report was recorded")
	}
}
