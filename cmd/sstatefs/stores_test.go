package main

// End-to-end tests of one mount over several stores in trust order
// (issue 13): a file:// "project" store, an s3:// "company" bucket on
// versitygw and an http:// "public" mirror without an index, served at
// once. Everything is observed from outside: through the file system of a
// real mount, the mount's hash equivalence socket, its /healthz, and the
// stores' own contents and request logs.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/sstate"
)

// The stores of a trustStores, by trust order in the default configuration.
const (
	stProject = iota // file://, publish store
	stCompany        // s3:// on versitygw
	stPublic         // http:// mirror without index
)

var trustNames = [...]string{"project", "company", "public"}

// hangLimit bounds every file system operation of the tests that take a
// store away: a hang detector, not a measure of speed.
const hangLimit = 60 * time.Second

// trustStores is three real stores and a configuration listing them.
type trustStores struct {
	projectDir string
	s3         testutil.S3Env
	bucket     string
	mirrorDir  string
	mirror     *httpMirror
	cfg        config.Config // Stores in the order project, company, public
}

// httpMirror is a plain HTTP sstate mirror (net/http FileServer over a
// directory) on 127.0.0.1 that counts the requests for each path and can be
// stopped or made to hang mid-run.
type httpMirror struct {
	srv *httptest.Server

	mu       sync.Mutex     // protects requests, hang
	requests map[string]int // URL path -> requests
	hang     bool           // accept requests and never answer them

	release   chan struct{} // closed to let hung requests go
	closeOnce sync.Once
}

func startMirror(t *testing.T, dir string) *httpMirror {
	t.Helper()
	m := &httpMirror{requests: map[string]int{}, release: make(chan struct{})}
	files := http.FileServer(http.Dir(dir))
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.requests[r.URL.Path]++
		hang := m.hang
		m.mu.Unlock()
		if hang {
			select {
			case <-r.Context().Done():
			case <-m.release:
			}
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(m.stop)
	return m
}

// stop closes the server: connections are refused from then on.
func (m *httpMirror) stop() {
	m.closeOnce.Do(func() {
		close(m.release) // httptest's Close waits for the handlers
		m.srv.Close()
	})
}

func (m *httpMirror) setHang() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hang = true
}

// objectRequests counts the requests for sstate objects (not for the
// index area, which a mount may look for now and then) so far.
func (m *httpMirror) objectRequests() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for p, n := range m.requests {
		if !strings.HasPrefix(strings.TrimPrefix(p, "/"), backend.MetaPrefix) {
			out[strings.TrimPrefix(p, "/")] = n
		}
	}
	return out
}

// newTrustStores starts the three stores, empty, and a configuration listing
// them in trust order with the project store as publish store.
func newTrustStores(t *testing.T) *trustStores {
	t.Helper()
	s := &trustStores{projectDir: t.TempDir(), mirrorDir: t.TempDir(), s3: testutil.S3Server(t)}
	s.bucket = s.s3.NewBucket(t)
	s.mirror = startMirror(t, s.mirrorDir)
	t.Setenv("AWS_ACCESS_KEY_ID", s.s3.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s.s3.SecretKey)
	cfg := config.Defaults()
	cfg.Stores = []config.StoreConfig{
		{URL: "file://" + s.projectDir, Name: trustNames[stProject], Publish: true},
		{URL: "s3://" + s.bucket + "/sstate", Name: trustNames[stCompany], Endpoint: s.s3.Endpoint, PathStyle: true},
		{URL: s.mirror.srv.URL + "/", Name: trustNames[stPublic]},
	}
	for i := range cfg.Stores {
		cfg.Stores[i].Timeout = config.Duration{Duration: 2 * time.Second}
		config.StoreDefaults(&cfg.Stores[i])
	}
	cfg.Cache.Dir = t.TempDir()
	cfg.Publish.DrainTimeout = config.Duration{Duration: 20 * time.Second}
	s.cfg = cfg
	return s
}

// config returns a copy of the configuration with a fresh cache directory,
// for one more mount of the same stores.
func (s *trustStores) config(t *testing.T) config.Config {
	cfg := s.cfg
	cfg.Stores = append([]config.StoreConfig(nil), s.cfg.Stores...)
	cfg.Cache.Dir = t.TempDir()
	return cfg
}

