package index

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/s3"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// BenchmarkStartup measures a new mount's first load (Live.LoadOnce) from
// versitygw behind the latency proxy: a snapshot of 10,000 objects plus
// 500, 2,000 or 10,000 journal segments written by 50 writers with
// Journal, at 10 ms and 100 ms RTT, with several fetch concurrencies. It
// reports the requests a load makes by kind (LIST pages counted as one
// per 1,000 keys, as S3 pages them). Opt-in, as writing the segments takes
// a while:
//
//	SSTATEFS_STARTUP_BENCH=1 go test -run '^$' -bench Startup -benchtime 1x ./index/
//
// SSTATEFS_STARTUP_BENCH may list the segment counts (e.g. "2000"), and
// SSTATEFS_STARTUP_FETCH the concurrencies (e.g. "8,64").
func BenchmarkStartup(b *testing.B) {
	counts := benchInts(b, "SSTATEFS_STARTUP_BENCH", "500,2000,10000")
	fetch := benchInts(b, "SSTATEFS_STARTUP_FETCH", strconv.Itoa(DefaultFetchConcurrency))
	env := testutil.S3Server(b)
	for _, kv := range [][2]string{
		{"AWS_ACCESS_KEY_ID", env.AccessKey}, {"AWS_SECRET_ACCESS_KEY", env.SecretKey},
		{"AWS_SESSION_TOKEN", ""}, {"AWS_PROFILE", ""}, {"AWS_EC2_METADATA_DISABLED", "true"},
		{"AWS_CONFIG_FILE", filepath.Join(b.TempDir(), "none")},
		{"AWS_SHARED_CREDENTIALS_FILE", filepath.Join(b.TempDir(), "none")},
	} {
		b.Setenv(kv[0], kv[1])
	}
	ctx := context.Background()
	open := func(b *testing.B, endpoint, bucket string) backend.Store {
		s, err := s3.New(ctx, s3.Config{Bucket: bucket, Endpoint: endpoint, Region: env.Region, PathStyle: true})
		if err != nil {
			b.Fatal(err)
		}
		return &backend.Timeout{Store: s, D: time.Minute}
	}
	for _, n := range counts {
		bucket := env.NewBucket(b)
		writeStartupStore(b, open(b, env.Endpoint, bucket), n)
		for _, rtt := range []time.Duration{10 * time.Millisecond, 100 * time.Millisecond} {
			for _, conc := range fetch {
				b.Run(fmt.Sprintf("segments=%d/rtt=%v/fetch=%d", n, rtt, conc), func(b *testing.B) {
					p := testutil.StartProxy(b, strings.TrimPrefix(env.Endpoint, "http://"), rtt/2, 0)
					var last *requestCounter
					for b.Loop() {
						// A new mount: a new client, new connections.
						last = &requestCounter{Store: open(b, "http://"+p.Addr, bucket)}
						l := NewLive(last, LiveOptions{FetchConcurrency: conc})
						if err := l.LoadOnce(ctx); err != nil {
							b.Fatal(err)
						}
						if got := l.Current().Sources().Applied; got != n {
							b.Fatalf("%d segments applied, want %d", got, n)
						}
					}
					b.ReportMetric(float64(last.get.Load()), "GET/op")
					b.ReportMetric(float64(last.head.Load()), "HEAD/op")
					b.ReportMetric(float64(last.listPages()), "LIST/op")
				})
			}
		}
		// A refresh after 20 new segments, listing after a key (Run's
		// refreshes) and listing the whole journal (as every refresh did).
		for _, whole := range []bool{false, true} {
			b.Run(fmt.Sprintf("segments=%d/refresh/whole=%v", n, whole), func(b *testing.B) {
				p := testutil.StartProxy(b, strings.TrimPrefix(env.Endpoint, "http://"), 5*time.Millisecond, 0)
				c := &requestCounter{Store: open(b, "http://"+p.Addr, bucket)}
				l := NewLive(c, LiveOptions{})
				if err := l.LoadOnce(ctx); err != nil {
					b.Fatal(err)
				}
				j := NewJournal(open(b, env.Endpoint, bucket), JournalOptions{Writer: fmt.Sprintf("late-%v", whole)})
				var before [3]int64
				for i := 0; b.Loop(); i++ {
					b.StopTimer()
					if err := j.Added(ctx, Object{Key: fmt.Sprintf("late/%v/%d", whole, i), Size: 1}); err != nil {
						b.Fatal(err)
					}
					before = [3]int64{c.get.Load(), c.head.Load(), int64(c.listPages())}
					b.StartTimer()
					if whole {
						err := l.LoadOnce(ctx)
						if err != nil {
							b.Fatal(err)
						}
					} else {
						l.tick(ctx)
					}
				}
				b.ReportMetric(float64(c.get.Load()-before[0]), "GET/op")
				b.ReportMetric(float64(c.head.Load()-before[1]), "HEAD/op")
				b.ReportMetric(float64(int64(c.listPages())-before[2]), "LIST/op")
			})
		}
	}
}

// writeStartupStore gives s a snapshot of 10,000 objects and n journal
// segments from 50 writers, each segment as Journal writes it.
func writeStartupStore(b *testing.B, s backend.Store, n int) {
	ctx := context.Background()
	if err := Save(ctx, s, New(randomObjects(synthKeys(b, 10_000, 1), 1), time.Now())); err != nil {
		b.Fatal(err)
	}
	const writers = 50
	keys := synthKeys(b, n, 2)
	objs := randomObjects(keys, 2)
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error {
			j := NewJournal(s, JournalOptions{Writer: fmt.Sprintf("builder-%02d", w)})
			for i := w; i < n; i += writers {
				if err := j.Added(ctx, objs[i]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
}

func benchInts(b *testing.B, env, def string) []int {
	v := os.Getenv(env)
	if v == "" && env == "SSTATEFS_STARTUP_BENCH" {
		b.Skip("set SSTATEFS_STARTUP_BENCH=1 (or segment counts) to measure start-up against versitygw")
	}
	if v == "" || v == "1" {
		v = def
	}
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want positive integers separated by commas", env, v)
		}
		out = append(out, n)
	}
	return out
}

// requestCounter counts the requests that reach the store it wraps.
type requestCounter struct {
	backend.Store
	get, head atomic.Int64
	mu        sync.Mutex
	lists     []int // keys returned by each listing
}

func (c *requestCounter) Stat(ctx context.Context, key string) (backend.ObjectInfo, error) {
	c.head.Add(1)
	return c.Store.Stat(ctx, key)
}

func (c *requestCounter) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.get.Add(1)
	return c.Store.Open(ctx, key, off, n)
}

func (c *requestCounter) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	return c.ListAfter(ctx, prefix, "", fn)
}

func (c *requestCounter) ListAfter(ctx context.Context, prefix, start string, fn func(backend.ObjectInfo) error) error {
	n := 0
	defer func() { c.mu.Lock(); c.lists = append(c.lists, n); c.mu.Unlock() }()
	return backend.ListAfter(ctx, c.Store, prefix, start, func(oi backend.ObjectInfo) error { n++; return fn(oi) })
}

// listPages is the LIST requests made: S3 answers 1,000 keys a page.
func (c *requestCounter) listPages() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	pages := 0
	for _, n := range c.lists {
		pages += cmp.Or((n+999)/1000, 1)
	}
	return pages
}
