package hashserv

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// python runs a script with bitbake's lib on the path and returns its
// standard output.
func python(t *testing.T, dir, script string, args ...string) []byte {
	t.Helper()
	f := filepath.Join(t.TempDir(), "client.py")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", append([]string{f}, args...)...)
	cmd.Env = testutil.BitbakeEnv(dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s\n%s", err, out, stderr.String())
	}
	return out
}

// hashclient runs bin/bitbake-hashclient.
func hashclient(t *testing.T, dir, addr string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", append([]string{filepath.Join(dir, "bin", "bitbake-hashclient"), "--address", addr, "--no-netrc"}, args...)...)
	cmd.Env = testutil.BitbakeEnv(dir)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("bitbake-hashclient %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// clientScript drives bitbake's hashserv client API (what siggen and
// bitbake's local server use) and prints what each call returned.
const clientScript = `
import sys, os, json
import hashserv, bb.asyncrpc
addr = sys.argv[1]
M = "do_populate_sysroot"
h = lambda n: "%064x" % n
out = {}

def invoke_error(f):
    try:
        f()
        return "no error"
    except bb.asyncrpc.InvokeError as e:
        return "InvokeError: " + str(e)

with hashserv.create_client(addr) as c:
    out["ping"] = c.ping()
    out["reports"] = [c.report_unihash(h(0x1000 + i), M, h(0xaaaa), h(0x2000 + i), {"owner": "probe"})["unihash"] for i in range(3)]
    out["get_unihash"] = c.get_unihash(M, h(0x1001))
    out["get_unihash_missing"] = c.get_unihash(M, h(0x9999))
    out["batch"] = c.get_unihash_batch([(M, h(0x1000)), (M, h(0x1002)), (M, h(0x9999))] * 200)
    out["get_taskhash_all"] = c.get_taskhash(M, h(0x1002), True)
    out["get_taskhash"] = c.get_taskhash(M, h(0x1002))
    out["get_taskhash_missing"] = c.get_taskhash(M, h(0x9999), True)
    out["get_outhash"] = c.get_outhash(M, h(0xaaaa), h(0x1002))
    out["exists"] = c.unihash_exists(h(0x2000))
    out["exists_batch"] = c.unihash_exists_batch([h(0x2000), h(0x2001), "nothex"] * 100)
    out["equiv"] = c.report_unihash_equiv(h(0x3000), M, h(0x4000))
    out["huge"] = c.report_unihash(h(0x5000), M, h(0xbbbb), h(0x6000), {"outhash_siginfo": "0" * (c.max_chunk * 4), "PN": "huge"})["unihash"]
    out["huge_get"] = c.get_taskhash(M, h(0x5000), True)["PN"]
    out["stats"] = c.get_stats()
    out["backfill"] = c.backfill_wait()
    out["columns"] = sorted(c.get_db_query_columns())
    # Each invoke-error closes the connection; the client reconnects.
    out["invalid"] = invoke_error(lambda: c.report_unihash(h(1), M, h(2), "abc"))
    out["remove"] = invoke_error(lambda: c.remove({"taskhash": h(0x1000)}))
    out["gc_mark_stream"] = invoke_error(lambda: c.gc_mark_stream("x", ["taskhash " + h(1)]))
    out["get_user"] = invoke_error(lambda: c.get_user())
    out["after_errors"] = c.get_unihash(M, h(0x1000))

out["auth"] = invoke_error(lambda: hashserv.create_client(addr, "someone", "token").ping())
print(json.dumps(out))
`

func TestBitbakeClient(t *testing.T) {
	dir := testutil.BitbakeDir(t)
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			b := newMemBackend()
			b.addObject(h64(0x2000))
			s, addr := startServer(t, b, Options{}, network)
			s.authDelay = 10 * time.Millisecond
			var got map[string]any
			out := python(t, dir, clientScript, addr)
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			u2000 := h64(0x2000)
			want := map[string]any{
				"ping":                 map[string]any{"alive": true},
				"reports":              []any{u2000, u2000, u2000},
				"get_unihash":          u2000,
				"get_unihash_missing":  nil,
				"get_taskhash":         map[string]any{"taskhash": h64(0x1002), "method": method, "unihash": u2000},
				"get_taskhash_missing": nil,
				"exists":               true,
				"equiv":                map[string]any{"taskhash": h64(0x3000), "method": method, "unihash": h64(0x4000)},
				"huge":                 h64(0x6000),
				"huge_get":             "huge",
				"backfill":             0.0,
				"columns":              []any{"PN", "PR", "PV", "gc_mark", "method", "outhash", "outhash_siginfo", "owner", "task", "taskhash", "unihash"},
				"invalid":              "InvokeError: Invalid unihash",
				"remove":               "InvokeError: remove is not supported by the sstatefs hash equivalence server: its equivalences are kept in the sstate store's index",
				"gc_mark_stream":       "InvokeError: gc-mark-stream is not supported by the sstatefs hash equivalence server: its equivalences are kept in the sstate store's index",
				"get_user":             "InvokeError: Anonymous user is not allowed to access permissions(s) @user-admin",
				"after_errors":         u2000,
				"auth":                 "InvokeError: Unable to authenticate as someone",
			}
			for k, w := range want {
				if !reflect.DeepEqual(got[k], w) {
					t.Errorf("%s: got %#v, want %#v", k, got[k], w)
				}
			}
			batch := got["batch"].([]any)
			for i := 0; i < len(batch); i += 3 {
				if batch[i] != u2000 || batch[i+1] != u2000 || batch[i+2] != nil {
					t.Fatalf("batch[%d:]: %v", i, batch[i:i+3])
				}
			}
			exists := got["exists_batch"].([]any)
			for i := 0; i < len(exists); i += 3 {
				if exists[i] != true || exists[i+1] != false || exists[i+2] != false {
					t.Fatalf("exists_batch[%d:]: %v", i, exists[i:i+3])
				}
			}
			full := got["get_taskhash_all"].(map[string]any)
			if full["taskhash"] != h64(0x1002) || full["outhash"] != h64(0xaaaa) || full["unihash"] != u2000 || full["owner"] != "probe" || full["gc_mark"] != "" {
				t.Errorf("get_taskhash all: %v", full)
			}
			if oh := got["get_outhash"].(map[string]any); oh["taskhash"] != h64(0x1000) || oh["unihash"] != u2000 {
				t.Errorf("get_outhash: %v", oh)
			}
			if st := got["stats"].(map[string]any)["requests"].(map[string]any); st["num"].(float64) < 10 {
				t.Errorf("stats: %v", st)
			}

			// bitbake-hashclient, the command line.
			o, code := hashclient(t, dir, addr, "get", method, h64(0x1001))
			var g map[string]any
			if code != 0 || json.Unmarshal([]byte(o), &g) != nil || g["unihash"] != u2000 || g["taskhash"] != h64(0x1001) || g["created"] == nil {
				t.Errorf("bitbake-hashclient get: %d %s", code, o)
			}
			o, code = hashclient(t, dir, addr, "get-outhash", method, h64(0xaaaa), h64(0x1001))
			if code != 0 || !strings.Contains(o, `"taskhash": "`+h64(0x1000)+`"`) {
				t.Errorf("bitbake-hashclient get-outhash: %d %s", code, o)
			}
			o, code = hashclient(t, dir, addr, "stats")
			var st map[string]map[string]any
			if code != 0 || json.Unmarshal([]byte(o), &st) != nil || st["requests"]["num"] == nil {
				t.Errorf("bitbake-hashclient stats: %d %s", code, o)
			}
			o, code = hashclient(t, dir, addr, "stats", "--reset")
			if code != 0 || !strings.Contains(o, `"num"`) {
				t.Errorf("bitbake-hashclient stats --reset: %d %s", code, o)
			}
			if o, code = hashclient(t, dir, addr, "unihash-exists", u2000); code != 0 || strings.TrimSpace(o) != "true" {
				t.Errorf("bitbake-hashclient unihash-exists: %d %q", code, o)
			}
			if o, code = hashclient(t, dir, addr, "unihash-exists", h64(0x2001)); code != 0 || strings.TrimSpace(o) != "false" {
				t.Errorf("bitbake-hashclient unihash-exists (absent): %d %q", code, o)
			}
			if _, code = hashclient(t, dir, addr, "unihash-exists", "--quiet", h64(0x2001)); code != 1 {
				t.Errorf("bitbake-hashclient unihash-exists --quiet (absent): exit %d", code)
			}
			if o, code = hashclient(t, dir, addr, "ping", "--count", "3"); code != 0 || !strings.Contains(o, "Number of pings:         3") {
				t.Errorf("bitbake-hashclient ping: %d %s", code, o)
			}
			if o, code = hashclient(t, dir, addr, "gc-status"); code != 1 || !strings.Contains(o, "ERROR: gc-status is not supported") {
				t.Errorf("bitbake-hashclient gc-status: %d %s", code, o)
			}
			if r := b.records(); len(r) != 5 {
				t.Errorf("%d records, want 5: %+v", len(r), r)
			}
		})
	}
}