func validConfig(t *testing.T, cfg config.Config) config.Config {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// open opens store i of the set directly (not through a mount).
func (s *trustStores) open(t *testing.T, i int) backend.Store {
	t.Helper()
	st, err := stores.Open(context.Background(), s.cfg.Stores[i])
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// put writes an object into store i the way each store is filled in real
// life: files in the project directory and the mirror's directory, an S3
// upload into the bucket.
func (s *trustStores) put(t *testing.T, i int, key string, data []byte) {
	t.Helper()
	switch i {
	case stProject, stPublic:
		dir := s.projectDir
		if i == stPublic {
			dir = s.mirrorDir
		}
		p := filepath.Join(dir, key)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	case stCompany:
		if err := s.open(t, stCompany).Create(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
}

// buildIndexes indexes the project and company stores (the mirror has
// none: it is probed).
func (s *trustStores) buildIndexes(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, i := range []int{stProject, stCompany} {
		st := s.open(t, i)
		ix, err := index.Build(ctx, st, index.BuildOptions{Concurrency: 2})
		if err != nil {
			t.Fatalf("index of %s: %v", trustNames[i], err)
		}
		if err := index.Save(ctx, st, ix); err != nil {
			t.Fatalf("index of %s: %v", trustNames[i], err)
		}
	}
}

// report records equivalences in store i's journal, as another builder's
// mount would have.
func (s *trustStores) report(t *testing.T, i int, eqs ...index.Equivalence) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	j := index.NewJournal(s.open(t, i), index.JournalOptions{Writer: "builder-" + trustNames[i]})
	for _, e := range eqs {
		if err := j.Reported(ctx, e); err != nil {
			t.Fatalf("equivalence in %s: %v", trustNames[i], err)
		}
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// contents is what a store holds: key -> bytes (index area left out
// unless withMeta).
func (s *trustStores) contents(t *testing.T, i int, withMeta bool) map[string][]byte {
	t.Helper()
	if i == stPublic {
		// the mirror cannot be listed over HTTP: read its directory
		return dirFiles(t, s.mirrorDir)
	}
	ctx := context.Background()
	st := s.open(t, i)
	out := map[string][]byte{}
	err := st.List(ctx, "", func(oi backend.ObjectInfo) error {
		if backend.IsMeta(oi.Key) && !withMeta {
			return nil
		}
		b, err := testutil.ReadAll(t, st, oi.Key, 0, -1)
		out[oi.Key] = b
		return err
	})
	if err != nil {
		t.Fatalf("listing %s: %v", trustNames[i], err)
	}
	return out
}

// dirFiles is every file under dir (key -> bytes).
func dirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// diffContents describes how after differs from before ("" if equal).
func diffContents(before, after map[string][]byte) string {
	var d []string
	for k, b := range before {
		a, ok := after[k]
		switch {
		case !ok:
			d = append(d, "removed "+k)
		case !bytes.Equal(a, b):
			d = append(d, "changed "+k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			d = append(d, "added "+k)
		}
	}
	return strings.Join(d, "; ")
}

// bytesOf is the content store i holds under key in these tests: different
// in every store, so the bytes read tell which store served them.
func bytesOf(i int, key string) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%s's bytes of %s\n", trustNames[i], key)), 300)
}

// startStoresMount starts a mount and returns it with an idempotent close
// (the test may close it early to see what it left in the stores).
func startStoresMount(t *testing.T, cfg config.Config) (*mount.Mount, func()) {
	t.Helper()
	m, err := tryMount(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeMount := func() {
		once.Do(func() {
			if err := m.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(closeMount)
	return m, closeMount
}

// tryMount runs mount.Start under the hang detector and returns what it
// returned; the caller closes a mount that came up.
func tryMount(t *testing.T, cfg config.Config) (*mount.Mount, error) {
	t.Helper()
	testutil.RequireFUSE(t)
	type started struct {
		m   *mount.Mount
		err error
	}
	r := boundedCall(t, "mount.Start", func() started {
		m, err := mount.Start(context.Background(), cfg, t.TempDir(), testLogger(t))
		return started{m, err}
	})
	return r.m, r.err
}

// boundedCall runs f and fails the test when f has not returned after
// hangLimit: a hang detector (a stuck FUSE operation or store call), not
// an assertion about speed. f must not call t.Fatal.
func boundedCall[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	timer := time.NewTimer(hangLimit)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("%s did not return within %v: hung", what, hangLimit)
		panic("unreachable")
	}
}

type readResult struct {
	data []byte
	err  error
}

// readVia reads key through the mount, bounded.
func readVia(t *testing.T, mp, key string) readResult {
	t.Helper()
	return boundedCall(t, "read "+key, func() readResult {
		b, err := os.ReadFile(filepath.Join(mp, key))
		return readResult{b, err}
	})
}

// statVia stats key through the mount, bounded.
func statVia(t *testing.T, mp, key string) (os.FileInfo, error) {
	t.Helper()
	type res struct {
		fi  os.FileInfo
		err error
	}
	r := boundedCall(t, "stat "+key, func() res {
		fi, err := os.Stat(filepath.Join(mp, key))
		return res{fi, err}
	})
	return r.fi, r.err
}

// wantBytes reads key through the mount and fails unless it is store i's
// bytes of key.
func wantBytes(t *testing.T, mp, key string, i int) {
	t.Helper()
	wantObject(t, mp, key, i, key)
}

// wantObject reads asked through the mount and fails unless it is store
// i's bytes of the object stored (another name when asked resolves
// through a hash equivalence).
func wantObject(t *testing.T, mp, asked string, i int, stored string) {
	t.Helper()
	r := readVia(t, mp, asked)
	switch want := bytesOf(i, stored); {
	case r.err != nil:
		t.Errorf("read %s (want %s's %s): %v", asked, trustNames[i], stored, r.err)
	case !bytes.Equal(r.data, want):
		t.Errorf("read %s: got %q..., want %s's bytes of %s", asked, firstLine(r.data), trustNames[i], stored)
	}
}

// wantAbsent stats key through the mount and fails unless it is ENOENT.
func wantAbsent(t *testing.T, mp, key string) {
	t.Helper()
	if _, err := statVia(t, mp, key); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat %s = %v, want ENOENT", key, err)
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// TestStoresTrustOrder: names in several stores with different bytes are
// served from the most trusted store that has them; a name only in the
// mirror without index is probed and served; a name nowhere is ENOENT; and
// the existence and bytes of names the indexed stores hold cost the mirror
// no request (it is probed only after the indexed stores missed).
func TestStoresTrustOrder(t *testing.T) {
	s := newTrustStores(t)
	kAll := testKey(1301, "populate_sysroot")       // in all three stores
	kCompanyPublic := testKey(1302, "package")      // company and public
	kPublic := testKey(1303, "populate_lic")        // public only
	kCompany := testKey(1304, "package_write_ipk")  // company only
	kProject := testKey(1305, "deploy_source_date") // project only
	kProjectPublic := testKey(1306, "packagedata")  // project and public
	kNowhere := testKey(1307, "populate_sysroot")
	for _, i := range []int{stProject, stCompany, stPublic} {
		s.put(t, i, kAll, bytesOf(i, kAll))
	}
	for _, i := range []int{stCompany, stPublic} {
		s.put(t, i, kCompanyPublic, bytesOf(i, kCompanyPublic))
	}
	for _, i := range []int{stProject, stPublic} {
		s.put(t, i, kProjectPublic, bytesOf(i, kProjectPublic))
	}
	s.put(t, stPublic, kPublic, bytesOf(stPublic, kPublic))
	s.put(t, stCompany, kCompany, bytesOf(stCompany, kCompany))
	s.put(t, stProject, kProject, bytesOf(stProject, kProject))
	s.buildIndexes(t)

	m, _ := startStoresMount(t, validConfig(t, s.config(t)))
	mp := m.Mountpoint()
	indexed := map[string]int{kAll: stProject, kCompanyPublic: stCompany, kCompany: stCompany, kProject: stProject, kProjectPublic: stProject}

	before := s.mirror.objectRequests()
	for k, i := range indexed {
		fi, err := statVia(t, mp, k)
		if err != nil {
			t.Errorf("stat %s (in %s): %v", k, trustNames[i], err)
		} else if fi.Size() != int64(len(bytesOf(i, k))) {
			t.Errorf("stat %s: size %d, want the size of %s's object, %d", k, fi.Size(), trustNames[i], len(bytesOf(i, k)))
		}
	}
	for k, i := range indexed {
		wantBytes(t, mp, k, i)
	}
	if after := s.mirror.objectRequests(); diffCounts(before, after) != "" {
		t.Errorf("names the indexed stores hold cost requests to the mirror: %s", diffCounts(before, after))
	}

	// a name only the mirror has: probed, found, served
	if _, err := statVia(t, mp, kPublic); err != nil {
		t.Errorf("stat %s (only in the mirror): %v", kPublic, err)
	}
	wantBytes(t, mp, kPublic, stPublic)
	if n := s.mirror.objectRequests()[kPublic]; n == 0 {
		t.Errorf("%s was served without asking the mirror", kPublic)
	}
	wantAbsent(t, mp, kNowhere)
}

// diffCounts describes how the request counts changed ("" if not).
func diffCounts(before, after map[string]int) string {
	var d []string
	for p, n := range after {
		if n != before[p] {
			d = append(d, fmt.Sprintf("%s: %d", p, n-before[p]))
		}
	}
	return strings.Join(d, ", ")
}

// TestStoresPublishOnlyToPublishStore: what bitbake publishes through the
// mount (temp file, link, rename of the siginfo) lands in the publish store
// and nowhere else, once the mount has drained and closed; also when the
// publish store is not the first in the list.
func TestStoresPublishOnlyToPublishStore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		publish int // index of the store marked publish = true
	}{
		{"first", stProject},
		{"second", stCompany},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTrustStores(t)
			for _, i := range []int{stProject, stCompany, stPublic} {
				k := testKey(1400+i, "populate_sysroot")
				s.put(t, i, k, bytesOf(i, k))
			}
			s.buildIndexes(t)
			cfg := s.config(t)
			for i := range cfg.Stores {
				cfg.Stores[i].Publish = i == tc.publish
			}
			validConfig(t, cfg)
			if got := cfg.PublishStore(); got != tc.publish {
				t.Fatalf("PublishStore() = %d, want %d", got, tc.publish)
			}
			before := map[int]map[string][]byte{}
			for _, i := range []int{stProject, stCompany} {
				before[i] = s.contents(t, i, false)
			}
			mirrorBefore := dirFiles(t, s.mirrorDir)

			m, closeMount := startStoresMount(t, cfg)
			key := testKey(1410, "package")
			published := publishLikeBitbake(t, m.Mountpoint(), key, []byte("built by this test"))
			siginfo := readVia(t, m.Mountpoint(), key+".siginfo")
			if siginfo.err != nil {
				t.Fatalf("siginfo through the mount: %v", siginfo.err)
			}
			closeMount() // drains the upload queue

			for _, i := range []int{stProject, stCompany} {
				after := s.contents(t, i, false)
				if i != tc.publish {
					if d := diffContents(before[i], after); d != "" {
						t.Errorf("%s (not the publish store) changed: %s", trustNames[i], d)
					}
					continue
				}
				want := map[string][]byte{key: published, key + ".siginfo": siginfo.data}
				for k, b := range before[i] {
					want[k] = b
				}
				if d := diffContents(want, after); d != "" {
					t.Errorf("publish store %s: %s", trustNames[i], d)
				}
				ix, err := index.Load(context.Background(), s.open(t, i))
				if err != nil {
					t.Fatalf("index of %s: %v", trustNames[i], err)
				}
				if _, ok := ix.Lookup(key); !ok {
					t.Errorf("%s not in the index of the publish store %s", key, trustNames[i])
				}
			}
			if d := diffContents(mirrorBefore, dirFiles(t, s.mirrorDir)); d != "" {
				t.Errorf("the mirror's directory changed: %s", d)
			}
		})
	}
}

// TestStoresMirrorDownMidRun: the HTTP mirror stopped (connections
// refused) or hanging (requests accepted, never answered; the store's
// timeout is short) in the middle of a run: names the other stores hold
// are still found and read, with no hang, and names only the mirror holds
// become absent (ENOENT), not errors.
func TestStoresMirrorDownMidRun(t *testing.T) {
	for _, tc := range []struct {
		name string
		down func(*httpMirror)
	}{
		{"stopped", (*httpMirror).stop},
		{"hangs", (*httpMirror).setHang},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTrustStores(t)
			kProject, kCompany := testKey(1501, "populate_sysroot"), testKey(1502, "package")
			kBoth := testKey(1503, "packagedata")                                            // company and public
			kPublic, kPublicLater := testKey(1504, "populate_lic"), testKey(1505, "package") // public only
			s.put(t, stProject, kProject, bytesOf(stProject, kProject))
			s.put(t, stCompany, kCompany, bytesOf(stCompany, kCompany))
			for _, i := range []int{stCompany, stPublic} {
				s.put(t, i, kBoth, bytesOf(i, kBoth))
			}
			s.put(t, stPublic, kPublic, bytesOf(stPublic, kPublic))
			s.put(t, stPublic, kPublicLater, bytesOf(stPublic, kPublicLater))
			s.buildIndexes(t)
			cfg := s.config(t)
			cfg.Stores[stPublic].Timeout = config.Duration{Duration: time.Second}
			m, _ := startStoresMount(t, validConfig(t, cfg))
			mp := m.Mountpoint()
			wantBytes(t, mp, kPublic, stPublic) // the mirror works before

			tc.down(s.mirror)
			wantBytes(t, mp, kProject, stProject)
			wantBytes(t, mp, kCompany, stCompany) // not cached yet: fetched from S3 now
			wantBytes(t, mp, kBoth, stCompany)
			wantAbsent(t, mp, kPublicLater)
			wantAbsent(t, mp, testKey(1506, "populate_sysroot"))
			if _, err := statVia(t, mp, kProject); err != nil {
				t.Errorf("stat %s with the mirror down: %v", kProject, err)
			}
		})
	}
}

// TestStoresS3DownMidRun: the company bucket's server stopped in the
// middle of a run: names of the project store and of the mirror behind it
// are still found and read (the company store's part of each lookup is
// answered by its index in memory), and a name nowhere is ENOENT, all with
// no hang.
func TestStoresS3DownMidRun(t *testing.T) {
	s := newTrustStores(t)
	kProject, kCompany, kPublic := testKey(1701, "populate_sysroot"), testKey(1702, "package"), testKey(1703, "populate_lic")
	s.put(t, stProject, kProject, bytesOf(stProject, kProject))
	s.put(t, stCompany, kCompany, bytesOf(stCompany, kCompany))
	s.put(t, stPublic, kPublic, bytesOf(stPublic, kPublic))
	s.buildIndexes(t)
	m, _ := startStoresMount(t, validConfig(t, s.config(t)))
	mp := m.Mountpoint()
	wantBytes(t, mp, kCompany, stCompany) // the bucket works before

	s.s3.Stop()
	defer s.s3.Start() // for the mount's shutdown
	wantBytes(t, mp, kProject, stProject)
	wantBytes(t, mp, kPublic, stPublic)
	wantAbsent(t, mp, testKey(1704, "package"))
}

// eqMethod, eqName and equivRecord make the records and objects of
// TestStoresEquivalenceTrust.
const eqMethod = "oe.sstatesig.OEOuthashBasic"

func eqName(h string) string {
	return sstate.Name{Native: "debian-12", PN: "trust-native", Arch: "x86_64-linux", PV: "1.0", PR: "r0", PkgArch: "x86_64", Version: "14", Hash: h, Task: "populate_sysroot", Ext: ".tar.zst"}.String()
}

func equivRecord(taskhash, unihash, outhash string) index.Equivalence {
	return index.Equivalence{Method: eqMethod, Taskhash: taskhash, Unihash: unihash, Outhash: outhash, PN: "trust-native", PV: "1.0", PR: "r0", Task: "populate_sysroot", Created: time.Now().UTC()}
}

// hsGet asks the mount's hash equivalence server for taskhash's unihash.
func hsGet(t *testing.T, c *hsClient, taskhash string) string {
	t.Helper()
	return c.call(t, fmt.Sprintf(`{"get": {"method": %q, "taskhash": %q, "all": false}}`, eqMethod, taskhash))
}

// bitbakeGet asks the server at sock with bitbake's own client (when
// SSTATEFS_BITBAKE_DIR names a bitbake tree) for the unihash of each
// taskhash: "" where it answers none. nil without a bitbake tree.
func bitbakeGet(t *testing.T, sock string, taskhashes ...string) map[string]string {
	t.Helper()
	if os.Getenv("SSTATEFS_BITBAKE_DIR") == "" {
		t.Log("SSTATEFS_BITBAKE_DIR is not set: bitbake's own client not tried")
		return nil
	}
	bb := testutil.BitbakeDir(t)
	const script = `
import sys
import hashserv
addr, method = sys.argv[1:3]
with hashserv.create_client(addr) as c:
    for task in sys.argv[3:]:
        print(task, c.get_unihash(method, task) or "")
`
	args := append([]string{"-c", script, "unix://" + sock, eqMethod}, taskhashes...)
	cmd := exec.Command("python3", args...)
	cmd.Env = testutil.BitbakeEnv(bb)
	out := boundedCall(t, "bitbake's client", func() readResult {
		b, err := cmd.CombinedOutput()
		return readResult{b, err}
	})
	if out.err != nil {
		t.Fatalf("bitbake's client: %v\n%s", out.err, out.data)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out.data)), "\n") {
		task, uni, _ := strings.Cut(line, " ")
		got[task] = uni
	}
	return got
}

// TestStoresEquivalenceTrust: equivalence records from every store, under
// the trust rule: a record may lead a name to an object of a store at most
// as trusted as the record's store (by default), so a less trusted store
// cannot redirect a trusted name to an object of its choice; the more
// trusted store's record wins; reports are recorded in the publish store
// only.
func TestStoresEquivalenceTrust(t *testing.T) {
	s := newTrustStores(t)
	t1, u1 := hexOf("T1"), hexOf("U1") // record in project, object in company
	t2, u2 := hexOf("T2"), hexOf("U2") // record in company, object in project
	t3, u3p, u3c := hexOf("T3"), hexOf("U3 project"), hexOf("U3 company")
	s.put(t, stCompany, eqName(u1), bytesOf(stCompany, eqName(u1)))
	s.put(t, stProject, eqName(u2), bytesOf(stProject, eqName(u2)))
	s.put(t, stProject, eqName(u3p), bytesOf(stProject, eqName(u3p)))
	s.put(t, stCompany, eqName(u3c), bytesOf(stCompany, eqName(u3c)))
	s.buildIndexes(t)
	s.report(t, stProject, equivRecord(t1, u1, hexOf("O1")), equivRecord(t3, u3p, hexOf("O3p")))
	// the company's record of t3 is the older one: the project's must win
	// by trust, not by age
	older := equivRecord(t3, u3c, hexOf("O3c"))
	older.Created = older.Created.Add(-time.Hour)
	s.report(t, stCompany, equivRecord(t2, u2, hexOf("O2")), older)

	withHashserv := func(t *testing.T, cfg config.Config) (*mount.Mount, *hsClient, string) {
		sock := filepath.Join(t.TempDir(), "hs.sock")
		cfg.Hashserv.Listen = "unix://" + sock
		m, _ := startStoresMount(t, validConfig(t, cfg))
		return m, dialHashserv(t, sock), sock
	}

	t.Run("default", func(t *testing.T) {
		m, c, sock := withHashserv(t, s.config(t))
		mp := m.Mountpoint()
		// (a) record more trusted than the object: resolves
		wantObject(t, mp, eqName(t1), stCompany, eqName(u1))
		if got := hsGet(t, c, t1); !strings.Contains(got, u1) {
			t.Errorf("get %s (project's record) = %s, want unihash %s", t1, got, u1)
		}
		// (b) a less trusted store's record leading to a more trusted
		// store's object: refused
		wantAbsent(t, mp, eqName(t2))
		if got := hsGet(t, c, t2); strings.Contains(got, u2) {
			t.Errorf("get %s = %s: the company store's record redirects a name to the project store's object", t2, got)
		}
		// (c) both stores have a record: the more trusted one wins
		if got := hsGet(t, c, t3); !strings.Contains(got, u3p) {
			t.Errorf("get %s = %s, want the project store's unihash %s (not the company's %s)", t3, got, u3p, u3c)
		}
		wantObject(t, mp, eqName(t3), stProject, eqName(u3p))
		if got := bitbakeGet(t, sock, t1, t2, t3); got != nil {
			if got[t1] != u1 || got[t2] == u2 || got[t3] != u3p {
				t.Errorf("bitbake's client: %v; want %s -> %s, %s not -> %s, %s -> %s", got, t1, u1, t2, u2, t3, u3p)
			}
		}
	})

	t.Run("any", func(t *testing.T) {
		cfg := s.config(t)
		cfg.Stores[stProject].EquivalencesFrom = config.EquivalencesAny
		m, c, sock := withHashserv(t, cfg)
		// (b) allowed when the project store accepts any store's records
		wantObject(t, m.Mountpoint(), eqName(t2), stProject, eqName(u2))
		if got := hsGet(t, c, t2); !strings.Contains(got, u2) {
			t.Errorf("get %s = %s with equivalences_from = any on the project store, want %s", t2, got, u2)
		}
		if got := bitbakeGet(t, sock, t2); got != nil && got[t2] != u2 {
			t.Errorf("bitbake's client with equivalences_from = any: %v, want %s -> %s", got, t2, u2)
		}
	})

	// (d) a report through the mount's server is recorded in the publish
	// store's journal only, wherever the publish store is in the list
	for _, tc := range []struct {
		name    string
		publish int
	}{{"report-first", stProject}, {"report-second", stCompany}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := s.config(t)
			for i := range cfg.Stores {
				cfg.Stores[i].Publish = i == tc.publish
			}
			m, c, _ := withHashserv(t, cfg)
			t4, u4 := hexOf("T4 "+tc.name), hexOf("U4 "+tc.name)
			got := c.call(t, fmt.Sprintf(`{"report": {"taskhash": %q, "method": %q, "outhash": %q, "unihash": %q, "PN": "trust-native", "PV": "1.0", "PR": "r0", "task": "populate_sysroot"}}`, t4, eqMethod, hexOf("O4 "+tc.name), u4))
			if !strings.Contains(got, u4) {
				t.Fatalf("report: %s", got)
			}
			m.Drain() // reports wait for the batch (publish.record_interval): write it now
			for _, i := range []int{stProject, stCompany} {
				ix, err := index.Load(context.Background(), s.open(t, i))
				if err != nil {
					t.Fatalf("index of %s: %v", trustNames[i], err)
				}
				_, ok := ix.Equivalence(eqMethod, t4)
				if ok != (i == tc.publish) {
					t.Errorf("report recorded in %s: %v (publish store: %s)", trustNames[i], ok, trustNames[tc.publish])
				}
			}
		})
	}
}

