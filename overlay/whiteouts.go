package overlay

import (
	"fmt"
	"os"
	"sync"
)

// whiteouts are the store objects and directories hidden through the mount
// (unlink, rmdir, a rename away), kept in a file so that they stay hidden
// after a restart.
type whiteouts struct {
	mu   sync.Mutex // protects set, and the file at path (rewritten whole)
	set  map[string]bool
	path string
}

func openWhiteouts(p string) (*whiteouts, error) {
	w := &whiteouts{set: map[string]bool{}, path: p}
	data, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("reading whiteouts: %w", err)
	}
	for _, line := range splitLines(string(data)) {
		w.set[line] = true
	}
	return w, nil
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

func (w *whiteouts) has(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.set[key]
}

// add hides key. When the file cannot be written, key stays hidden until
// the mount ends and the error says that it will not stay hidden after.
func (w *whiteouts) add(key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.set[key] {
		return nil
	}
	w.set[key] = true
	return w.saveLocked()
}

// remove shows key again. When the file cannot be written, key shows until
// the mount ends and the error says that it will be hidden again after.
func (w *whiteouts) remove(key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.set[key] {
		return nil
	}
	delete(w.set, key)
	return w.saveLocked()
}

// saveLocked rewrites the file atomically; whiteouts are rare (cleanup
// tools), so a rewrite per change is cheap enough.
func (w *whiteouts) saveLocked() error {
	var b []byte
	for k := range w.set {
		b = append(b, k...)
		b = append(b, '\n')
	}
	tmp := w.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("saving whiteouts: %w", err)
	}
	if err := os.Rename(tmp, w.path); err != nil {
		return fmt.Errorf("saving whiteouts: %w", err)
	}
	return nil
}
