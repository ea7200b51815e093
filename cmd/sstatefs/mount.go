package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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
	"github.com/sstatefs/sstatefs/publish"
	"github.com/sstatefs/sstatefs/view"
)

func cmdMount(args []string) int {
	c := newCommand("mount", "Usage: sstatefs mount [flags] MOUNTPOINT\n\nMounts the store as an SSTATE_DIR and serves it in the foreground until SIGINT or SIGTERM.")
	if !c.parse(args, 1, 1, nil) {
		return 2
	}
	log := c.logger()
	ctx, stop := c.signalContext()
	defer stop()
	m, err := startMount(ctx, c.cfg, c.arg(0), log)
	if err != nil {
		return c.fail(err)
	}
	select {
	case <-ctx.Done():
		log.Info("signal received, unmounting", "mountpoint", m.mountpoint)
	case <-m.done:
		log.Info("unmounted from outside", "mountpoint", m.mountpoint)
	}
	if err := m.close(); err != nil {
		log.Error("unmount", "error", err)
		return 1
	}
	return 0
}

// newLogger logs to stderr as text or JSON; it remembers the last warnings
// and errors for `sstatefs status`.
func newLogger(lc config.LogConfig) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(lc.Level))
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if lc.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(&recentErrors{Handler: h, ring: &errorRing{}})
}

// ringOf returns the error ring of a logger made by newLogger (a fresh one
// for other loggers, e.g. in tests).
func ringOf(log *slog.Logger) *errorRing {
	if r, ok := log.Handler().(*recentErrors); ok {
		return r.ring
	}
	return &errorRing{}
}

// mounted is a running mount.
type mounted struct {
	mountpoint string
	server     *fuse.Server
	fs         *sfs.FS
	live       *index.Live
	cache      *cache.Cache
	store      backend.Store
	queue      *publish.Queue
	journal    *index.Journal
	view       *view.View
	obs        *observer
	hashserv   *hashserv.Server // nil unless --hashserv
	hsAddr     string           // where hashserv listens
	cacheDir   string
	readyFile  string
	metrics    string // address of the metrics endpoint, "" when off
	drain      time.Duration
	cancel     context.CancelFunc
	done       chan struct{} // closed when the FUSE server stops serving
	log        *slog.Logger
	unlock     func()
}

// cacheClock is the clock of the cache's back-off of failed downloads;
// tests move it instead of sleeping.
var cacheClock = time.Now