// upstreamScript runs bitbake's own server with ours as its upstream
// (BB_HASHSERVE = "auto" with BB_HASHSERVE_UPSTREAM) and queries it.
const upstreamScript = `
import sys, os, json, tempfile
import hashserv
upstream = sys.argv[1]
M = "do_populate_sysroot"
h = lambda n: "%064x" % n
out = {}
d = tempfile.mkdtemp()
srv = hashserv.create_server("unix://" + os.path.join(d, "local.sock"), os.path.join(d, "local.db"), upstream=upstream)
srv.serve_as_process()
try:
    with hashserv.create_client(srv.address) as c:
        # First, before the local server has a row of this outhash.
        out["get_outhash"] = c.get_outhash(M, h(0xaaaa), h(0x7777))
        out["get_unihash"] = c.get_unihash(M, h(0x1001))
        out["get_unihash_missing"] = c.get_unihash(M, h(0x9999))
        out["get_taskhash_all"] = c.get_taskhash(M, h(0x1002), True)
        out["exists"] = c.unihash_exists(h(0x2000))
        out["exists_missing"] = c.unihash_exists(h(0x2001))
        out["report"] = c.report_unihash(h(0x7000), M, h(0xaaaa), h(0x8000))["unihash"]
        out["report_new"] = c.report_unihash(h(0x7001), M, h(0xcccc), h(0x8001))["unihash"]
        out["backfill"] = c.backfill_wait()
        out["local_after_backfill"] = c.get_taskhash(M, h(0x1001))
finally:
    srv.process.terminate()
    srv.process.join()
print(json.dumps(out))
`

