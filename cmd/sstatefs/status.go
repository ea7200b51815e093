package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sstatefs/sstatefs/publish"
)

// Status is what `sstatefs status` reports about the mount that owns a
// cache directory, read from that directory.
type Status struct {
	CacheDir string          `json:"cache_dir"`
	Store    string          `json:"store"`
	PID      int             `json:"pid,omitempty"`
	Running  bool            `json:"running"`
	Queue    QueueStatus     `json:"queue"`
	Entries  []publish.Entry `json:"entries"`
}

// QueueStatus summarises the upload queue.
type QueueStatus struct {
	Pending      int   `json:"pending"`       // waiting for an upload
	Uploaded     int   `json:"uploaded"`      // in the store, waiting for the journal
	Failing      int   `json:"failing"`       // at least one failed attempt
	PendingBytes int64 `json:"pending_bytes"` // bytes still to upload
}

func cmdStatus(args []string) int {
	fset := flag.NewFlagSet("status", flag.ContinueOnError)
	cf := newConfigFlags(fset)
	asJSON := fset.Bool("json", false, "print JSON")
	fset.Usage = func() {
		fmt.Fprintf(fset.Output(), "Usage: sstatefs status [flags]\n\nShows the upload queue of the mount that uses --cache-dir (running or not): what is pending,\nwhat waits for the index journal and what failed, with the last error.\n\nFlags:\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return 2
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs status: %v\n", err)
		return 2
	}
	st, err := readStatus(cfg.Cache.Dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sstatefs status: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(st)
		return 0
	}
	printStatus(os.Stdout, st, time.Now())
	return 0
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
	for _, e := range st.Entries {
		switch e.State {
		case publish.Uploaded:
			st.Queue.Uploaded++
		default:
			st.Queue.Pending++
			st.Queue.PendingBytes += e.Size
		}
		if e.Attempts > 0 {
			st.Queue.Failing++
		}
	}
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
		st.Queue.Pending, humanBytes(st.Queue.PendingBytes), st.Queue.Uploaded, st.Queue.Failing)
	for _, e := range st.Entries {
		line := fmt.Sprintf("  %-8s %s (%s, queued %s ago)", e.State, e.Key, humanBytes(e.Size), now.Sub(e.Enqueued).Round(time.Second))
		if e.Attempts > 0 {
			line += fmt.Sprintf("\n           %d failed attempts, last: %s", e.Attempts, e.LastError)
			if !e.NextTry.IsZero() {
				line += fmt.Sprintf("; next try in %s", e.NextTry.Sub(now).Round(time.Second))
			}
		}
		fmt.Fprintln(w, line)
	}
}