// startMount composes the stack for the first store and mounts it.
func startMount(ctx context.Context, cfg config.Config, mountpoint string, log *slog.Logger) (m *mounted, err error) {
	mp, err := checkMountpoint(mountpoint)
	if err != nil {
		return nil, err
	}
	if err := checkFUSE(); err != nil {
		return nil, err
	}
	sc := cfg.Stores[0]
	if len(cfg.Stores) > 1 {
		log.Warn("only the first store is served; the others are ignored for now", "store", storeName(sc))
	}
	uid, gid, err := mountOwner(cfg.Mount.Owner, mp)
	if err != nil {
		return nil, err
	}
	unlock, err := claimCacheDir(cfg.Cache.Dir, sc)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	store, err := openStore(ctx, sc)
	if err != nil {
		return nil, err
	}
	obs := newObserver(ringOf(log), cfg.Cache.Size.Bytes)
	c, err := cache.Open(cache.Options{Dir: filepath.Join(cfg.Cache.Dir, "cache"), MaxBytes: cfg.Cache.Size.Bytes, Logger: log, OnFetch: obs.onFetch, Now: cacheClock})
	if err != nil {
		return nil, err
	}
	live := index.NewLive(store, index.LiveOptions{Interval: cfg.Index.RefreshInterval.Duration, MaxAge: cfg.Index.MaxAge.Duration, Logger: log})
	switch err := live.LoadOnce(ctx); {
	case err == nil:
		// the live index logged it, with its size and how long it took
	case errors.Is(err, index.ErrNoIndex):
		log.Info("store has no index: lookups probe the store", "store", store.Location(), "negative_ttl", cfg.Index.NegativeTTL.Duration)
	default:
		log.Warn("index not loaded, lookups probe the store until it loads", "store", store.Location(), "error", err)
	}
	// The write path: published objects go to a durable queue, are uploaded
	// in the background and recorded in this mount's journal segments.
	readOnly := backend.IsReadOnly(store)
	journal := index.NewJournal(store, index.JournalOptions{Writer: cfg.Publish.WriterID, Logger: log})
	journal.OnWrite(live.Apply) // this mount's publications show in its own index at once
	if !readOnly {
		index.InitEmpty(ctx, store, live, log)
	}
	queue, err := publish.Open(publish.Options{
		Dir: filepath.Join(cfg.Cache.Dir, "queue"), Store: store, Recorder: journal,
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
	if readOnly {
		log.Info("store is read-only: objects bitbake publishes stay in the local overlay", "store", store.Location())
	}
	var onAccess func(string, time.Time)
	if !readOnly {
		onAccess = journal.Accessed
	}
	v := view.New(view.Options{
		Store:           store,
		Index:           live,
		Cache:           c,
		Probes:          cache.NewStatCache(100_000, cfg.Index.RefreshInterval.Duration, cfg.Index.NegativeTTL.Duration),
		Logger:          log,
		OnAccess:        onAccess,
		PrefetchWorkers: prefetchWorkers(cfg.Prefetch),
	})
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
	go live.Run(rctx)
	go queue.Run(rctx)
	go journal.Run(rctx)
	go v.RunPrefetch(rctx)
	if !readOnly && cfg.Index.CompactInterval.Duration > 0 {
		go index.CompactEvery(rctx, store, live, cfg.Index.CompactInterval.Duration,
			index.CompactOptions{Grace: index.DefaultGrace, Writer: cfg.Publish.WriterID, Logger: log})
	}
	m = &mounted{
		mountpoint: mp, server: server, fs: f, live: live, cache: c, store: store,
		queue: queue, journal: journal, view: v, obs: obs, cacheDir: cfg.Cache.Dir,
		readyFile: cfg.Mount.ReadyFile, drain: cfg.Publish.DrainTimeout.Duration,
		cancel: cancel, done: make(chan struct{}), log: log, unlock: unlock,
	}
	go func() { server.Wait(); close(m.done) }()
	// who may change the store through the hash equivalence server and ask
	// the mount to act: the publish rule, with the mount owner
	rule := access.Rule{UID: uid, GID: gid}
	if cfg.Hashserv.Listen != "" {
		owner, err := hashservSocket(cfg.Hashserv, uid, gid)
		if err != nil {
			m.close()
			return nil, err
		}
		hs, addr, err := startHashserv(rctx, cfg.Hashserv.Listen, &equivBackend{live: live, journal: journal}, readOnly || cfg.Hashserv.ReadOnly, owner, rule, log)
		if err != nil {
			m.close()
			return nil, err
		}
		m.hashserv, m.hsAddr = hs, addr
		log.Info("serving hash equivalence", "addr", addr, "equivalences", live.Current().NumEquivalences(), "may_record", rule.String())
	}
	obs.attach(m)
	obs.actions = rule
	if ln, err := listenControl(cfg.Cache.Dir, uid, gid); err != nil {
		log.Warn("no control socket: `sstatefs status` shows only the queue on disk", "error", err)
	} else {
		go serveHTTP(rctx, ln, obs.controlHandler(), log)
	}
	if cfg.Metrics.Addr != "" {
		ln, err := net.Listen("tcp", cfg.Metrics.Addr)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("--metrics-addr %s: %w", cfg.Metrics.Addr, err)
		}
		m.metrics = ln.Addr().String()
		log.Info("serving metrics and health", "addr", m.metrics, "paths", "/metrics /healthz /readyz /status")
		warnExposedMetrics(log, cfg.Metrics.Addr, ln.Addr())
		go serveHTTP(rctx, ln, obs.handler(), log)
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
			m.close()
			return nil, fmt.Errorf("ready file: %w", err)
		}
	}
	log.Info("mounted", "mountpoint", mp, "store", store.Location(), "cache", cfg.Cache.Dir, "allow_other", cfg.Mount.AllowOther, "publishers", access.Rule{UID: uid, GID: gid}.String())
	return m, nil
}

// close unmounts (lazily if the mount stays busy), then keeps uploading
// what is queued for up to the drain timeout, reports what is left (it stays
// queued on disk for the next start) and stops the background work.
func (m *mounted) close() error {
	defer m.unlock()
	defer m.cancel()
	m.obs.ready.Store(false)
	if m.readyFile != "" {
		os.Remove(m.readyFile)
	}
	err := m.unmount()
	m.drainQueue()
	m.cache.Close()
	if ferr := m.fs.Close(); err == nil {
		err = ferr
	}
	return err
}

func (m *mounted) drainQueue() {
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

func (m *mounted) unmount() error {
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

// fuseDevice is the kernel's FUSE device (a variable for tests).
var fuseDevice = "/dev/fuse"

// checkFUSE fails with advice when the kernel's FUSE device cannot be used.
func checkFUSE() error {
	f, err := os.OpenFile(fuseDevice, os.O_RDWR, 0)
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
	want := storeName(sc) + "\n"
	switch got, err := os.ReadFile(owner); {
	case err == nil && string(got) != want:
		unlock()
		return nil, fmt.Errorf("cache dir %s holds the local files of store %s, not %s; use another --cache-dir", dir, strings.TrimSpace(string(got)), storeName(sc))
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