func TestBitbakeUpstream(t *testing.T) {
	dir := testutil.BitbakeDir(t)
	b := newMemBackend()
	created := time.Date(2026, 3, 4, 5, 6, 7, 890000000, time.UTC)
	for i := range 3 {
		b.seed(index.Equivalence{Method: method, Taskhash: h64(0x1000 + i), Outhash: h64(0xaaaa), Unihash: h64(0x2000),
			PN: "zlib", PV: "1.3", PR: "r0", Task: "populate_sysroot", Owner: "ci", Created: created.Add(time.Duration(i) * time.Second)})
	}
	b.addObject(h64(0x2000))
	_, addr := startServer(t, b, Options{}, "tcp")

	var got map[string]any
	out := python(t, dir, upstreamScript, addr)
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	u2000 := h64(0x2000)
	for k, w := range map[string]any{
		"get_unihash":          u2000,
		"get_unihash_missing":  nil,
		"exists":               true,
		"exists_missing":       false,
		"report":               u2000, // outhash matched upstream
		"report_new":           h64(0x8001),
		"local_after_backfill": map[string]any{"taskhash": h64(0x1001), "method": method, "unihash": u2000},
	} {
		if !reflect.DeepEqual(got[k], w) {
			t.Errorf("%s: got %#v, want %#v", k, got[k], w)
		}
	}
	full := got["get_taskhash_all"].(map[string]any)
	if full["unihash"] != u2000 || full["PN"] != "zlib" || full["created"] != "2026-03-04T05:06:09.890000+00:00" || full["owner"] != "ci" {
		t.Errorf("get_taskhash all through the local server: %v", full)
	}
	if oh := got["get_outhash"].(map[string]any); oh["taskhash"] != h64(0x1000) || oh["unihash"] != u2000 {
		t.Errorf("get_outhash through the local server: %v", oh)
	}
	// Reports stay local.
	if r := b.records(); len(r) != 0 {
		t.Errorf("the upstream recorded %+v", r)
	}
}
