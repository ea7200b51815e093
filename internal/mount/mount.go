// Package mount assembles a mount: the store, its live index (initialised,
// compacted now and then), the cache, the view, the FUSE file system, the
// upload queue, the hash equivalence server, the control socket and the
// metrics. The command and its tests start mounts with it.
package mount

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/cache"
	sfs "github.com/sstatefs/sstatefs/fs"
	"github.com/sstatefs/sstatefs/hashserv"
	"github.com/sstatefs/sstatefs/index"
	"github.com/sstatefs/sstatefs/internal/access"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/stores"
	"github.com/sstatefs/sstatefs/publish"
	"github.com/sstatefs/sstatefs/signing"
	"github.com/sstatefs/sstatefs/view"
)

// ringOf returns the error ring of a logger whose handler RememberErrors
// made (a fresh one for other loggers).
func ringOf(log *slog.Logger) *errorRing {
	if r, ok := log.Handler().(*recentErrors); ok {
		return r.ring
	}
	return &errorRing{}
}

// Mount is a running mount.
type Mount struct {
	mountpoint string
	server     *fuse.Server
	fs         *sfs.FS
	live       *index.Live
	cache      *cache.Cache
	store      backend.Store // the publish store (the first store when there is none)
	stores     []mountStore  // every store, in trust order
	pub        int           // position of the publish store in stores, -1 if none
	queue      *publish.Queue
	journal    *index.Journal
	view       *view.View
	obs        *observer
	hashserv   *hashserv.Server // nil unless --hashserv
	reports    *pendingReports  // nil when the store is read-only
	hsAddr     string           // where hashserv listens
	cacheDir   string
	readyFile  string
	metrics    string // address of the metrics endpoint, "" when off
	drain      time.Duration
	cancel     context.CancelFunc
	bg         sync.WaitGroup // the goroutines started with background
	done       chan struct{}  // closed when the FUSE server stops serving
	log        *slog.Logger
	unlock     func()
}

// CacheClock is the clock of the cache's back-off of failed downloads;
// tests move it instead of sleeping.
var CacheClock = time.Now

