package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/sstate"
)

// TestClientHelper is the client the tests below run as nobody (through
// testutil.NobodyHelper); it skips unless SSTATEFS_TEST_CLIENT says what to
// do, and prints what it got on stdout:
//
//	hashserv NETWORK ADDR: the protocol's handshake, then each line of
//	SSTATEFS_TEST_LINES; prints "reply: ..." per answer, "closed" when the
//	server closes the connection
//	post SOCKET PATH: POST SSTATEFS_TEST_BODY over a unix socket; prints
//	"status: CODE"
//
// and "dial: ERROR" when it cannot connect.
func TestClientHelper(t *testing.T) {
	what := strings.Fields(os.Getenv("SSTATEFS_TEST_CLIENT"))
	if len(what) != 3 {
		t.Skip("run by other tests as another user")
	}
	switch what[0] {
	case "hashserv":
		c, err := net.DialTimeout(what[1], what[2], 10*time.Second)
		if err != nil {
			fmt.Println("dial:", err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(c, "OEHASHEQUIV 1.1\nneeds-headers: false\n\n")
		r := bufio.NewReader(c)
		for _, line := range strings.Split(os.Getenv("SSTATEFS_TEST_LINES"), "\n") {
			io.WriteString(c, line+"\n")
			resp, err := r.ReadString('\n')
			if err != nil {
				fmt.Println("closed")
				return
			}
			fmt.Print("reply: ", resp)
		}
	case "post":
		client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", what[1])
		}}}
		resp, err := client.Post("http://sstatefs"+what[2], "application/json", strings.NewReader(os.Getenv("SSTATEFS_TEST_BODY")))
		if err != nil {
			fmt.Println("dial:", err)
			return
		}
		resp.Body.Close()
		fmt.Println("status:", resp.StatusCode)
	}
}

// asNobody runs TestClientHelper as uid and gid 65534 and returns its output.
func asNobody(t *testing.T, env ...string) string {
	t.Helper()
	cmd := testutil.NobodyHelper(t, "TestClientHelper", env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client as nobody: %v\n%s%s", err, out, stderr.String())
	}
	return string(out)
}

