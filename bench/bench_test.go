package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/netem"
	"github.com/sstatefs/sstatefs/internal/testutil"
	"github.com/sstatefs/sstatefs/sstate"
)

// --- the proxy ---

// tcpServer serves each connection to a free port of 127.0.0.1 with handle
// (which closes it) until the test ends, and returns the address.
func tcpServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// echoServer answers every byte it gets, on 127.0.0.1.
func echoServer(t *testing.T) string {
	t.Helper()
	return tcpServer(t, func(c net.Conn) { io.Copy(c, c); c.Close() })
}

// sinkServer reads until EOF and answers with the byte count.
func sinkServer(t *testing.T) string {
	t.Helper()
	return tcpServer(t, func(c net.Conn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		binary.Write(c, binary.LittleEndian, n)
	})
}

func startProxy(t *testing.T, target string, rtt time.Duration) *Proxy {
	t.Helper()
	p, err := StartProxy(target, rtt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestProxyAddsRTT(t *testing.T) {
	const rtt = 40 * time.Millisecond
	p := startProxy(t, echoServer(t), rtt)
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	var rtts []time.Duration
	for range 5 {
		start := time.Now()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	if rtts[0] < rtt {
		t.Errorf("fastest round trip %v, want at least the configured %v", rtts[0], rtt)
	}
	// The fastest is the one least disturbed by whatever else the machine
	// is doing.
	if rtts[0] > rtt+15*time.Millisecond {
		t.Errorf("fastest round trip %v, want about %v (all: %v)", rtts[0], rtt, rtts)
	}
}

// send pushes n bytes through addr and returns the throughput in bytes
// per second, the sink's answer included.
func send(t *testing.T, addr string, n int) float64 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	var got int64
	if err := binary.Read(c, binary.LittleEndian, &got); err != nil {
		t.Fatal(err)
	}
	if got != int64(n) {
		t.Fatalf("sink got %d bytes, want %d", got, n)
	}
	return float64(n) / time.Since(start).Seconds()
}

// TestProxyKeepsThroughput: delaying each chunk must not serialise them. A
// proxy that waited RTT/2 per chunk would move 64 KiB per 10 ms here,
// 6.5 MB/s; this one must stay near its undelayed speed.
func TestProxyKeepsThroughput(t *testing.T) {
	sink := sinkServer(t)
	const n = 96 << 20
	fast := startProxy(t, sink, 0)
	slow := startProxy(t, sink, 20*time.Millisecond)
	send(t, fast.Addr, 8<<20) // warm up
	// Best of three: other work on the machine only ever slows a run down.
	var base, delayed float64
	for range 3 {
		base = max(base, send(t, fast.Addr, n))
		delayed = max(delayed, send(t, slow.Addr, n))
	}
	t.Logf("through the proxy: %.0f MB/s undelayed, %.0f MB/s with 20 ms RTT", base/1e6, delayed/1e6)
	if delayed < 0.4*base {
		t.Errorf("with 20 ms RTT the proxy moves %.0f MB/s, under 40%% of its %.0f MB/s without delay", delayed/1e6, base/1e6)
	}
	if serial := float64(netem.ChunkSize) / 0.010; delayed < 5*serial {
		t.Errorf("with 20 ms RTT the proxy moves %.1f MB/s: chunks look serialised (%.1f MB/s)", delayed/1e6, serial/1e6)
	}
}

// --- the synthetic store ---

func TestPlanFollowsTaskRules(t *testing.T) {
	names := RealNames()
	if len(names) != 2897 {
		t.Fatalf("embedded name list has %d names, want 2,897", len(names))
	}
	const total = 1 << 30
	objs, err := Plan(Spec{Names: names, Total: total, Seed: 1, Absent: 1.0 / 3})
	if err != nil {
		t.Fatal(err)
	}
	absent := len(objs) - len(Present(objs))
	if absent != 966 { // round(2897/3)
		t.Errorf("%d absent objects, want 966", absent)
	}
	var bulk []int64
	for _, o := range objs {
		if !o.Present {
			if o.Size != 0 || o.Siginfo != 0 {
				t.Errorf("absent %s has sizes %d/%d", o.Key, o.Size, o.Siginfo)
			}
			continue
		}
		if o.Siginfo < siginfoMin || o.Siginfo > siginfoMax {
			t.Errorf("%s.siginfo: %d bytes, want %d..%d", o.Key, o.Siginfo, siginfoMin, siginfoMax)
		}
		switch c := classOf(o.Task); c {
		case classMeta:
			if o.Size < metaMin || o.Size > metaMax {
				t.Errorf("%s (%s): %d bytes, want %d..%d", o.Key, c, o.Size, metaMin, metaMax)
			}
		case classSmall:
			if o.Size < smallMin || o.Size > smallMax {
				t.Errorf("%s (%s): %d bytes, want %d..%d", o.Key, c, o.Size, smallMin, smallMax)
			}
		case classBulk:
			if o.Size < bulkMin || o.Size > maxObjectSize(total) {
				t.Errorf("%s (%s): %d bytes, want %d..%d", o.Key, c, o.Size, bulkMin, maxObjectSize(total))
			}
			bulk = append(bulk, o.Size)
		}
	}
	for _, task := range []string{"populate_sysroot", "package", "package_write_ipk", "package_write_rpm", "shared_workdir"} {
		if classOf(task) != classBulk {
			t.Errorf("%s is not a bulk task", task)
		}
	}
	for _, task := range []string{"recipe_qa", "create_spdx", "populate_lic", "deploy_source_date_epoch", "package_qa"} {
		if classOf(task) != classMeta {
			t.Errorf("%s is not a metadata task", task)
		}
	}
	if got := StoreBytes(objs); got < total*99/100 || got > total*101/100 {
		t.Errorf("store holds %d bytes, want %d ±1%%", got, total)
	}
	slices.Sort(bulk)
	med, top := bulk[len(bulk)/2], bulk[len(bulk)-1]
	t.Logf("bulk objects: %d, median %s, largest %s", len(bulk), formatBytes(med), formatBytes(top))
	if top < 100<<20 {
		t.Errorf("largest object %s: want a long tail reaching hundreds of MB", formatBytes(top))
	}
	if top < 30*med {
		t.Errorf("largest %s vs median %s: the tail is not long", formatBytes(top), formatBytes(med))
	}

	// Same seed, same store; twice the size, twice the bulk.
	again, _ := Plan(Spec{Names: names, Total: total, Seed: 1, Absent: 1.0 / 3})
	if !slices.Equal(again, objs) {
		t.Error("Plan is not deterministic")
	}
	double, _ := Plan(Spec{Names: names, Total: 2 * total, Seed: 1, Absent: 1.0 / 3})
	if got := StoreBytes(double); got < 2*total*99/100 || got > 2*total*101/100 {
		t.Errorf("--size 2GiB: store holds %d bytes", got)
	}
	for i, o := range double {
		if o.Present != objs[i].Present || o.Siginfo != objs[i].Siginfo {
			t.Fatalf("%s: presence or siginfo changed with the size", o.Key)
		}
		if classOf(o.Task) != classBulk && o.Size != objs[i].Size {
			t.Errorf("%s: metadata object changed size with --size", o.Key)
		}
	}
}

func TestQuickSubset(t *testing.T) {
	names := RealNames()
	sub := Sample(names, 300, 1)
	if len(sub) != 300 {
		t.Fatalf("%d names, want 300", len(sub))
	}
	pos := -1
	for _, n := range sub {
		i := slices.Index(names, n)
		if i <= pos {
			t.Fatalf("%s: not from the list, or out of order", n)
		}
		pos = i
	}
	objs, err := Plan(Spec{Names: sub, Total: 64 << 20, Seed: 1, Absent: 1.0 / 3})
	if err != nil {
		t.Fatal(err)
	}
	if got := StoreBytes(objs); got < 63<<20 || got > 65<<20 {
		t.Errorf("quick store holds %s, want 64 MiB", formatBytes(got))
	}
	if l := largest(objs); l > maxObjectSize(64<<20) {
		t.Errorf("largest quick object %s", formatBytes(l))
	}
}

func TestMaterialize(t *testing.T) {
	dir := t.TempDir()
	objs, err := Plan(Spec{Names: Sample(RealNames(), 30, 3), Total: 2 << 20, Seed: 3, Absent: 1.0 / 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := Materialize(dir, objs, 3); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		p := filepath.Join(dir, o.Key)
		b, err := os.ReadFile(p)
		if !o.Present {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("absent %s: %v", o.Key, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != o.Size || crc32.Checksum(b, castagnoli) != o.CRC {
			t.Errorf("%s: %d bytes, CRC mismatch or wrong size", o.Key, len(b))
		}
		want, crc := ContentBytes(3, o.Key, o.Size)
		if !bytes.Equal(b, want) || crc != o.CRC {
			t.Errorf("%s: content differs from ContentBytes", o.Key)
		}
		if fi, err := os.Stat(p + ".siginfo"); err != nil || fi.Size() != o.Siginfo {
			t.Errorf("%s.siginfo: %v", o.Key, err)
		}
	}
}

func TestRehash(t *testing.T) {
	for _, key := range RealNames()[:50] {
		k := Rehash(key, "salt")
		if k == key {
			t.Fatalf("%s unchanged", key)
		}
		a, err := sstate.Parse(key)
		if err != nil {
			t.Fatal(err)
		}
		b, err := sstate.Parse(k) // checks that the directories match the hash
		if err != nil {
			t.Fatalf("%s → %s: %v", key, k, err)
		}
		if a.PN != b.PN || a.Task != b.Task || a.Native != b.Native || a.Hash == b.Hash {
			t.Errorf("%s → %s: want the same recipe and task with a new hash", key, k)
		}
	}
}

// --- the bitbake publish sequence on a plain directory ---

func TestPublishLikeBitbake(t *testing.T) {
	root := t.TempDir()
	tg := dirTarget{root: root}
	key := RealNames()[0]
	data, sig := []byte(strings.Repeat("x", 3<<20)), []byte("siginfo")
	ctx := context.Background()
	if err := tg.Publish(ctx, key, data, sig); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, key))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("published object: %v", err)
	}
	fi, _ := os.Stat(filepath.Join(root, key))
	if fi.Mode().Perm() != 0o664 {
		t.Errorf("mode %v, want 0664", fi.Mode().Perm())
	}
	if got, err := os.ReadFile(filepath.Join(root, key+".siginfo")); err != nil || !bytes.Equal(got, sig) {
		t.Fatalf("siginfo: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Dir(filepath.Join(root, key)))
	if len(ents) != 2 {
		t.Errorf("temp files left: %v", ents)
	}
	if err := tg.Publish(ctx, key, data, sig); err == nil {
		t.Error("publishing over an existing object succeeded")
	}
	if ok, err := tg.Stat(ctx, key+".sig"); ok || err != nil {
		t.Errorf("stat .sig: %v %v", ok, err)
	}
}

func TestErrnoNames(t *testing.T) {
	if got := errnoOf(&os.LinkError{Op: "link", Err: errors.New("x")}); got != "" {
		t.Errorf("no errno: %q", got)
	}
	le := &os.LinkError{Op: "link", Old: "a", New: "b", Err: fmt.Errorf("wrapped: %w", syscall.EIO)}
	if got := errnoOf(le); got != "EIO" || opOf(le) != "link" {
		t.Errorf("got %q %q, want EIO link", got, opOf(le))
	}
	if got := errnoOf(&os.PathError{Op: "link", Err: syscall.EOPNOTSUPP}); got != "EOPNOTSUPP" {
		t.Errorf("got %q", got)
	}
}

// --- the table ---

func TestTableRenders(t *testing.T) {
	res := NewResults([]string{"sstatefs", "rclone", "S3 client", "local disk"}, []string{"rclone"})
	res.Header = []string{"a header"}
	res.AddRow(Row{ID: "check", Title: "check", Unit: "s", Ref: "local disk"})
	res.AddRow(Row{ID: "cold", Title: "cold restore", Unit: "MB/s", HigherBetter: true, Ref: "S3 client"})
	res.AddRow(Row{ID: "publish", Title: "publish", Unit: "s", Ref: "local disk"})
	res.AddRow(Row{ID: "check", Title: "duplicate", Unit: "s"})
	for _, v := range []float64{0.21, 0.19, 0.2} { // median 0.2
		res.Add("check", "sstatefs", Measurement{Value: v})
	}
	res.Add("check", "rclone", Measurement{Value: 40, Approx: true, Note: "extrapolated from 10 of 30"})
	res.Add("check", "local disk", Measurement{Value: 0.05})
	res.Add("cold", "sstatefs", Measurement{Value: 200})
	res.Add("cold", "rclone", Measurement{Value: 100})
	res.Add("cold", "S3 client", Measurement{Value: 250})
	res.Add("publish", "sstatefs", Measurement{Err: errors.New("boom")})
	res.Add("publish", "rclone", Measurement{Note: "link: EIO"})
	res.Add("publish", "local disk", Measurement{Value: 0.01})

	txt := res.Text()
	for _, want := range []string{
		"a header", "workload", "vs rclone", "vs reference",
		"check (s)", "0.200", "~40.0 [1]", "~200×", "0.250× (local disk)",
		"cold restore (MB/s)", "2.00×", "0.800× (S3 client)",
		"error [2]", "link: EIO", "[1] extrapolated from 10 of 30", "[2] boom",
	} {
		if !strings.Contains(txt, want) {
			t.Errorf("text table lacks %q:\n%s", want, txt)
		}
	}
	if strings.Contains(txt, "duplicate") {
		t.Error("a row was added twice")
	}
	md := res.Markdown()
	lines := strings.Split(md, "\n")
	var table []string
	for _, l := range lines {
		if strings.HasPrefix(l, "|") {
			table = append(table, l)
		}
	}
	if len(table) != 5 || !strings.HasPrefix(table[1], "|---|") {
		t.Errorf("markdown table: want header, separator and 3 rows:\n%s", md)
	}
	for _, l := range append(table[:1:1], table[2:]...) {
		if strings.Count(l, " |") != 7 {
			t.Errorf("markdown row with %d cells: %s", strings.Count(l, " |"), l)
		}
	}
	if !strings.Contains(md, "1. extrapolated from 10 of 30") {
		t.Errorf("markdown footnotes missing:\n%s", md)
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{{12850, "12,850"}, {332, "332"}, {39.51, "39.5"}, {1.234, "1.23"}, {0.04, "0.040"}, {0.0042, "0.0042"}, {0, "0"}} {
		if got := formatValue(c.v); got != c.want {
			t.Errorf("formatValue(%v) = %q, want %q", c.v, got, c.want)
		}
	}
	for _, c := range []struct {
		s    string
		want int64
	}{{"1GiB", 1 << 30}, {"64MiB", 64 << 20}, {"500MB", 500e6}, {"4096", 4096}, {"1.5G", 3 << 29}} {
		if got, err := parseBytes(c.s); err != nil || got != c.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", c.s, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "x", "-1GiB", "1.5.5M", "0"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) accepted", bad)
		}
	}
	if got := formatBytes(64 << 20); got != "64 MiB" {
		t.Errorf("formatBytes = %q", got)
	}
}

func TestFlags(t *testing.T) {
	o, err := parseFlags([]string{"--quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Size != 64<<20 || o.Runs != 1 || o.Names != 300 || o.PopulateSize != 4<<20 || !slices.Equal(o.Readers, []int{2, 8}) {
		t.Errorf("--quick: %+v", o)
	}
	o, err = parseFlags([]string{"--quick", "--size", "128MiB", "--runs", "2", "--systems", "sstatefs,s3fs", "--rtt", "20ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Size != 128<<20 || o.Runs != 2 || !slices.Equal(o.Systems, []string{"sstatefs", "s3fs"}) || o.RTT != 20*time.Millisecond {
		t.Errorf("explicit flags must win over --quick: %+v", o)
	}
	if _, err := parseFlags([]string{"--systems", "nfs", "--readers", "0", "--size", "lots"}, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "nfs") || !strings.Contains(err.Error(), "--readers") || !strings.Contains(err.Error(), "--size") {
		t.Errorf("want every problem reported, got %v", err)
	}
}

// --- the index at scale, small ---

func TestIndexScale(t *testing.T) {
	w := &indexScale{n: 20_000, names: RealNames(), seed: 1}
	ms := w.Run()
	if len(ms) != len(w.Rows()) {
		t.Fatalf("%d measurements for %d rows", len(ms), len(w.Rows()))
	}
	for i, m := range ms {
		if m.Err != nil || m.Value <= 0 {
			t.Errorf("%s: %+v", w.Rows()[i].Title, m)
		}
	}
	// Every object has a 32-byte SHA-256 in memory, whatever the layout.
	if per := ms[1].Value; per < 32 || per > 4000 {
		t.Errorf("%.0f bytes per object: implausible", per)
	}
}

// --- the whole pipeline, tiny, on versitygw (and FUSE where it works) ---

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// needVersitygw skips the test without versitygw, or fails it when
// SSTATEFS_REQUIRE_S3=1 (CI) says it must be there.
func needVersitygw(t *testing.T) {
	t.Helper()
	if testutil.FindVersitygw() == "" {
		if os.Getenv("SSTATEFS_REQUIRE_S3") == "1" {
			t.Fatal(errNoVersitygw.Error() + " (SSTATEFS_REQUIRE_S3=1)")
		}
		t.Skip(errNoVersitygw)
	}
}

// tinyBench is a benchmark of a few objects with sstatefs (if FUSE works)
// and, with SSTATEFS_BENCH_PEERS=1, the peers that are installed.
func tinyBench(t *testing.T) (*Bench, string) {
	t.Helper()
	needVersitygw(t)
	var systems []string
	if err := fuseUsable(); err != nil {
		if os.Getenv("SSTATEFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("FUSE required (SSTATEFS_REQUIRE_FUSE=1): %v", err)
		}
		t.Logf("no FUSE, only the S3 client and the local disk: %v", err)
	} else {
		systems = []string{"sstatefs"}
		if os.Getenv("SSTATEFS_BENCH_PEERS") == "1" {
			systems = append(systems, "rclone", "s3fs")
		}
	}
	work := t.TempDir()
	opts := Options{
		RTT: 2 * time.Millisecond, Size: 3 << 20, Readers: []int{2}, Runs: 1, Systems: systems,
		Workdir: work, Names: 24, Absent: 1.0 / 3, CheckLimit: 10 * time.Second,
		PopulateN: 3, PopulateSize: 256 << 10, PopulateTimeout: 30 * time.Second,
		IndexObjects: 5000, Seed: 9,
	}
	cl := &Cleanup{}
	t.Cleanup(cl.Run)
	var out bytes.Buffer
	return &Bench{Opts: opts, Log: newLogger(testLog{t}), Cleanup: cl, Stdout: &out}, work
}

func TestTinyBenchmark(t *testing.T) {
	b, _ := tinyBench(t)
	res, err := b.run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.Text())
	systems := append(slices.Clone(b.Opts.Systems), "S3 client", "local disk")
	for _, row := range res.rows {
		for _, sys := range systems {
			ms := res.Get(row.ID, sys)
			for _, m := range ms {
				if m.Err != nil && (sys == "sstatefs" || sys == "S3 client" || sys == "local disk") {
					t.Errorf("%s on %s: %v", row.Title, sys, m.Err)
				}
			}
			if sys == "sstatefs" && len(ms) == 0 && !strings.HasPrefix(row.ID, "index") {
				t.Errorf("%s: nothing measured on sstatefs", row.Title)
			}
		}
	}
	for _, id := range []string{"cold2", "warm2"} {
		if ms := res.Get(id, "S3 client"); id == "cold2" && (len(ms) != 1 || ms[0].Value <= 0) {
			t.Errorf("%s on the S3 client: %+v", id, ms)
		}
	}
	if ms := res.Get("check", "local disk"); len(ms) != 1 || ms[0].Value <= 0 {
		t.Errorf("check on the local disk: %+v", ms)
	}
	if slices.Contains(b.Opts.Systems, "sstatefs") {
		if ms := res.Get("first-byte", "sstatefs"); len(ms) != 1 || ms[0].Value <= 0 {
			t.Errorf("first byte on sstatefs: %+v", ms)
		}
		if ms := res.Get("memory", "sstatefs"); len(ms) != 1 || ms[0].Value <= 0 {
			t.Errorf("peak memory of sstatefs: %+v", ms)
		}
		if ms := res.Get("index-mem", "sstatefs"); len(ms) != 1 || ms[0].Value <= 0 {
			t.Errorf("index scale: %+v", ms)
		}
	}
}

// TestInterruptCleansUp cancels the benchmark while a mount is up (as
// Ctrl-C does) and checks that nothing stays mounted or running and that
// the work directory is gone.
func TestInterruptCleansUp(t *testing.T) {
	b, work := tinyBench(t)
	if len(b.Opts.Systems) == 0 {
		t.Skip("needs FUSE")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mounted string
	b.afterMount = func(sys System, ph Phase) {
		if sys.Name() == "sstatefs" && ph.Name == "restore-2" {
			mounts := mountsBelow(work)
			if len(mounts) == 1 {
				mounted = mounts[0]
			}
			cancel()
		}
	}
	if _, err := b.run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("run after cancel: %v", err)
	}
	if mounted == "" {
		t.Fatal("no sstatefs mount seen while it ran")
	}
	b.Cleanup.Run()
	if m := mountsBelow(work); len(m) > 0 {
		t.Errorf("still mounted after cleanup: %v", m)
	}
	if ents, _ := os.ReadDir(work); len(ents) > 0 {
		t.Errorf("work directory left behind: %v", ents)
	}
}

func mountsBelow(dir string) []string {
	var out []string
	for _, mp := range mountinfo.Under(dir) {
		if mp != dir {
			out = append(out, mp)
		}
	}
	return out
}

// TestArrivals: versitygw's events say when each object was stored, names
// with sstate's ':' included; an object stored with another size is an
// error, and a missing one makes Wait give up after its timeout.
func TestArrivals(t *testing.T) {
	needVersitygw(t)
	ctx := context.Background()
	a, err := StartArrivals()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "s3"), 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := StartS3Server(ctx, testutil.FindVersitygw(), filepath.Join(dir, "s3"), filepath.Join(dir, "versitygw.log"), "", a.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	c := srv.Client(srv.Endpoint, 4)
	if err := CreateBucket(ctx, c, "events"); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		"ab/cd/sstate:x:y:1.0:r0::14:abcd_populate_lic.tar.zst":          3,
		"ab/cd/sstate:x:y:1.0:r0::14:abcd_populate_lic.tar.zst.siginfo":  5,
		"debian-12/ef/01/sstate:z-native:x86_64-linux:2:r0:x86_64:14:ef": 0,
		"ab/cd/odd name+%.siginfo":                                       2,
	}
	before := time.Now()
	for k, size := range want {
		if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("events"), Key: aws.String(k), Body: bytes.NewReader(make([]byte, size))}); err != nil {
			t.Fatal(err)
		}
	}
	last, err := a.Wait(ctx, "events", want, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if last.Before(before) || time.Since(last) > 10*time.Second {
		t.Errorf("last object stored at %v, the puts started at %v", last, before)
	}

	if _, err := a.Wait(ctx, "events", map[string]int64{"ab/cd/never": 1}, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "1 of 1 objects not stored") {
		t.Errorf("waiting for an object never stored: %v", err)
	}
	if _, err := a.Wait(ctx, "events", map[string]int64{"ab/cd/sstate:x:y:1.0:r0::14:abcd_populate_lic.tar.zst": 4}, 10*time.Second); err == nil || !strings.Contains(err.Error(), "with 3 bytes, want 4") {
		t.Errorf("waiting for an object of another size: %v", err)
	}
}