// Start composes the stack for the first store of cfg and mounts it at
// mountpoint (created if missing). ctx bounds the start only; the mount
// runs until Close.
func Start(ctx context.Context, cfg config.Config, mountpoint string, log *slog.Logger) (m *Mount, err error) {
	mp, err := checkMountpoint(mountpoint)
	if err != nil {
		return nil, err
	}
	if err := checkFUSE(); err != nil {
		return nil, err
	}
	uid, gid, err := mountOwner(cfg.Mount.Owner, mp)
	if err != nil {
		return nil, err
	}
	signer, err := publishSigner(cfg.Publish)
	if err != nil {
		return nil, err
	}
	// The publish store receives what bitbake publishes; without one the
	// local files belong to the first store.
	pub := cfg.PublishStore()
	home := max(pub, 0)
	unlock, err := claimCacheDir(cfg.Cache.Dir, cfg.Stores[home])
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	ms, err := openStores(ctx, cfg, pub, log)
	if err != nil {
		return nil, err
	}
	store, live := ms[home].store, ms[home].live
	obs := newObserver(ringOf(log), cfg.Cache.Size.Bytes)
	c, err := cache.Open(cache.Options{Dir: filepath.Join(cfg.Cache.Dir, "cache"), MaxBytes: cfg.Cache.Size.Bytes, Logger: log, OnFetch: obs.onFetch, Now: CacheClock})
	if err != nil {
		return nil, err
	}
	// The write path: published objects go to a durable queue, are uploaded
	// in the background and recorded in this mount's journal segments.
	readOnly := pub < 0 || backend.IsReadOnly(store)
	// Group commit: records wait up to the record interval to share a
	// segment, access records too (the queue flushes the journal when it
	// drains, Close at exit).
	window := cfg.Publish.RecordInterval.Duration
	journal := index.NewJournal(store, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log, Window: window, FlushInterval: window})
	journal.OnWrite(live.Apply) // this mount's publications show in its own index at once
	var reports *pendingReports
	if !readOnly {
		index.InitEmpty(ctx, store, live, log)
		// hash equivalence reports ride in the batches too, durable locally
		// until then; a killed mount's are recorded again here
		if reports, err = openReports(filepath.Join(cfg.Cache.Dir, "state", ReportsFile), journal, log); err != nil {
			return nil, err
		}
	}
	defer func() {
		if err != nil && reports != nil {
			reports.Close()
		}
	}()
	queue, err := publish.Open(publish.Options{
		Dir: filepath.Join(cfg.Cache.Dir, "queue"), Store: store, Recorder: journal, Signer: signer,
		Concurrency: cfg.Publish.Concurrency, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	queue.SetReadOnly(readOnly)
	overlay := filepath.Join(cfg.Cache.Dir, "overlay")
	if ix := live.Current(); ix != nil {
		// Objects published in an earlier run and now in the store leave the
		// overlay for the bounded cache.
		res, err := publish.Settle(overlay, queue, ix, c, store.Location())
		if err != nil {
			log.Warn("moving published objects into the cache", "error", err)
		} else if res.Moved > 0 {
			log.Info("published objects moved from the overlay into the cache", "objects", res.Moved, "bytes", res.Bytes)
		}
	}
	switch {
	case pub < 0:
		log.Info("no writable store: objects bitbake publishes stay in the local overlay", "stores", storeNames(ms))
	case readOnly:
		log.Info("publish store is read-only: objects bitbake publishes stay in the local overlay", "store", ms[pub].name, "location", store.Location())
	case len(ms) > 1:
		log.Info("objects bitbake publishes go to the publish store", "store", ms[pub].name, "location", store.Location())
	}
	if signer != nil && !readOnly {
		log.Info("signing off what this mount publishes", "key", signer.Fingerprint())
	}
	var vs []view.Store
	for i, s := range ms {
		vst := view.Store{
			Name: s.name, Store: s.store, Index: s.live,
			Probes:          cache.NewStatCache(100_000, cfg.Index.RefreshInterval.Duration, cfg.Index.NegativeTTL.Duration),
			AnyEquivalences: cfg.Stores[i].EquivalencesFrom == config.EquivalencesAny,
		}
		if i == pub && !readOnly {
			// access records go to the publish store only: no other store
			// is ever written
			vst.OnAccess = journal.Accessed
		}
		if vst.Policy, err = storePolicy(cfg.Stores[i]); err != nil {
			return nil, err
		}
		vs = append(vs, vst)
	}
	v := view.New(view.Options{
		Stores:          vs,
		Cache:           c,
		Logger:          log,
		PrefetchWorkers: prefetchWorkers(cfg.Prefetch),
	})
	for i, s := range ms {
		if s.loadErr != nil {
			v.Failed(i, s.loadErr)
		}
	}
	publishFn := func(ctx context.Context, key, path string) error {
		err := queue.Enqueue(key, path)
		if errors.Is(err, publish.ErrReadOnly) {
			return nil // kept in the overlay, as announced at start
		}
		return err
	}
	f, root, err := sfs.New(sfs.Options{
		View:     v,
		Overlay:  overlay,
		StateDir: filepath.Join(cfg.Cache.Dir, "state"),
		UID:      uid, GID: gid,
		// who may publish: the mount owner and its group (and root)
		Publishers:    access.Rule{UID: uid, GID: gid},
		CacheDir:      cfg.Cache.Dir,
		Logger:        log,
		Publish:       publishFn,
		Prefetch:      sfs.PrefetchMode(cfg.Prefetch.Mode),
		DaemonOpens:   cfg.Mount.DaemonOpens,
		NoPassthrough: cfg.Mount.NoPassthrough,
	})
	if err != nil {
		return nil, err
	}
	opts := sfs.MountOptions(sfs.MountConfig{
		AllowOther: cfg.Mount.AllowOther, Debug: cfg.Mount.Debug, Source: cfg.Cache.Dir,
		EntryTimeout:    cfg.Index.RefreshInterval.Duration,
		NegativeTimeout: min(cfg.Index.RefreshInterval.Duration, cfg.Index.NegativeTTL.Duration),
	})
	// go-fuse's messages (the server's and the node bridge's) go to the
	// log: every request with --mount-debug (at info level, so that they
	// show whatever --log-level says), otherwise only what goes wrong, as
	// warnings
	level := slog.LevelWarn
	if cfg.Mount.Debug {
		level = slog.LevelInfo
	}
	opts.Logger = slog.NewLogLogger(log.Handler(), level)
	opts.MountOptions.Logger = opts.Logger
	server, err := gofs.Mount(mp, root, opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mp, err)
	}
	if ra := cfg.Mount.ReadAhead.Bytes; ra > 0 {
		if err := sfs.SetReadAhead(mp, int((ra+1023)>>10)); err != nil {
			log.Debug("kernel read-ahead left at its default (needs root)", "error", err)
		}
	}
	rctx, cancel := context.WithCancel(context.Background())
	m = &Mount{
		mountpoint: mp, server: server, fs: f, live: live, cache: c, store: store, stores: ms, pub: pub,
		queue: queue, journal: journal, reports: reports, view: v, obs: obs, cacheDir: cfg.Cache.Dir,
		readyFile: cfg.Mount.ReadyFile, drain: cfg.Publish.DrainTimeout.Duration,
		cancel: cancel, done: make(chan struct{}), log: log, unlock: unlock,
	}
	for _, s := range ms {
		m.background(func() { s.live.Run(rctx) })
	}
	m.background(func() { v.RunHealth(rctx) })
	m.background(func() { queue.Run(rctx) })
	m.background(func() { journal.Run(rctx) })
	m.background(func() { v.RunPrefetch(rctx) })
	if !readOnly && cfg.Index.CompactInterval.Duration > 0 {
		m.background(func() {
			index.CompactEvery(rctx, store, live, index.CompactTriggers{Every: cfg.Index.CompactInterval.Duration,
				Segments: cfg.Index.CompactSegments, Bytes: cfg.Index.CompactBytes.Bytes}, index.CompactOptions{Grace: index.DefaultGrace, Writer: cfg.Publish.WriterID, Logger: log})
		})
	}
	go func() { server.Wait(); close(m.done) }()
	// who may change the store through the hash equivalence server and ask
	// the mount to act: the publish rule, with the mount owner
	rule := access.Rule{UID: uid, GID: gid}
	if cfg.Hashserv.Listen != "" {
		owner, err := HashservSocket(cfg.Hashserv, uid, gid)
		if err != nil {
			m.Close()
			return nil, err
		}
		hs, addr, err := StartHashserv(rctx, cfg.Hashserv.Listen, &equivBackend{view: v, journal: journal, pending: reports}, readOnly || cfg.Hashserv.ReadOnly, owner, rule, log)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.hashserv, m.hsAddr = hs, addr
		log.Info("serving hash equivalence", "addr", addr, "equivalences", v.NumEquivalences(), "may_record", rule.String())
	}
	obs.attach(m)
	obs.actions = rule
	if ln, err := listenControl(cfg.Cache.Dir, uid, gid); err != nil {
		log.Warn("no control socket: `sstatefs status` shows only the queue on disk", "error", err)
	} else {
		m.background(func() { serveHTTP(rctx, ln, obs.controlHandler(), log) })
	}
	if cfg.Metrics.Addr != "" {
		ln, err := net.Listen("tcp", cfg.Metrics.Addr)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("--metrics-addr %s: %w", cfg.Metrics.Addr, err)
		}
		m.metrics = ln.Addr().String()
		log.Info("serving metrics and health", "addr", m.metrics, "paths", "/metrics /healthz /readyz /status")
		warnExposedMetrics(log, cfg.Metrics.Addr, ln.Addr())
		m.background(func() { serveHTTP(rctx, ln, obs.handler(), log) })
	}
	warmStart := time.Now()
	if n, err := f.WarmDirs(mp, sfs.WarmDirsMax); err != nil {
		log.Warn("could not list the store's directories ahead of the build", "error", err)
	} else if n > 0 {
		log.Debug("store directories shown to the kernel", "dirs", n, "took", time.Since(warmStart).Round(time.Millisecond))
	}
	obs.ready.Store(true)
	if m.readyFile != "" {
		if err := writeReadyFile(m.readyFile); err != nil {
			m.Close()
			return nil, fmt.Errorf("ready file: %w", err)
		}
	}
	log.Info("mounted", "mountpoint", mp, "stores", storeNames(ms), "cache", cfg.Cache.Dir, "allow_other", cfg.Mount.AllowOther, "publishers", access.Rule{UID: uid, GID: gid}.String())
	return m, nil
}

