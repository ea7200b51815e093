package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/internal/mountinfo"
	"github.com/sstatefs/sstatefs/internal/units"
	"github.com/sstatefs/sstatefs/publish"
)

// Status is what `sstatefs status` reports about the mount that owns a
// cache directory, read from that directory.
type Status struct {
	CacheDir string            `json:"cache_dir"`
	Store    string            `json:"store"`
	PID      int               `json:"pid,omitempty"`
	Running  bool              `json:"running"`
	Queue    mount.QueueStatus `json:"queue"`
	Entries  []publish.Entry   `json:"entries"`
}

func cmdStatus(args []string) int {
	c := newCommand("status", `Usage: sstatefs status [flags] [MOUNTPOINT]

Shows the live state of a running mount (stores, index age and size, cache use, lookups, upload
queue, recent errors), asked over its control socket. MOUNTPOINT names the mount; without it,
the mount using --cache-dir. When no mount is running there, it shows the upload queue left on
disk.`, "cache.dir")
	asJSON := c.flags.Bool("json", false, "print JSON")
	if !c.parse(args, 0, 1, nil) {
		return 2
	}
	cacheDir := c.cfg.Cache.Dir
	if c.flags.NArg() == 1 {
		mp, _ := filepath.Abs(c.arg(0))
		if real, err := filepath.EvalSymlinks(mp); err == nil {
			mp = real
		}
		fstype, source, ok := mountinfo.At(mp)
		if !ok || fstype != "fuse" && fstype != "fuse.sstatefs" {
			fmt.Fprintf(os.Stderr, "sstatefs status: %s is not an sstatefs mount\n", mp)
			return 1
		}
		cacheDir = source
	}
	if live, err := askStatus(cacheDir); err == nil {
		if *asJSON {
			printJSON(os.Stdout, live)
		} else {
			printLiveStatus(os.Stdout, live, time.Now())
		}
		return 0
	}
	st, err := readStatus(cacheDir)
	if err != nil {
		return c.fail(err)
	}
	if *asJSON {
		printJSON(os.Stdout, st)
		return 0
	}
	printStatus(os.Stdout, st, time.Now())
	return 0
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// askStatus asks a running mount over its control socket.
func askStatus(cacheDir string) (mount.LiveStatus, error) {
	var st mount.LiveStatus
	sock := mount.ControlSocket(cacheDir)
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	resp, err := client.Get("http://sstatefs/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("control socket %s: %s", sock, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func printLiveStatus(w io.Writer, st mount.LiveStatus, now time.Time) {
	ready := "ready"
	if !st.Ready {
		ready = "not ready"
	}
	fmt.Fprintf(w, "mount:    %s (pid %d, up %s, %s)\n", st.Mountpoint, st.PID, st.Uptime, ready)
	for i, s := range st.Stores {
		printStoreStatus(w, i, s, len(st.Stores) > 1)
	}
	fmt.Fprintf(w, "cache:    %s\n", st.CacheDir)
	if st.Index.Loaded {
		fresh := "fresh"
		if !st.Index.Fresh {
			fresh = "STALE"
		}
		fmt.Fprintf(w, "index:    %d objects (%s), %d equivalences, loaded %s ago (%s), %d journal segments applied\n",
			st.Index.Objects, units.Bytes(st.Index.Bytes), st.Index.Equivalences, st.Index.Age, fresh, st.Index.Segments)
	} else {
		fmt.Fprintf(w, "index:    none loaded: lookups probe the store\n")
	}
	fmt.Fprintf(w, "disk:     %s of %s in %d objects; %d hits, %d misses, %d evictions, %d failed verification, %s fetched\n",
		units.Bytes(st.Cache.Bytes), units.Bytes(st.Cache.Limit), st.Cache.Entries, st.Cache.Hits, st.Cache.Misses, st.Cache.Evictions, st.Cache.Corrupted, units.Bytes(st.Cache.FetchedBytes))
	if st.Cache.DiskSize > 0 {
		note := ""
		if st.Cache.Limit > st.Cache.DiskSize {
			note = " (smaller than the cache size: the free space bounds the cache)"
		}
		fmt.Fprintf(w, "          file system of %s, %s free%s\n", units.Bytes(st.Cache.DiskSize), units.Bytes(st.Cache.DiskFree), note)
	}
	if len(st.Cache.BackedOff) > 0 || st.Cache.Refused > 0 {
		fmt.Fprintf(w, "held back: %d objects whose last download failed, not retried until their back-off ends; %d opens refused meanwhile\n", len(st.Cache.BackedOff), st.Cache.Refused)
		for _, b := range st.Cache.BackedOff {
			fmt.Fprintf(w, "  %s\n           %d failed, next attempt in %s (%s): %s\n", b.Name, b.Failures,
				max(0, b.Until.Sub(now)).Round(time.Second), b.Until.Format(time.RFC3339), b.Reason)
		}
	}
	fmt.Fprintf(w, "lookups:  %d present, %d absent, %d store probes (%d failed)\n", st.Lookups.Hits+st.Lookups.ProbeHits, st.Lookups.Misses, st.Lookups.Probes, st.Lookups.ProbeErrors)
	fmt.Fprintf(w, "uploads:  %d pending (%s), %d waiting for the index journal, %d failing; %d uploaded (%s), %d kept by the store (other content), %d dropped (file changed after publication), %d failed attempts\n",
		st.Queue.Pending, units.Bytes(st.Queue.PendingBytes), st.Queue.Uploaded, st.Queue.Failing,
		st.Uploads.Uploaded, units.Bytes(st.Uploads.UploadedBytes), st.Uploads.Conflicts, st.Uploads.Changed, st.Uploads.Failures)
	if st.Uploads.Signed > 0 || st.Uploads.SignFailures > 0 {
		fmt.Fprintf(w, "sign-offs: %d recorded for published archives, %d archives published unsigned (signing failed)\n", st.Uploads.Signed, st.Uploads.SignFailures)
	}
	printEntries(w, st.Entries, now)
	if len(st.Errors) > 0 {
		fmt.Fprintf(w, "recent warnings and errors:\n")
		for _, e := range st.Errors {
			fmt.Fprintf(w, "  %s %-5s %s %s\n", e.Time.Format(time.RFC3339), e.Level, e.Message, e.Attrs)
		}
	}
}

// printStoreStatus prints a store's line: name, location, role, state,
// and with several stores its own index and counters.
func printStoreStatus(w io.Writer, i int, s mount.StoreStatus, several bool) {
	role := ""
	if s.Publish {
		role = ", publish store"
	}
	state := ""
	if s.Down {
		state = fmt.Sprintf(", DOWN since %s: %s", s.DownSince.Format(time.RFC3339), s.LastError)
	}
	fmt.Fprintf(w, "store %d:  %s (%s%s%s)\n", i+1, s.Name, s.Location, role, state)
	if !several && s.RequireSignoffs == 0 {
		return
	}
	ix := "no index: probed"
	if s.Index.Loaded {
		fresh := "fresh"
		if !s.Index.Fresh {
			fresh = "STALE"
		}
		ix = fmt.Sprintf("index %d objects (%s), %d equivalences, loaded %s ago (%s)", s.Index.Objects, units.Bytes(s.Index.Bytes), s.Index.Equivalences, s.Index.Age, fresh)
	}
	fmt.Fprintf(w, "          %s; %d names served, %d resolved, %d probes (%d found, %d failed), %s fetched, %d failed downloads\n",
		ix, s.Hits, s.Resolved, s.Probes, s.ProbeHits, s.ProbeErrors, units.Bytes(s.FetchedBytes), s.FetchErrors)
	if s.RefreshError != "" {
		fmt.Fprintf(w, "          index refresh failing: %s\n", s.RefreshError)
	}
	if s.RequireSignoffs > 0 {
		fmt.Fprintf(w, "          signatures: %d sign-offs required; %d archives verified, hidden: %d unsigned, %d bad signature\n",
			s.RequireSignoffs, s.Verified, s.HiddenUnsigned, s.HiddenBadSignature)
	}
}

func readStatus(dir string) (Status, error) {
	st := Status{CacheDir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "state", "store"))
	if err != nil {
		return st, fmt.Errorf("%s is not the cache directory of a mount (%v)", dir, err)
	}
	st.Store = strings.TrimSpace(string(b))
	if b, err := os.ReadFile(filepath.Join(dir, "state", "lock")); err == nil {
		st.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	st.Running = st.PID > 0 && lockHeld(filepath.Join(dir, "state", "lock"))
	st.Entries, err = publish.ReadEntries(filepath.Join(dir, "queue"))
	if err != nil {
		return st, err
	}
	st.Queue = mount.SummarizeQueue(st.Entries)
	if st.Entries == nil {
		st.Entries = []publish.Entry{}
	}
	return st, nil
}

// lockHeld tells whether a process holds the mount's lock on the cache dir.
func lockHeld(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

func printStatus(w io.Writer, st Status, now time.Time) {
	state := "not running"
	if st.Running {
		state = fmt.Sprintf("running (pid %d)", st.PID)
	}
	fmt.Fprintf(w, "store:   %s\n", st.Store)
	fmt.Fprintf(w, "cache:   %s\n", st.CacheDir)
	fmt.Fprintf(w, "mount:   %s\n", state)
	fmt.Fprintf(w, "uploads: %d pending (%s), %d waiting for the index journal, %d failing\n",
		st.Queue.Pending, units.Bytes(st.Queue.PendingBytes), st.Queue.Uploaded, st.Queue.Failing)
	printEntries(w, st.Entries, now)
}

func printEntries(w io.Writer, entries []publish.Entry, now time.Time) {
	for _, e := range entries {
		line := fmt.Sprintf("  %-8s %s (%s, queued %s ago)", e.State, e.Key, units.Bytes(e.Size), now.Sub(e.Enqueued).Round(time.Second))
		if e.Attempts > 0 {
			line += fmt.Sprintf("\n           %d failed attempts, last: %s", e.Attempts, e.LastError)
			if !e.NextTry.IsZero() {
				line += fmt.Sprintf("; next try in %s", e.NextTry.Sub(now).Round(time.Second))
			}
		}
		fmt.Fprintln(w, line)
	}
}
