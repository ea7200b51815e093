package mount

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/cache"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/unixsock"
	"github.com/sstatefs/sstatefs/publish"
	"github.com/sstatefs/sstatefs/view"
)

// recentErrors is a slog.Handler that passes records on and keeps the last
// warnings and errors for `sstatefs status`.
type recentErrors struct {
	slog.Handler
	ring *errorRing
}

// RememberErrors wraps h so that the last warnings and errors logged
// through it are kept for the status of a mount started with that logger.
func RememberErrors(h slog.Handler) slog.Handler {
	return &recentErrors{Handler: h, ring: &errorRing{}}
}

type errorRing struct {
	mu   sync.Mutex // protects list
	list []LogRecord
}

// LogRecord is one remembered warning or error.
type LogRecord struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	Attrs   string    `json:"attrs,omitempty"`
}

const keepErrors = 20

func (h *recentErrors) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		r.Attrs(func(a slog.Attr) bool {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(a.String())
			return true
		})
		h.ring.mu.Lock()
		h.ring.list = append(h.ring.list, LogRecord{Time: r.Time, Level: r.Level.String(), Message: r.Message, Attrs: b.String()})
		if len(h.ring.list) > keepErrors {
			h.ring.list = h.ring.list[len(h.ring.list)-keepErrors:]
		}
		h.ring.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

func (h *recentErrors) WithAttrs(as []slog.Attr) slog.Handler {
	return &recentErrors{Handler: h.Handler.WithAttrs(as), ring: h.ring}
}

func (h *recentErrors) WithGroup(name string) slog.Handler {
	return &recentErrors{Handler: h.Handler.WithGroup(name), ring: h.ring}
}

func (r *errorRing) snapshot() []LogRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]LogRecord{}, r.list...)
}

// LiveStatus is what a running mount reports on its control socket.
type LiveStatus struct {
	PID        int             `json:"pid"`
	Mountpoint string          `json:"mountpoint"`
	CacheDir   string          `json:"cache_dir"`
	Stores     []StoreStatus   `json:"stores"` // in trust order
	Uptime     string          `json:"uptime"`
	Ready      bool            `json:"ready"`
	Index      IndexStatus     `json:"index"`
	Cache      CacheStatus     `json:"cache"`
	Lookups    LookupStatus    `json:"lookups"`
	Queue      QueueStatus     `json:"queue"`
	Uploads    publish.Stats   `json:"uploads"`
	Entries    []publish.Entry `json:"entries"`
	Errors     []LogRecord     `json:"recent_errors"`
}

// StoreStatus describes one store of the mount.
type StoreStatus struct {
	Name     string `json:"name"`
	Location string `json:"location"`
	Publish  bool   `json:"publish"` // receives what bitbake publishes
	// Index is the store's own index (Loaded false: a store without one,
	// probed for the names the indexed stores lack).
	Index IndexStatus `json:"index"`
	// Lookups answered with this store's objects, and its probes.
	Hits, Resolved, Probes, ProbeHits, ProbeErrors int64
	// Bytes downloaded from the store, and failed downloads.
	FetchedBytes, FetchErrors int64
	// Down: the store does not answer; its objects are absent from the
	// mount (unless cached) until it does. LastError says why.
	Down      bool      `json:"down"`
	DownSince time.Time `json:"down_since,omitzero"`
	// Under a signature policy (require_signoffs): archives verified, and
	// archives hidden because too few keyring keys signed them or a
	// keyring key's signature failed.
	RequireSignoffs    int    `json:"require_signoffs,omitempty"`
	Verified           int64  `json:"verified,omitempty"`
	HiddenUnsigned     int64  `json:"hidden_unsigned,omitempty"`
	HiddenBadSignature int64  `json:"hidden_bad_signature,omitempty"`
	LastError          string `json:"last_error,omitempty"`
	RefreshError       string `json:"index_refresh_error,omitempty"`
}

// IndexStatus describes the loaded index.
type IndexStatus struct {
	Loaded       bool      `json:"loaded"`
	Fresh        bool      `json:"fresh"`
	Objects      int       `json:"objects"`
	Bytes        int64     `json:"bytes"`
	Equivalences int       `json:"equivalences"`
	LastLoad     time.Time `json:"last_load"`
	Age          string    `json:"age"`
	Segments     int       `json:"journal_segments_applied"`
}