// mountStore is one store of a mount.
type mountStore struct {
	name  string
	store backend.Store
	live  *index.Live
	// require is the store's require_signoffs (0: none)
	require int
	// loadErr is the first load's failure (the store did not answer or its
	// index could not be read); nil also for a store without an index.
	loadErr error
}

// openStores opens every store of cfg and loads their indexes, in
// parallel: a store that does not answer delays the start by its own
// timeout at most, and the mount comes up without it (degraded) unless it
// is the publish store and publish.require_store is set.
func openStores(ctx context.Context, cfg config.Config, pub int, log *slog.Logger) ([]mountStore, error) {
	ms := make([]mountStore, len(cfg.Stores))
	for i, sc := range cfg.Stores {
		s, err := stores.Open(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", config.StoreName(sc), err)
		}
		ms[i] = mountStore{name: config.StoreName(sc), store: s, require: sc.RequireSignoffs,
			live: index.NewLive(s, index.LiveOptions{Interval: cfg.Index.RefreshInterval.Duration, MaxAge: cfg.Index.MaxAge.Duration, Logger: log.With("store", config.StoreName(sc))})}
	}
	var wg sync.WaitGroup
	for i := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i].loadErr = ms[i].live.LoadOnce(ctx)
		}()
	}
	wg.Wait()
	for i, s := range ms {
		switch err := s.loadErr; {
		case err == nil:
			// the live index logged it, with its size and how long it took
		case errors.Is(err, index.ErrNoIndex):
			s.loadErr = nil
			ms[i] = s
			log.Info("store has no index: names the indexed stores lack are probed in it", "store", s.name, "location", s.store.Location(), "negative_ttl", cfg.Index.NegativeTTL.Duration)
		case i == pub && cfg.Publish.RequireStore:
			return nil, fmt.Errorf("publish store %s (%s) does not answer and --require-publish-store is set: %w", s.name, s.store.Location(), err)
		default:
			log.Warn("store does not answer at start: the mount comes up without its objects (degraded) and keeps trying", "store", s.name, "location", s.store.Location(), "error", err)
		}
	}
	return ms, nil
}

