package hashimport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// These tests run the real bitbake-hashserv from the bitbake checkout named
// by SSTATEFS_BITBAKE_DIR, and skip without one.

// hashserv is one bitbake-hashserv process.
type hashserv struct {
	addr, db, log string
	cmd           *exec.Cmd
	exited        chan struct{} // closed when cmd has exited
	stopOnce      sync.Once
}

// startHashserv starts bitbake-hashserv on a unix socket or a 127.0.0.1
// port with a new database, and waits until it answers.
func startHashserv(t *testing.T, bbdir, network string, args ...string) *hashserv {
	t.Helper()
	dir := t.TempDir()
	s := &hashserv{db: filepath.Join(dir, "hashserv.db"), log: filepath.Join(dir, "hashserv.log")}
	if network == "unix" {
		s.addr = "unix://" + filepath.Join(dir, "hashserv.sock")
	} else {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.addr = ln.Addr().String()
		ln.Close()
	}
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.cmd = exec.Command("python3", append([]string{filepath.Join(bbdir, "bin", "bitbake-hashserv"),
		"-b", s.addr, "-d", s.db, "-l", "WARNING"}, args...)...)
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = testutil.BitbakeEnv(bbdir)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { s.stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := dial(context.Background(), s.addr, time.Second)
		if err == nil {
			c.close()
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("bitbake-hashserv exited: %s", s.logText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bitbake-hashserv does not answer on %s: %v\n%s", s.addr, err, s.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the server as a service manager would (SIGTERM: it closes its
// database), or kills it.
func (s *hashserv) stop(t *testing.T) {
	s.stopOnce.Do(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("bitbake-hashserv ignores SIGTERM; killing it")
			s.cmd.Process.Kill()
			<-s.exited
		}
	})
}

func (s *hashserv) logText() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// reportScript reports records through bitbake's own client API and prints
// what that client then reads back for each pair of argv[3:] ("METHOD
// TASKHASH"): get with all=true, else get-stream's unihash.
const reportScript = `
import sys, json
sys.path.insert(0, sys.argv[1])
import hashserv
M, P = "do_populate_sysroot", "do_package"
h = lambda n: "%064x" % n
with hashserv.create_client(sys.argv[2]) as c:
    c.report_unihash(h(0x1000), M, h(0xaaaa), h(0x2000), {"owner": "probe", "PN": "zlib", "PV": "1.3.1", "PR": "r0", "task": "populate_sysroot"})
    # The same output: the server makes it equivalent to 0x2000.
    c.report_unihash(h(0x1001), M, h(0xaaaa), h(0x2001), {"PN": "zlib", "PV": "1.3.1", "PR": "r1", "task": "populate_sysroot"})
    # Over 32 KiB with its siginfo: chunked on the wire, both ways.
    c.report_unihash(h(0x1002), P, h(0xbbbb), h(0x2002), {"PN": "busybox", "PV": "1.36.1", "PR": "r0", "task": "package", "outhash_siginfo": "siginfo " * 5000})
    # A second outhash for a known taskhash: a second outhashes_v2 row.
    c.report_unihash(h(0x1000), M, h(0xcccc), h(0x2000), {"owner": "later"})
    # A unihash without an outhash.
    c.report_unihash_equiv(h(0x1003), M, h(0x2003))
    out = []
    for arg in sys.argv[3:]:
        method, taskhash = arg.split()
        row = c.get_taskhash(method, taskhash, True)
        if row is None:
            u = c.get_unihash(method, taskhash)
            row = None if u is None else {"method": method, "taskhash": taskhash, "unihash": u}
        out.append(row)
    print(json.dumps(out))
`

// bitbakeRecord is what bitbake's client reads back for one pair.
type bitbakeRecord struct {
	Method   string  `json:"method"`
	Taskhash string  `json:"taskhash"`
	Outhash  *string `json:"outhash"`
	Unihash  string  `json:"unihash"`
	Created  *string `json:"created"`
	Owner    *string `json:"owner"`
	PN       *string `json:"PN"`
	PV       *string `json:"PV"`
	PR       *string `json:"PR"`
	Task     *string `json:"task"`
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// report runs reportScript against addr and returns bitbake's view of pairs
// as Equivalences; nil for pairs it does not know.
func report(t *testing.T, bbdir, addr string, pairs []MethodTaskhash) []*index.Equivalence {
	t.Helper()
	args := []string{"-c", reportScript, filepath.Join(bbdir, "lib"), addr}
	for _, p := range pairs {
		args = append(args, p.Method+" "+p.Taskhash)
	}
	cmd := exec.Command("python3", args...)
	cmd.Env = testutil.BitbakeEnv(bbdir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bitbake's client: %v\n%s", err, stderr.String())
	}
	var recs []*bitbakeRecord
	if err := json.Unmarshal(out, &recs); err != nil {
		t.Fatalf("bitbake's client printed %q: %v", out, err)
	}
	var eqs []*index.Equivalence
	for _, r := range recs {
		if r == nil {
			eqs = append(eqs, nil)
			continue
		}
		e := &index.Equivalence{Method: r.Method, Taskhash: r.Taskhash, Outhash: str(r.Outhash), Unihash: r.Unihash,
			Owner: str(r.Owner), PN: str(r.PN), PV: str(r.PV), PR: str(r.PR), Task: str(r.Task)}
		if r.Created != nil {
			// bitbake: datetime.now().astimezone(timezone.utc).isoformat()
			c, err := time.Parse("2006-01-02T15:04:05.999999-07:00", *r.Created)
			if err != nil {
				t.Fatalf("created %q: %v", *r.Created, err)
			}
			e.Created = c
		}
		eqs = append(eqs, e)
	}
	return eqs
}

func TestBitbakeHashserv(t *testing.T) {
	bbdir := testutil.BitbakeDir(t)
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			s := startHashserv(t, bbdir, network)
			pairs := []MethodTaskhash{
				{mSysroot, h(0x1000)}, {mSysroot, h(0x1001)}, {mPackage, h(0x1002)}, {mSysroot, h(0x1003)},
				{mSysroot, h(0x1004)}, // never reported
			}
			bitbake := report(t, bbdir, s.addr, pairs)
			if bitbake[4] != nil {
				t.Fatalf("bitbake reads a record of an unreported pair: %+v", bitbake[4])
			}
			if bitbake[1].Unihash != h(0x2000) || bitbake[3].Outhash != "" || bitbake[0].Outhash != h(0xaaaa) {
				t.Fatalf("bitbake-hashserv did not equate as expected: %+v %+v %+v", bitbake[0], bitbake[1], bitbake[3])
			}
			var want []index.Equivalence
			for _, e := range bitbake[:4] {
				want = append(want, *e)
			}

			// The server, through our client: what bitbake's client reads.
			var got []index.Equivalence
			res, err := FromServer(context.Background(), s.addr, ServerOptions{Pairs: pairs}, collect(&got))
			if err != nil {
				t.Fatalf("FromServer: %v\n%s", err, s.logText())
			}
			sameEquivalences(t, got, want)
			if res.Read != 4 || res.Skipped != 1 || len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "not known to the server") {
				t.Errorf("result %+v", res)
			}

			_, err = FromServer(context.Background(), s.addr, ServerOptions{}, collect(&got))
			if !errors.Is(err, ErrNoEnumeration) || !strings.Contains(err.Error(), "holds 4 unihash and 4 outhash rows") {
				t.Errorf("FromServer without pairs: %v", err)
			}

			// The database the server wrote, read while it runs: the same
			// records, the second outhash of 0x1000 too, ordered by created.
			later := index.Equivalence{Method: mSysroot, Taskhash: h(0x1000), Outhash: h(0xcccc), Unihash: h(0x2000), Owner: "later"}
			wantDB := func(t *testing.T, db []index.Equivalence) {
				t.Helper()
				if len(db) != 5 {
					t.Fatalf("FromSQLite read %d records, want 5: %+v", len(db), db)
				}
				// 0x1003 has no created; then the order of reporting.
				if db[4].Created.IsZero() {
					t.Fatalf("second outhash of 0x1000 has no created: %+v", db[4])
				}
				later.Created = db[4].Created
				sameEquivalences(t, db, []index.Equivalence{want[3], want[0], want[1], want[2], later})
				for i := 2; i < len(db); i++ {
					if db[i].Created.Before(db[i-1].Created) {
						t.Errorf("record %d created %v before record %d's %v", i, db[i].Created, i-1, db[i-1].Created)
					}
				}
			}
			var live []index.Equivalence
			if res, err := FromSQLite(context.Background(), s.db, collect(&live)); err != nil || res.Skipped != 0 {
				t.Fatalf("FromSQLite of the live database: %+v, %v", res, err)
			}
			wantDB(t, live)

			// And after the server stopped.
			s.stop(t)
			names := dirNames(t, filepath.Dir(s.db))
			before := fileDigest(t, s.db)
			var stopped []index.Equivalence
			if res, err := FromSQLite(context.Background(), s.db, collect(&stopped)); err != nil || res.Skipped != 0 {
				t.Fatalf("FromSQLite of the stopped server's database: %+v, %v", res, err)
			}
			wantDB(t, stopped)
			sameEquivalences(t, stopped, live)
			if fileDigest(t, s.db) != before {
				t.Error("FromSQLite changed the database file")
			}
			if after := dirNames(t, filepath.Dir(s.db)); !slices.Equal(after, names) {
				t.Errorf("directory holds %v after the import, %v before", after, names)
			}
		})
	}
}

func TestBitbakeHashservRefuses(t *testing.T) {
	bbdir := testutil.BitbakeDir(t)
	s := startHashserv(t, bbdir, "unix", "--anon-perms", "@none")
	_, err := FromServer(context.Background(), s.addr, ServerOptions{Pairs: []MethodTaskhash{{mSysroot, h(1)}}}, func(index.Equivalence) error { return nil })
	var ie *InvokeError
	if !errors.As(err, &ie) || ie.Command != "get" || !strings.Contains(ie.Message, "not allowed") {
		t.Errorf("error %v, want the server's refusal of get", err)
	}
	_, err = FromServer(context.Background(), s.addr, ServerOptions{}, func(index.Equivalence) error { return nil })
	if !errors.Is(err, ErrNoEnumeration) || strings.Contains(err.Error(), "holds") {
		t.Errorf("error %v, want ErrNoEnumeration without counts", err)
	}
}