// CacheStatus describes the disk cache.
type CacheStatus struct {
	Bytes, Limit, Entries, Hits, Misses, Evictions, Corrupted, FetchedBytes int64
	// Refused counts opens answered at once (EIO) because the object's
	// last download failed recently; BackedOff lists those objects now.
	Refused   int64
	BackedOff []cache.Backoff
	// DiskSize and DiskFree describe the cache's file system, which
	// bounds the cache too.
	DiskSize, DiskFree int64
}

// LookupStatus counts lookups.
type LookupStatus struct {
	Hits, Misses, Probes, ProbeHits, ProbeErrors int64
}

// observer serves metrics, health, readiness and the control socket of a
// running mount.
type observer struct {
	m       *Mount
	ring    *errorRing
	start   time.Time
	ready   atomic.Bool
	reg     *prometheus.Registry
	fetches *prometheus.HistogramVec
	limit   int64
	// actions says who may ask the mount to act (prefetch) over the
	// control socket: the publish rule.
	actions access.Rule

	healthMu    sync.Mutex // protects lastHealth, healthAt
	lastHealth  []error    // per store, nil until the first check
	healthAt    time.Time
	healthEvery time.Duration // how long a store check is reused
}

func newObserver(ring *errorRing, cacheLimit int64) *observer {
	o := &observer{ring: ring, start: time.Now(), reg: prometheus.NewRegistry(), limit: cacheLimit, healthEvery: 10 * time.Second}
	o.fetches = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sstatefs_fetch_duration_seconds",
		Help:    "Duration of object downloads into the cache, by result.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	}, []string{"result"})
	o.reg.MustRegister(o.fetches, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return o
}

// onFetch is the cache's download hook.
func (o *observer) onFetch(n int64, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	o.fetches.WithLabelValues(result).Observe(d.Seconds())
}

// attach registers the metrics of a mount's parts.
func (o *observer) attach(m *Mount) {
	o.m = m
	counter := func(name, help string, f func() float64) {
		o.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	gauge := func(name, help string, f func() float64) {
		o.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	lookups := prometheus.NewDesc("sstatefs_lookups_total", "Lookups of object names, by result: hit and miss answered from the index or cache, probe_hit, probe_miss and probe_error asked the store, resolved through hash equivalence.", []string{"result"}, nil)
	o.reg.MustRegister(&funcCollector{desc: lookups, collect: func(ch chan<- prometheus.Metric) {
		s := m.view.Stats()
		for _, v := range []struct {
			label string
			n     int64
		}{{"hit", s.Hits}, {"miss", s.Misses}, {"probe", s.Probes}, {"probe_hit", s.ProbeHits}, {"probe_error", s.ProbeErrors}, {"resolved", s.Resolved}} {
			ch <- prometheus.MustNewConstMetric(lookups, prometheus.CounterValue, float64(v.n), v.label)
		}
	}})
	cs := func() cache.Stats { return m.cache.Stats() }
	counter("sstatefs_fetched_bytes_total", "Bytes downloaded from the store into the cache.", func() float64 { return float64(cs().FetchedBytes) })
	counter("sstatefs_cache_hits_total", "Opens served from the disk cache.", func() float64 { return float64(cs().Hits) })
	counter("sstatefs_cache_misses_total", "Opens that had to download.", func() float64 { return float64(cs().Misses) })
	counter("sstatefs_cache_evictions_total", "Cache entries evicted to keep the size bound.", func() float64 { return float64(cs().Evictions) })
	counter("sstatefs_cache_corrupt_total", "Downloads or cache entries that failed verification.", func() float64 { return float64(cs().Corrupted) })
	counter("sstatefs_cache_backoff_refused_total", "Opens answered at once with an error because the object's last download failed recently.", func() float64 { return float64(cs().Refused) })
	gauge("sstatefs_cache_backed_off_objects", "Objects whose downloads are held back after a failure.", func() float64 { return float64(cs().BackedOff) })
	gauge("sstatefs_cache_bytes", "Bytes in the disk cache.", func() float64 { return float64(cs().Bytes) })
	gauge("sstatefs_cache_entries", "Objects in the disk cache.", func() float64 { return float64(cs().Entries) })
	gauge("sstatefs_cache_limit_bytes", "Bound of the disk cache.", func() float64 { return float64(o.limit) })
	gauge("sstatefs_cache_disk_free_bytes", "Bytes available on the cache's file system (the cache keeps a margin of it free).", func() float64 { return float64(cs().DiskFree) })
	gauge("sstatefs_upload_queue_depth", "Objects waiting in the upload queue.", func() float64 { return float64(m.queue.Len()) })
	qs := func() publish.Stats { return m.queue.Stats() }
	counter("sstatefs_uploads_total", "Objects uploaded to the store.", func() float64 { return float64(qs().Uploaded) })
	counter("sstatefs_uploaded_bytes_total", "Bytes uploaded to the store.", func() float64 { return float64(qs().UploadedBytes) })
	counter("sstatefs_upload_failures_total", "Failed upload attempts (retried).", func() float64 { return float64(qs().Failures) })
	counter("sstatefs_upload_conflicts_total", "Publications not uploaded because the store has other content under the name.", func() float64 { return float64(qs().Conflicts) })
	counter("sstatefs_upload_signoffs_total", "Sign-offs recorded for published archives (publish.sign_key).", func() float64 { return float64(qs().Signed) })
	counter("sstatefs_upload_sign_failures_total", "Archives published without a sign-off because signing failed.", func() float64 { return float64(qs().SignFailures) })
	counter("sstatefs_upload_changed_total", "Publications not uploaded because their file changed after bitbake published it.", func() float64 { return float64(qs().Changed) })
	gauge("sstatefs_index_age_seconds", "Seconds since the index was last loaded successfully.", func() float64 {
		if t := m.live.LastLoad(); !t.IsZero() {
			return time.Since(t).Seconds()
		}
		return -1
	})
	gauge("sstatefs_index_objects", "Objects in the loaded index.", func() float64 { return float64(m.live.Current().Len()) })
	gauge("sstatefs_index_equivalences", "Hash equivalence records in the loaded index.", func() float64 { return float64(numEquivalences(m.live.Current())) })
	gauge("sstatefs_ready", "1 once the mount is up and its index loaded.", func() float64 {
		if o.ready.Load() {
			return 1
		}
		return 0
	})
	// Per store, labelled with its name, in trust order.
	storeLookups := prometheus.NewDesc("sstatefs_store_lookups_total", "Lookups answered with a store's objects, by store and result: hit from its index, resolved through hash equivalence, probe, probe_hit and probe_error asked the store.", []string{"store", "result"}, nil)
	storeFetched := prometheus.NewDesc("sstatefs_store_fetched_bytes_total", "Bytes downloaded from a store.", []string{"store"}, nil)
	storeFetchErrors := prometheus.NewDesc("sstatefs_store_fetch_errors_total", "Failed downloads from a store.", []string{"store"}, nil)
	storeUp := prometheus.NewDesc("sstatefs_store_up", "1 while a store answers, 0 while its objects are left out of the mount because it does not.", []string{"store"}, nil)
	storeObjects := prometheus.NewDesc("sstatefs_store_index_objects", "Objects in a store's loaded index.", []string{"store"}, nil)
	storeHidden := prometheus.NewDesc("sstatefs_store_hidden_objects_total", "Archives of a store its signature policy hides, by reason: unsigned (too few keyring keys signed them) or bad_signature.", []string{"store", "reason"}, nil)
	storeVerified := prometheus.NewDesc("sstatefs_store_verified_objects_total", "Archives of a store whose signatures verified under its signature policy.", []string{"store"}, nil)
	storeAge := prometheus.NewDesc("sstatefs_store_index_age_seconds", "Seconds since a store's index was last loaded successfully (-1: never; a store without an index).", []string{"store"}, nil)
	o.reg.MustRegister(&funcCollector{descs: []*prometheus.Desc{storeLookups, storeFetched, storeFetchErrors, storeUp, storeObjects, storeAge, storeHidden, storeVerified}, collect: func(ch chan<- prometheus.Metric) {
		for i, s := range m.view.StoreStats() {
			name := s.Name
			for _, v := range []struct {
				label string
				n     int64
			}{{"hit", s.Hits}, {"resolved", s.Resolved}, {"probe", s.Probes}, {"probe_hit", s.ProbeHits}, {"probe_error", s.ProbeErrors}} {
				ch <- prometheus.MustNewConstMetric(storeLookups, prometheus.CounterValue, float64(v.n), name, v.label)
			}
			ch <- prometheus.MustNewConstMetric(storeFetched, prometheus.CounterValue, float64(s.FetchedBytes), name)
			ch <- prometheus.MustNewConstMetric(storeFetchErrors, prometheus.CounterValue, float64(s.FetchErrors), name)
			up := 1.0
			if s.Down {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(storeUp, prometheus.GaugeValue, up, name)
			live := m.stores[i].live
			ch <- prometheus.MustNewConstMetric(storeObjects, prometheus.GaugeValue, float64(live.Current().Len()), name)
			age := -1.0
			if t := live.LastLoad(); !t.IsZero() {
				age = time.Since(t).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(storeAge, prometheus.GaugeValue, age, name)
			ch <- prometheus.MustNewConstMetric(storeHidden, prometheus.CounterValue, float64(s.HiddenUnsigned), name, "unsigned")
			ch <- prometheus.MustNewConstMetric(storeHidden, prometheus.CounterValue, float64(s.HiddenBadSignature), name, "bad_signature")
			ch <- prometheus.MustNewConstMetric(storeVerified, prometheus.CounterValue, float64(s.Verified), name)
		}
	}})
	if m.hashserv != nil {
		hs := prometheus.NewDesc("sstatefs_hashserv_requests_total", "Hash equivalence protocol requests, by command.", []string{"command"}, nil)
		o.reg.MustRegister(&funcCollector{desc: hs, collect: func(ch chan<- prometheus.Metric) {
			for cmd, n := range m.hashserv.Stats().ByCommand {
				ch <- prometheus.MustNewConstMetric(hs, prometheus.CounterValue, float64(n), cmd)
			}
		}})
	}
}

// funcCollector collects labelled metrics computed on scrape.
type funcCollector struct {
	desc    *prometheus.Desc
	descs   []*prometheus.Desc // when it collects several metrics
	collect func(chan<- prometheus.Metric)
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	if c.desc != nil {
		ch <- c.desc
	}
	for _, d := range c.descs {
		ch <- d
	}
}
func (c *funcCollector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// health checks that every store answers (in parallel), reusing a check
// for healthEvery. It returns each store's error, nil if it answered.
func (o *observer) health(ctx context.Context) []error {
	o.healthMu.Lock()
	defer o.healthMu.Unlock()
	if o.lastHealth != nil && time.Since(o.healthAt) < o.healthEvery {
		return o.lastHealth
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	errs := make([]error, len(o.m.stores))
	var wg sync.WaitGroup
	for i, s := range o.m.stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = view.Check(ctx, s.store)
		}()
	}
	wg.Wait()
	o.lastHealth, o.healthAt = errs, time.Now()
	return errs
}

func (o *observer) status() LiveStatus {
	m := o.m
	st := LiveStatus{
		PID: os.Getpid(), Mountpoint: m.mountpoint, CacheDir: m.cacheDir, Stores: m.storeStatus(),
		Uptime: time.Since(o.start).Round(time.Second).String(), Ready: o.ready.Load(),
		Index:   indexStatus(m.live),
		Uploads: m.queue.Stats(),
		Entries: m.queue.Entries(),
		Errors:  o.ring.snapshot(),
	}
	cs := m.cache.Stats()
	st.Cache = CacheStatus{Bytes: cs.Bytes, Limit: o.limit, Entries: cs.Entries, Hits: cs.Hits, Misses: cs.Misses, Evictions: cs.Evictions, Corrupted: cs.Corrupted, FetchedBytes: cs.FetchedBytes, Refused: cs.Refused, BackedOff: m.cache.BackedOff(), DiskSize: cs.DiskSize, DiskFree: cs.DiskFree}
	vs := m.view.Stats()
	st.Lookups = LookupStatus{Hits: vs.Hits, Misses: vs.Misses, Probes: vs.Probes, ProbeHits: vs.ProbeHits, ProbeErrors: vs.ProbeErrors}
	st.Queue = SummarizeQueue(st.Entries)
	return st
}

func indexStatus(live *index.Live) IndexStatus {
	ix := live.Current()
	st := IndexStatus{
		Loaded: ix != nil, Fresh: live.Fresh(), Objects: ix.Len(), Bytes: ix.TotalSize(),
		Equivalences: numEquivalences(ix), LastLoad: live.LastLoad(), Segments: ix.Sources().Applied,
	}
	if !st.LastLoad.IsZero() {
		st.Age = time.Since(st.LastLoad).Round(time.Second).String()
	}
	return st
}

// storeStatus describes every store, in trust order.
func (m *Mount) storeStatus() []StoreStatus {
	vs := m.view.StoreStats()
	out := make([]StoreStatus, len(m.stores))
	for i, s := range m.stores {
		v := vs[i]
		out[i] = StoreStatus{
			Name: s.name, Location: s.store.Location(), Publish: i == m.pub, Index: indexStatus(s.live),
			Hits: v.Hits, Resolved: v.Resolved, Probes: v.Probes, ProbeHits: v.ProbeHits, ProbeErrors: v.ProbeErrors,
			FetchedBytes: v.FetchedBytes, FetchErrors: v.FetchErrors,
			Down: v.Down, DownSince: v.DownSince, LastError: v.LastError, RefreshError: s.live.RefreshError(),
			RequireSignoffs: s.require, Verified: v.Verified, HiddenUnsigned: v.HiddenUnsigned, HiddenBadSignature: v.HiddenBadSignature,
		}
	}
	return out
}

// handler serves /metrics, /healthz, /readyz and /status: observation
// only, nothing that makes the mount act, since the metrics listener may
// be reachable from the network.
func (o *observer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !o.ready.Load() {
			http.Error(w, "not ready: mounting or loading the index\n", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		// ok: every store answers; degraded: some do not (the mount serves
		// the others); 503 when the publish store does not answer (nothing
		// published can reach it) or no store does.
		errs := o.health(r.Context())
		st := o.status()
		stores := map[string]any{}
		failing := 0
		for i, s := range st.Stores {
			e := map[string]any{"reachable": errs[i] == nil, "down": s.Down}
			if errs[i] != nil {
				e["error"] = errs[i].Error()
				failing++
			}
			stores[s.Name] = e
		}
		home := max(o.m.pub, 0)
		status, code := "ok", http.StatusOK
		switch {
		case errs[home] != nil && (o.m.pub >= 0 || failing == len(errs)):
			status, code = "unavailable", http.StatusServiceUnavailable
		case failing > 0:
			status = "degraded"
		}
		body := map[string]any{
			"status":          status,
			"store_reachable": errs[home] == nil,
			"stores":          stores,
			"index_age":       st.Index.Age,
			"index_fresh":     st.Index.Fresh,
			"queue":           st.Queue,
		}
		if errs[home] != nil {
			body["store_error"] = errs[home].Error()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(body)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(o.status())
	})
	return mux
}

// controlHandler serves the control socket: what handler serves, and the
// actions (POST /prefetch) for the clients the publish rule allows.
func (o *observer) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", o.handler())
	mux.HandleFunc("POST /prefetch", o.allowed(o.servePrefetch))
	return mux
}

// allowed refuses a request whose client (SO_PEERCRED of the control
// socket) the publish rule does not allow: the socket's mode keeps others
// out, this keeps them out should it be opened up.
func (o *observer) allowed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		nc, _ := r.Context().Value(connKey{}).(net.Conn)
		p, err := access.PeerOf(nc)
		if err != nil || !o.actions.AllowsPeer(p) {
			who := "an unidentified client"
			if err == nil {
				who = p.String()
			}
			http.Error(w, fmt.Sprintf("%s %s refused: %s may not make this mount act (allowed: %s)", r.Method, r.URL.Path, who, o.actions), http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// connKey is the context key of the connection a request came on.
type connKey struct{}

// warnExposedMetrics warns when the metrics listener is reachable from
// other hosts: it tells them about the mount, though it takes no actions.
func warnExposedMetrics(log *slog.Logger, configured string, bound net.Addr) {
	if ta, ok := bound.(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		return
	}
	log.Warn("the metrics listener is not on a loopback address: other hosts can read it",
		"addr", configured, "listening", bound.String(),
		"exposes", "/metrics (counters), /healthz and /status (store location, mountpoint, cache directory, upload queue entries, recent warnings and errors); no actions")
}

// serve runs an HTTP server on ln until ctx ends. Handlers find the
// connection of a request under connKey.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) }}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("http server", "addr", ln.Addr().String(), "error", err)
	}
}

// ControlSocket is where a running mount answers `sstatefs status`.
func ControlSocket(cacheDir string) string {
	return filepath.Join(cacheDir, "state", "control.sock")
}

// listenControl creates the control socket owner-only: uid:gid (the mount
// owner), mode 0600 from the start. One left by a crash is replaced (the
// cache dir lock is ours).
func listenControl(cacheDir string, uid, gid uint32) (net.Listener, error) {
	ln, err := unixsock.Listen(ControlSocket(cacheDir), unixsock.Owner{UID: int(uid), GID: int(gid), Mode: 0o600})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// writeReadyFile creates the readiness file (and its directory).
func writeReadyFile(p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644)
}

// numEquivalences counts the hash equivalence records of an index.
func numEquivalences(ix *index.Index) int { return ix.NumEquivalences() }

// PrefetchRequest asks a running mount to fetch objects into its cache.
type PrefetchRequest struct {
	Keys []string `json:"keys"`
	Jobs int      `json:"jobs"`
}

// PrefetchResult says what became of them.
type PrefetchResult struct {
	Fetched int      `json:"fetched"` // downloaded now
	Cached  int      `json:"cached"`  // already in the cache
	Bytes   int64    `json:"bytes"`   // bytes of fetched objects
	Missing []string `json:"missing"` // not in the store
	Failed  []string `json:"failed"`  // "key: error"
}

// servePrefetch fetches a batch of objects in parallel and answers when
// they are all in the cache (or failed).
func (o *observer) servePrefetch(w http.ResponseWriter, r *http.Request) {
	var req PrefetchRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	jobs := min(max(req.Jobs, 1), 64)
	var mu sync.Mutex
	var res PrefetchResult
	var wg sync.WaitGroup
	sem := make(chan struct{}, jobs)
	for _, key := range req.Keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			obj, err := o.m.view.Stat(r.Context(), key)
			if err != nil {
				mu.Lock()
				if errors.Is(err, backend.ErrNotExist) {
					res.Missing = append(res.Missing, key)
				} else {
					res.Failed = append(res.Failed, key+": "+err.Error())
				}
				mu.Unlock()
				return
			}
			cached := o.m.view.Cached(obj)
			err = o.m.view.Fetch(r.Context(), obj)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				res.Failed = append(res.Failed, key+": "+err.Error())
			case cached:
				res.Cached++
			default:
				res.Fetched++
				res.Bytes += obj.Size
			}
		}()
	}
	wg.Wait()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

// QueueStatus summarises the upload queue.
type QueueStatus struct {
	Pending      int   `json:"pending"`       // waiting for an upload
	Uploaded     int   `json:"uploaded"`      // in the store, waiting for the journal
	Failing      int   `json:"failing"`       // at least one failed attempt
	PendingBytes int64 `json:"pending_bytes"` // bytes still to upload
}

// SummarizeQueue counts the entries of an upload queue by state.
func SummarizeQueue(entries []publish.Entry) QueueStatus {
	var q QueueStatus
	for _, e := range entries {
		switch e.State {
		case publish.Uploaded:
			q.Uploaded++
		default:
			q.Pending++
			q.PendingBytes += e.Size
		}
		if e.Attempts > 0 {
			q.Failing++
		}
	}
	return q
}