// storePolicy loads the signature policy of a store with a keyring (nil
// without one).
func storePolicy(sc config.StoreConfig) (*view.Policy, error) {
	if sc.Keyring == "" {
		return nil, nil
	}
	kr, err := signing.LoadKeyring(sc.Keyring)
	if err != nil {
		return nil, fmt.Errorf("store %s: keyring: %w", config.StoreName(sc), err)
	}
	if n := len(kr.Keys()); sc.RequireSignoffs > n {
		return nil, fmt.Errorf("store %s: require_signoffs = %d, but the keyring %s holds %d keys: no object could ever be shown", config.StoreName(sc), sc.RequireSignoffs, sc.Keyring, n)
	}
	return &view.Policy{Keyring: kr, Require: sc.RequireSignoffs}, nil
}

// publishSigner loads the key the mount signs what it publishes with (nil
// without publish.sign_key). The error names the files, never the
// passphrase.
func publishSigner(pc config.PublishConfig) (*signing.SignKey, error) {
	if pc.SignKey == "" {
		return nil, nil
	}
	k, err := signing.LoadSigner(pc.SignKey, pc.SignPassphraseFile)
	if err != nil {
		return nil, fmt.Errorf("publish.sign_key: %w", err)
	}
	return k, nil
}

func storeNames(ms []mountStore) string {
	names := make([]string, len(ms))
	for i, s := range ms {
		names[i] = s.name
	}
	return strings.Join(names, ",")
}