// TestStoresUnreachableAtStart: a store that cannot be reached when the
// mount starts (an S3 endpoint on a closed port) leaves the mount serving
// the others, with /healthz saying it is degraded; when it is the publish
// store and publish.require_store is set, the mount refuses to start and
// names the store.
func TestStoresUnreachableAtStart(t *testing.T) {
	s := newTrustStores(t)
	kProject, kPublic := testKey(1601, "populate_sysroot"), testKey(1602, "package")
	s.put(t, stProject, kProject, bytesOf(stProject, kProject))
	s.put(t, stPublic, kPublic, bytesOf(stPublic, kPublic))
	s.buildIndexes(t)
	dead, err := testutil.FreeAddr() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	deadCompany := func(cfg config.Config) config.Config {
		cfg.Stores[stCompany].Endpoint = "http://" + dead
		return cfg
	}

	t.Run("degraded", func(t *testing.T) {
		cfg := deadCompany(s.config(t))
		cfg.Metrics.Addr = "127.0.0.1:0"
		m, _ := startStoresMount(t, validConfig(t, cfg))
		m.SetHealthEvery(0)
		wantBytes(t, m.Mountpoint(), kProject, stProject)
		wantBytes(t, m.Mountpoint(), kPublic, stPublic)
		resp := boundedCall(t, "GET /healthz", func() readResult {
			resp, err := http.Get("http://" + m.MetricsAddr() + "/healthz")
			if err != nil {
				return readResult{nil, err}
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return readResult{b, err}
		})
		body := string(resp.data)
		if resp.err != nil || !strings.Contains(strings.ToLower(body), "degraded") || !strings.Contains(body, trustNames[stCompany]) {
			t.Errorf("/healthz with the company store unreachable = %s %v, want it degraded, naming %s", body, resp.err, trustNames[stCompany])
		}
		// per store: the metrics and the status say which store is down
		get := func(path string) string {
			r := boundedCall(t, "GET "+path, func() readResult {
				resp, err := http.Get("http://" + m.MetricsAddr() + path)
				if err != nil {
					return readResult{nil, err}
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				return readResult{b, err}
			})
			if r.err != nil {
				t.Fatalf("GET %s: %v", path, r.err)
			}
			return string(r.data)
		}
		metrics := get("/metrics")
		for _, want := range []string{
			`sstatefs_store_up{store="` + trustNames[stCompany] + `"} 0`,
			`sstatefs_store_up{store="` + trustNames[stProject] + `"} 1`,
			`sstatefs_store_lookups_total{result="hit",store="` + trustNames[stProject] + `"} `,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if strings.Contains(metrics, `sstatefs_store_lookups_total{result="hit",store="`+trustNames[stProject]+`"} 0`) {
			t.Errorf("/metrics counts no lookup answered by the project store")
		}
		var st mount.LiveStatus
		if err := json.Unmarshal([]byte(get("/status")), &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Stores) != 3 || st.Stores[stCompany].Name != trustNames[stCompany] || !st.Stores[stCompany].Down || st.Stores[stProject].Down || !st.Stores[stProject].Publish {
			t.Errorf("status stores = %+v, want three in trust order, the company's down, the project's the publish store", st.Stores)
		}
		var out bytes.Buffer
		printLiveStatus(&out, st, time.Now())
		if !strings.Contains(out.String(), "store 2:  "+trustNames[stCompany]) || !strings.Contains(out.String(), "DOWN") {
			t.Errorf("status output does not show the company store down:\n%s", out.String())
		}
	})

	for _, tc := range []struct {
		name    string
		require bool
	}{{"publish-store-down", false}, {"publish-store-down-required", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := deadCompany(s.config(t))
			for i := range cfg.Stores {
				cfg.Stores[i].Publish = i == stCompany
			}
			cfg.Publish.RequireStore = tc.require
			validConfig(t, cfg)
			m, err := tryMount(t, cfg)
			if m != nil {
				t.Cleanup(func() { m.Close() })
			}
			switch {
			case tc.require && err == nil:
				t.Fatal("mounted although the publish store is unreachable and required")
			case tc.require && !strings.Contains(err.Error(), trustNames[stCompany]):
				t.Errorf("error does not name the store %s: %v", trustNames[stCompany], err)
			case !tc.require && err != nil:
				t.Fatalf("the mount did not come up degraded: %v", err)
			case !tc.require:
				wantBytes(t, m.Mountpoint(), kProject, stProject)
			}
		})
	}
}

// TestStoresPrefetchOneCache: the prefetch command fetches names of every
// store through the mount (the probed mirror's too), and the disk cache
// holds one copy of content two stores hold under different names.
func TestStoresPrefetchOneCache(t *testing.T) {
	s := newTrustStores(t)
	kCompany, kPublic := testKey(1701, "package"), testKey(1702, "populate_lic")
	kProjectCopy, kCompanyCopy := testKey(1703, "populate_sysroot"), testKey(1704, "populate_sysroot")
	same := bytesOf(stProject, "shared content")
	s.put(t, stCompany, kCompany, bytesOf(stCompany, kCompany))
	s.put(t, stPublic, kPublic, bytesOf(stPublic, kPublic))
	s.put(t, stProject, kProjectCopy, same)
	s.put(t, stCompany, kCompanyCopy, same)
	s.buildIndexes(t)
	cfg := s.config(t)
	m, _ := startStoresMount(t, validConfig(t, cfg))

	keys := []string{kCompany, kPublic, kProjectCopy, kCompanyCopy}
	res, err := prefetchViaMount(context.Background(), cfg.Cache.Dir, keys, 1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Missing) > 0 || len(res.Failed) > 0 || res.Fetched+res.Cached != len(keys) {
		t.Fatalf("prefetch across stores = %+v, want every name fetched", res)
	}
	if n := m.Cache().Stats().Entries; n != 3 {
		t.Errorf("cache holds %d entries for three contents, want one per content", n)
	}
	wantBytes(t, m.Mountpoint(), kCompany, stCompany)
	wantBytes(t, m.Mountpoint(), kPublic, stPublic)
	for _, k := range []string{kProjectCopy, kCompanyCopy} {
		if got := readVia(t, m.Mountpoint(), k); got.err != nil || !bytes.Equal(got.data, same) {
			t.Errorf("%s: %d bytes, %v; want the shared content", k, len(got.data), got.err)
		}
	}
}