// startLoggedMount is startTestMount with the mount's log kept for the
// test to read.
func startLoggedMount(t *testing.T, cfg config.Config) (*mount.Mount, *testutil.SyncBuffer) {
	t.Helper()
	testutil.RequireFUSE(t)
	var buf testutil.SyncBuffer
	var w io.Writer = &buf
	if testing.Verbose() {
		w = io.MultiWriter(&buf, os.Stderr)
	}
	// as newLogger does: warnings and errors are kept for the status
	log := slog.New(mount.RememberErrors(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
	m, err := mount.Start(context.Background(), cfg, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m, &buf
}

func socketOwner(t *testing.T, path string) (os.FileMode, uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), st.Uid, st.Gid
}

// TestHashservWhoMayRecord: the hash equivalence socket of a mount is
// created owner-only for the mount owner, a --hashserv-group may connect
// but its members record only when the publish rule allows them, and a
// loopback TCP listener tells its clients apart by the uid of their socket.
// Other local users are nobody (uid 65534), run as a real second process.
func TestHashservWhoMayRecord(t *testing.T) {
	dir := t.TempDir()
	uni := hexOf("U")
	obj := sstate.Name{Native: "debian-12", PN: "p-native", Arch: "x86_64-linux", PV: "1", PR: "r0", PkgArch: "x86_64", Version: "14", Hash: uni, Task: "populate_sysroot", Ext: ".tar.zst"}
	p := filepath.Join(dir, obj.String())
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("the built output"), 0o644)
	base := testConfig(t, "file://"+dir)
	if err := indexBuild(context.Background(), base.Stores[0], 1, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	const method = "oe.sstatesig.OEOuthashBasic"
	report := func(task string) string {
		return fmt.Sprintf(`{"report": {"taskhash": %q, "method": %q, "outhash": %q, "unihash": %q, "PN": "p-native", "PV": "1", "PR": "r0", "task": "populate_sysroot"}}`, task, method, hexOf("out of "+task), task)
	}
	equiv := func(task string) string {
		return fmt.Sprintf(`{"report-equiv": {"taskhash": %q, "method": %q, "unihash": %q}}`, task, method, hexOf("attacker"))
	}
	recorded := func(m *mount.Mount, task string) bool {
		m.Drain() // reports wait for the batch (publish.record_interval): write it now
		_, ok := m.Live().Current().Equivalence(method, task)
		return ok
	}
	mount := func(t *testing.T, listen, owner, group string) (*mount.Mount, *testutil.SyncBuffer) {
		cfg := base
		cfg.Cache.Dir = t.TempDir()
		cfg.Hashserv.Listen, cfg.Mount.Owner, cfg.Hashserv.Group = listen, owner, group
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		return startLoggedMount(t, cfg)
	}

	t.Run("owner only", func(t *testing.T) {
		sock := filepath.Join(testutil.OpenDir(t), "hs.sock")
		m, _ := mount(t, "unix://"+sock, "1000:1000", "")
		if mode, uid, gid := socketOwner(t, sock); mode != os.ModeSocket|0o600 || uid != 1000 || gid != 1000 {
			t.Errorf("socket %v %d:%d, want 0600 owned by the mount owner 1000:1000", mode, uid, gid)
		}
		task := hexOf("T-nobody")
		got := asNobody(t, "SSTATEFS_TEST_CLIENT=hashserv unix "+sock, "SSTATEFS_TEST_LINES="+report(task))
		if !strings.HasPrefix(got, "dial:") || !strings.Contains(got, "permission denied") {
			t.Errorf("nobody connected to an owner-only socket: %s", got)
		}
		// root may (and passes the rule)
		c := dialHashserv(t, sock)
		c.call(t, report(hexOf("T-root")))
		if !recorded(m, hexOf("T-root")) || recorded(m, task) {
			t.Errorf("recorded: root's %v (want true), nobody's %v (want false)", recorded(m, hexOf("T-root")), recorded(m, task))
		}
	})

	t.Run("group reads, rule records", func(t *testing.T) {
		sock := filepath.Join(testutil.OpenDir(t), "hs.sock")
		m, log := mount(t, "unix://"+sock, "1000:1000", fmt.Sprint(testutil.Nobody))
		if mode, uid, gid := socketOwner(t, sock); mode != os.ModeSocket|0o660 || uid != 1000 || gid != testutil.Nobody {
			t.Errorf("socket %v %d:%d, want 0660, 1000:%d", mode, uid, gid, testutil.Nobody)
		}
		task := hexOf("T-group")
		for range 2 {
			got := asNobody(t, "SSTATEFS_TEST_CLIENT=hashserv unix "+sock, "SSTATEFS_TEST_LINES="+report(task)+"\n"+equiv(task))
			// the report is answered with the proposed unihash, as a
			// read-only server does; report-equiv is unknown there
			if !strings.Contains(got, `"unihash": "`+task+`"`) || !strings.Contains(got, "\nclosed\n") {
				t.Errorf("nobody in the socket's group got:\n%s", got)
			}
		}
		if recorded(m, task) {
			t.Error("the report of a user the publish rule refuses was recorded")
		}
		if n := strings.Count(log.String(), "may not record"); n != 1 {
			t.Errorf("refused uid logged %d times, want once:\n%s", n, log.String())
		}
		if !strings.Contains(log.String(), fmt.Sprintf("uid %d", testutil.Nobody)) {
			t.Errorf("the log does not name the uid:\n%s", log.String())
		}
	})

	t.Run("owner records", func(t *testing.T) {
		sock := filepath.Join(testutil.OpenDir(t), "hs.sock")
		owner := fmt.Sprintf("%d:%d", testutil.Nobody, testutil.Nobody)
		m, _ := mount(t, "unix://"+sock, owner, "")
		task := hexOf("T-owner")
		if got := asNobody(t, "SSTATEFS_TEST_CLIENT=hashserv unix "+sock, "SSTATEFS_TEST_LINES="+report(task)); !strings.HasPrefix(got, "reply:") {
			t.Fatalf("the mount owner: %s", got)
		}
		if !recorded(m, task) {
			t.Error("the mount owner's report was not recorded")
		}
	})

	t.Run("loopback TCP", func(t *testing.T) {
		m, log := mount(t, "127.0.0.1:0", "1000:1000", "")
		task := hexOf("T-tcp")
		got := asNobody(t, "SSTATEFS_TEST_CLIENT=hashserv tcp "+m.HashservAddr(), "SSTATEFS_TEST_LINES="+report(task))
		if !strings.Contains(got, `"unihash": "`+task+`"`) {
			t.Fatalf("nobody over TCP: %s", got)
		}
		if recorded(m, task) {
			t.Error("nobody recorded over loopback TCP")
		}
		if !strings.Contains(log.String(), fmt.Sprintf("uid %d (TCP)", testutil.Nobody)) {
			t.Errorf("the TCP client was not identified:\n%s", log.String())
		}
		c, err := net.Dial("tcp", m.HashservAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "OEHASHEQUIV 1.1\nneeds-headers: false\n\n"+report(hexOf("T-tcp-root"))+"\n")
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		if !recorded(m, hexOf("T-tcp-root")) {
			t.Error("root's report over loopback TCP was not recorded")
		}
	})
}

// TestHashservServeSocket: `hashserv serve` (no mount) gives the socket and
// the right to record to the invoking user.
func TestHashservServeSocket(t *testing.T) {
	for _, tc := range []struct {
		group string
		mode  os.FileMode
		gid   int
	}{{"", 0o600, os.Getgid()}, {fmt.Sprint(testutil.Nobody), 0o660, testutil.Nobody}} {
		owner, err := mount.HashservSocket(config.HashservConfig{Group: tc.group}, uint32(os.Getuid()), uint32(os.Getgid()))
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(t.TempDir(), "hs.sock")
		ctx, cancel := context.WithCancel(context.Background())
		_, _, err = mount.StartHashserv(ctx, "unix://"+sock, &nullBackend{}, false, owner, access.Rule{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}, testLogger(t))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		mode, uid, gid := socketOwner(t, sock)
		cancel()
		if mode != os.ModeSocket|tc.mode || uid != uint32(os.Getuid()) || gid != uint32(tc.gid) {
			t.Errorf("group %q: socket %v %d:%d, want %v %d:%d", tc.group, mode, uid, gid, tc.mode, os.Getuid(), tc.gid)
		}
	}
	if _, err := mount.HashservSocket(config.HashservConfig{Group: "no-such-group-here"}, 0, 0); err == nil || !strings.Contains(err.Error(), "no-such-group-here") {
		t.Errorf("unknown group: %v", err)
	}
}

// TestMetricsListenerNoActions: the metrics listener serves observation
// only (POST /prefetch there fetches nothing); the control socket is the
// mount owner's, mode 0600, and refuses an action from a user the publish
// rule refuses even when the socket is opened up; a non-loopback metrics
// address is warned about.
func TestMetricsListenerNoActions(t *testing.T) {
	dir := t.TempDir()
	key := testKey(900, "populate_sysroot")
	p := filepath.Join(dir, key)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, bytes.Repeat([]byte("x"), 10_000), 0o644)
	cfg := testConfig(t, "file://"+dir)
	if err := indexBuild(context.Background(), cfg.Stores[0], 1, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	cfg.Cache.Dir = testutil.OpenDir(t)
	cfg.Metrics.Addr = "127.0.0.1:0"
	cfg.Mount.Owner = "1000:1000"
	cfg.Prefetch.Mode = "off"
	m, log := startLoggedMount(t, cfg)
	body, _ := json.Marshal(mount.PrefetchRequest{Keys: []string{key}, Jobs: 1})

	for _, ct := range []string{"application/json", "text/plain"} {
		resp, err := http.Post("http://"+m.MetricsAddr()+"/prefetch", ct, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /prefetch (%s) on the metrics listener: %s, want 404 or 405", ct, resp.Status)
		}
	}
	if s := m.Cache().Stats(); s.Misses != 0 || s.Entries != 0 {
		t.Fatalf("the metrics listener made the mount fetch: %+v", s)
	}
	if strings.Contains(log.String(), "not on a loopback address") {
		t.Errorf("warned about a loopback metrics address:\n%s", log.String())
	}

	sock := mount.ControlSocket(cfg.Cache.Dir)
	if mode, uid, gid := socketOwner(t, sock); mode != os.ModeSocket|0o600 || uid != 1000 || gid != 1000 {
		t.Errorf("control socket %v %d:%d, want 0600 owned by the mount owner 1000:1000", mode, uid, gid)
	}
	env := []string{"SSTATEFS_TEST_CLIENT=post " + sock + " /prefetch", "SSTATEFS_TEST_BODY=" + string(body)}
	if got := asNobody(t, env...); !strings.Contains(got, "permission denied") {
		t.Errorf("nobody reached the owner-only control socket: %s", got)
	}
	// opened up by mistake: SO_PEERCRED still refuses the action
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := asNobody(t, env...); !strings.Contains(got, "status: 403") {
		t.Errorf("nobody's prefetch on an opened control socket: %s, want 403", got)
	}
	if s := m.Cache().Stats(); s.Misses != 0 || s.Entries != 0 {
		t.Fatalf("nobody made the mount fetch: %+v", s)
	}
	// root (and the owner) may: `sstatefs prefetch` uses the control socket
	res, err := prefetchViaMount(context.Background(), cfg.Cache.Dir, []string{key}, 1, io.Discard)
	if err != nil || res.Fetched != 1 {
		t.Fatalf("prefetch over the control socket: %+v %v", res, err)
	}
}

// TestObservationHasNoSecrets: the bearer token and the URL query of an
// https store (the places its credentials live) appear nowhere in what the
// metrics listener and the control socket serve, nor in the log, also
// after the store failed.
func TestObservationHasNoSecrets(t *testing.T) {
	const token, query = "tok-SECRET-7f3a", "sig-SECRET-91bd"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token || r.URL.Query().Get("sig") != query {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		// a failing mirror that quotes the request in its error
		http.Error(w, "broken: "+r.URL.String()+" "+r.Header.Get("Authorization"), http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	cfg := testConfig(t, srv.URL+"/sstate?sig="+query)
	cfg.Stores[0].BearerTokenFile = tokFile
	cfg.Metrics.Addr = "127.0.0.1:0"
	m, log := startLoggedMount(t, cfg)
	m.SetHealthEvery(0)
	// failures: a lookup and a read of objects the store answers 500 for
	os.Stat(filepath.Join(m.Mountpoint(), keyLic))
	os.ReadFile(filepath.Join(m.Mountpoint(), testKey(901, "package")))

	bodies := map[string]string{}
	for _, path := range []string{"/metrics", "/healthz", "/readyz", "/status"} {
		_, bodies["metrics listener "+path] = getStatus(t, "http://"+m.MetricsAddr()+path)
	}
	st, err := askStatus(cfg.Cache.Dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st)
	bodies["control socket /status"] = string(b)
	bodies["log"] = log.String()
	if !strings.Contains(bodies["metrics listener /status"], srv.Listener.Addr().String()) || len(st.Errors) == 0 {
		t.Fatalf("the status names neither the store nor its errors; nothing was checked:\n%s", bodies["metrics listener /status"])
	}
	for what, body := range bodies {
		if strings.Contains(body, "SECRET") {
			t.Errorf("%s shows a secret:\n%s", what, body)
		}
	}
}

// nullBackend knows nothing and records nothing.
type nullBackend struct{}

func (nullBackend) Get(string, string) (index.Equivalence, bool) {
	return index.Equivalence{}, false
}
func (nullBackend) GetByOuthash(string, string) (index.Equivalence, bool) {
	return index.Equivalence{}, false
}
func (nullBackend) ObjectExists(string) bool                        { return false }
func (nullBackend) Record(context.Context, index.Equivalence) error { return nil }

// TestHashservBitbakeClientAsOtherUser: bitbake's own client (from the tree
// named by SSTATEFS_BITBAKE_DIR), run as nobody, reports through a mount's
// socket: as a member of --hashserv-group its report is answered and not
// recorded; as the mount owner it is recorded.
func TestHashservBitbakeClientAsOtherUser(t *testing.T) {
	bb := os.Getenv("SSTATEFS_BITBAKE_DIR")
	if bb == "" {
		t.Skip("SSTATEFS_BITBAKE_DIR is not set")
	}
	py := "/usr/bin/python3" // one nobody may run
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	const script = `
import sys
sys.path.insert(0, sys.argv[1])
import hashserv
addr, method, task, outhash = sys.argv[2:6]
with hashserv.create_client(addr) as c:
    print("unihash", c.report_unihash(task, method, outhash, task)["unihash"])
`
	dir := testutil.OpenDir(t)
	f := filepath.Join(dir, "report.py")
	os.WriteFile(f, []byte(script), 0o644)
	store := t.TempDir()
	base := testConfig(t, "file://"+store)
	if err := indexBuild(context.Background(), base.Stores[0], 1, false, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	const method = "oe.sstatesig.OEOuthashBasic"
	for _, tc := range []struct {
		owner, group string
		records      bool
	}{
		{"1000:1000", fmt.Sprint(testutil.Nobody), false},
		{fmt.Sprintf("%d:%d", testutil.Nobody, testutil.Nobody), "", true},
	} {
		cfg := base
		cfg.Cache.Dir = t.TempDir()
		sock := filepath.Join(testutil.OpenDir(t), "hs.sock")
		cfg.Hashserv.Listen, cfg.Mount.Owner, cfg.Hashserv.Group = "unix://"+sock, tc.owner, tc.group
		m, _ := startLoggedMount(t, cfg)
		task := hexOf("bitbake as nobody " + tc.owner)
		cmd := exec.Command(py, f, filepath.Join(bb, "lib"), "unix://"+sock, method, task, hexOf("out "+tc.owner))
		cmd.Env = []string{"PYTHONDONTWRITEBYTECODE=1", "HOME=/nonexistent", "PATH=/usr/bin:/bin"}
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testutil.Nobody, Gid: testutil.Nobody, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "unihash "+task) {
			t.Fatalf("owner %s: bitbake's client as nobody: %v\n%s", tc.owner, err, out)
		}
		m.Drain() // reports wait for the batch (publish.record_interval): write it now
		if _, ok := m.Live().Current().Equivalence(method, task); ok != tc.records {
			t.Errorf("owner %s, group %q: nobody's report recorded: %v, want %v", tc.owner, tc.group, ok, tc.records)
		}
	}
}

// TestHashservGroupConfig: hashserv.group comes from the file or the flag,
// as a name or a gid; one that does not resolve is named in the error.
func TestHashservGroupConfig(t *testing.T) {
	t.Setenv("SSTATEFS_CONFIG", "")
	f := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(f, []byte("[hashserv]\ngroup = \"no-such-group-here\"\n"), 0o644)
	for _, tc := range []struct {
		args    []string
		want    string
		wantErr bool
	}{
		{[]string{"--config", f}, "", true},
		{[]string{"--config", f, "--hashserv-group", "4242"}, "4242", false},
		{[]string{"--config", "/dev/null", "--hashserv-group", "root"}, "root", false},
	} {
		fset := pflag.NewFlagSet("t", pflag.ContinueOnError)
		cf := config.NewFlags(fset)
		if err := fset.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := cf.Load()
		if tc.wantErr {
			if err == nil || !strings.Contains(err.Error(), "hashserv.group") || !strings.Contains(err.Error(), "no-such-group-here") {
				t.Errorf("%v: %v, want an error naming hashserv.group and the group", tc.args, err)
			}
			continue
		}
		if err != nil || cfg.Hashserv.Group != tc.want {
			t.Errorf("%v: group %q %v, want %q", tc.args, cfg.Hashserv.Group, err, tc.want)
		}
		o, err := mount.HashservSocket(cfg.Hashserv, 1000, 1000)
		if err != nil || o.Mode != 0o660 || (tc.want == "root" && o.GID != 0) || (tc.want == "4242" && o.GID != 4242) {
			t.Errorf("%v: socket %+v %v", tc.args, o, err)
		}
	}
}