// Close unmounts (lazily if the mount stays busy), then keeps uploading
// what is queued for up to the drain timeout, reports what is left (it stays
// queued on disk for the next start) and stops the background work.
func (m *Mount) Close() error {
	defer m.unlock()
	m.obs.ready.Store(false)
	if m.readyFile != "" {
		os.Remove(m.readyFile)
	}
	err := m.Unmount()
	m.Drain()
	// The background work (index refresh and compaction, the queue, the
	// journal's access records, prefetch, the listeners) stops before the
	// cache and the cache directory's lock go: nothing writes there after
	// Close returns.
	m.cancel()
	m.stopBackground()
	if m.reports != nil {
		m.reports.Close() // after Drain's flush: the file is empty unless a write failed
	}
	m.cache.Close()
	if ferr := m.fs.Close(); err == nil {
		err = ferr
	}
	return err
}

// background runs f until the mount's background context ends; Close waits
// for it.
func (m *Mount) background(f func()) {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		f()
	}()
}

// stopWait bounds how long Close waits for the background work to stop
// (each piece has deadlines of its own; this only keeps a stuck one from
// holding the process).
const stopWait = 30 * time.Second

func (m *Mount) stopBackground() {
	done := make(chan struct{})
	go func() { m.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopWait):
		m.log.Warn("background work did not stop in time; closing anyway", "waited", stopWait)
	}
}

// Drain keeps uploading what is queued for up to the drain timeout and
// reports what is left (it stays queued on disk for the next start).
func (m *Mount) Drain() {
	if n := m.queue.Len(); n > 0 {
		m.log.Info("uploading queued objects before exit", "objects", n, "drain_timeout", m.drain)
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.drain)
	defer cancel()
	left := m.queue.Drain(ctx)
	if err := m.journal.Flush(ctx); err != nil {
		m.log.Warn("access records not written to the journal", "error", err)
	}
	if len(left) == 0 {
		return
	}
	m.log.Warn("objects not uploaded yet; they stay queued and are uploaded at the next start", "objects", len(left), "queue", m.queue.Dir())
	for _, e := range left {
		m.log.Warn("not uploaded", "object", e.Key, "attempts", e.Attempts, "last_error", e.LastError)
	}
}

// Unmount unmounts, lazily if the mount stays busy, and waits for the FUSE
// server to stop.
func (m *Mount) Unmount() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	var err error
	for i := 0; i < 5; i++ {
		if err = m.server.Unmount(); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		m.log.Warn("mount busy, detaching it lazily", "mountpoint", m.mountpoint, "error", err)
		if derr := syscall.Unmount(m.mountpoint, syscall.MNT_DETACH); derr != nil {
			return fmt.Errorf("unmount %s: %w (lazy unmount: %v)", m.mountpoint, err, derr)
		}
	}
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("unmount %s: FUSE server did not stop", m.mountpoint)
	}
	return nil
}

// FUSEDevice is the kernel's FUSE device (a variable for tests).
var FUSEDevice = "/dev/fuse"

// checkFUSE fails with advice when the kernel's FUSE device cannot be used.
func checkFUSE() error {
	f, err := os.OpenFile(FUSEDevice, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("FUSE is unavailable: %w (install fuse3; in a container pass --device /dev/fuse and --cap-add SYS_ADMIN; as a non-root user /dev/fuse must be accessible to you)", err)
	}
	f.Close()
	return nil
}

// checkMountpoint returns the absolute mountpoint, refusing one that is not
// a directory or is already a mount.
func checkMountpoint(mp string) (string, error) {
	abs, err := filepath.Abs(mp)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return "", fmt.Errorf("mountpoint: %w", err)
		}
		fi, err = os.Stat(abs)
	}
	if errors.Is(err, syscall.ENOTCONN) {
		return "", fmt.Errorf("mountpoint %s is a stale FUSE mount (transport endpoint is not connected); run: fusermount3 -u %s", abs, abs)
	}
	if err != nil {
		return "", fmt.Errorf("mountpoint: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("mountpoint %s is not a directory", abs)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if fstype, _, ok := mountinfo.At(abs); ok {
		return "", fmt.Errorf("mountpoint %s is busy: a %s file system is already mounted there; unmount it first (fusermount3 -u %s)", abs, fstype, abs)
	}
	return abs, nil
}

// mountOwner is the owner of store objects: configured, else the mountpoint's.
func mountOwner(owner, mp string) (uint32, uint32, error) {
	if owner != "" {
		return config.ParseOwner(owner)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(mp, &st); err != nil {
		return 0, 0, fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	return st.Uid, st.Gid, nil
}

// claimCacheDir takes the cache directory for this mount: it must not be in
// use by another sstatefs, and its local overlay must belong to this store.
func claimCacheDir(dir string, sc config.StoreConfig) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o755); err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, "state", "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(lf.Name())
		lf.Close()
		return nil, fmt.Errorf("cache dir %s is in use by another sstatefs (pid %s); give each mount its own --cache-dir", dir, strings.TrimSpace(string(pid)))
	}
	lf.Truncate(0)
	fmt.Fprintf(lf, "%d\n", os.Getpid())
	unlock = func() { lf.Close() }

	owner := filepath.Join(dir, "state", "store")
	want := stores.Name(sc) + "\n"
	switch got, err := os.ReadFile(owner); {
	case err == nil && string(got) != want:
		unlock()
		return nil, fmt.Errorf("cache dir %s holds the local files of store %s, not %s; use another --cache-dir", dir, strings.TrimSpace(string(got)), stores.Name(sc))
	case errors.Is(err, os.ErrNotExist):
		if err := os.WriteFile(owner, []byte(want), 0o644); err != nil {
			unlock()
			return nil, fmt.Errorf("cache dir: %w", err)
		}
	case err != nil:
		unlock()
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	return unlock, nil
}

func prefetchWorkers(pc config.PrefetchConfig) int {
	if pc.Mode == "off" {
		return 0
	}
	return pc.Concurrency
}

// Mountpoint is where the store is mounted (absolute, without links).
func (m *Mount) Mountpoint() string { return m.mountpoint }

// Done is closed when the FUSE server stops serving (also when the mount
// is unmounted from outside).
func (m *Mount) Done() <-chan struct{} { return m.done }

// MetricsAddr is the address of the metrics endpoint, "" when off.
func (m *Mount) MetricsAddr() string { return m.metrics }

// HashservAddr is where the hash equivalence server listens, "" when off.
func (m *Mount) HashservAddr() string { return m.hsAddr }

// Cache is the mount's disk cache.
func (m *Mount) Cache() *cache.Cache { return m.cache }

// Live is the mount's live index.
func (m *Mount) Live() *index.Live { return m.live }

// Queue is the mount's upload queue.
func (m *Mount) Queue() *publish.Queue { return m.queue }

// View is the mount's view of the store.
func (m *Mount) View() *view.View { return m.view }

// SetHealthEvery sets how long /healthz reuses a check of the store
// (default 10s; tests set 0 to see a change at once).
func (m *Mount) SetHealthEvery(d time.Duration) {
	m.obs.healthMu.Lock()
	defer m.obs.healthMu.Unlock()
	m.obs.healthEvery = d
}
