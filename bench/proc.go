package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sstatefs/sstatefs/internal/mountinfo"
)

// Proc is a child process with its output in a log file. It runs in its
// own process group, so a Ctrl-C in the terminal reaches only the
// benchmark, which then stops it in order (unmount first).
type Proc struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartProc starts argv with env added to (or, for "KEY" without "=",
// removed from) the benchmark's environment.
func StartProc(name, logFile string, env []string, argv ...string) (*Proc, error) {
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = mergeEnv(os.Environ(), env)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logFile, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// mergeEnv applies changes ("K=V" sets, "K" unsets) to base.
func mergeEnv(base, changes []string) []string {
	out := make([]string, 0, len(base)+len(changes))
	drop := map[string]bool{}
	for _, c := range changes {
		k, _, _ := strings.Cut(c, "=")
		drop[k] = true
	}
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if !drop[k] {
			out = append(out, kv)
		}
	}
	for _, c := range changes {
		if strings.Contains(c, "=") {
			out = append(out, c)
		}
	}
	return out
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to d for the process to end on its own.
func (p *Proc) Wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	syscall.Kill(-p.Pid(), syscall.SIGTERM)
	if !p.Wait(grace) {
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
	}
}

// Tail is the end of the process's output, for error messages.
func (p *Proc) Tail() string {
	b, _ := os.ReadFile(p.Log)
	b = bytes.TrimSpace(b)
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	if len(b) == 0 {
		return p.Name + " printed nothing"
	}
	return p.Name + " said: " + string(b)
}

// PeakRSS is VmHWM of the process: the most resident memory it has had,
// in bytes, or 0 when it is gone.
func (p *Proc) PeakRSS() int64 {
	return vmHWM(p.Pid())
}

// CPUTime is the user and system time the process has used so far.
func (p *Proc) CPUTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			f := strings.Fields(v) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// isMounted reports whether dir is a mount point (in this namespace).
func isMounted(dir string) bool {
	_, _, ok := mountinfo.At(dir)
	return ok
}

// FUSEMount is a FUSE file system served by a child process: sstatefs,
// rclone mount or s3fs, all in the foreground.
type FUSEMount struct {
	dir  string
	proc *Proc
	peak int64
	cpu  time.Duration
	once sync.Once
	err  error
}

// StartFUSE starts argv, which mounts at dir, and waits until the mount is
// there (or the process exits, or timeout).
func StartFUSE(ctx context.Context, name, dir, logFile string, env []string, timeout time.Duration, argv ...string) (*FUSEMount, error) {
	p, err := StartProc(name, logFile, env, argv...)
	if err != nil {
		return nil, err
	}
	m := &FUSEMount{dir: dir, proc: p}
	deadline := time.Now().Add(timeout)
	for !isMounted(dir) {
		if p.Exited() {
			return nil, fmt.Errorf("%s exited without mounting %s: %s", name, dir, p.Tail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			m.Unmount()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%s did not mount %s within %v: %s", name, dir, timeout, p.Tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m, nil
}

// Root is the mount point.
func (m *FUSEMount) Root() string { return m.dir }

// PeakRSS is the mount process's VmHWM: read live while it runs, and the
// last value read before the unmount afterwards.
func (m *FUSEMount) PeakRSS() int64 {
	if v := m.proc.PeakRSS(); v > 0 {
		m.peak = max(m.peak, v)
	}
	return m.peak
}

// CPUTime is the CPU time the mount process used: live while it runs,
// the last value read before the unmount afterwards.
func (m *FUSEMount) CPUTime() time.Duration {
	if v := m.proc.CPUTime(); v > 0 {
		m.cpu = max(m.cpu, v)
	}
	return m.cpu
}

// Unmount unmounts (fusermount3 -u, lazily if the mount is busy) and waits
// for the process to exit, stopping it if it does not. It runs once; later
// calls return the first result.
func (m *FUSEMount) Unmount() error {
	m.once.Do(func() {
		m.PeakRSS()
		m.CPUTime()
		if isMounted(m.dir) {
			if err := unmount(m.dir, false); err != nil {
				m.err = err
				if err2 := unmount(m.dir, true); err2 == nil {
					m.err = nil
				}
			}
		}
		// sstatefs finishes uploads before it exits; the others just go.
		if !m.proc.Wait(15 * time.Second) {
			m.proc.Stop(5 * time.Second)
		}
		if isMounted(m.dir) { // the process died without unmounting
			unmount(m.dir, true)
		}
	})
	return m.err
}

// unmount detaches a FUSE mount: fusermount3 (or fusermount), else
// umount(2), lazily (MNT_DETACH) if asked.
func unmount(dir string, lazy bool) error {
	for _, tool := range []string{"fusermount3", "fusermount"} {
		if path, err := exec.LookPath(tool); err == nil {
			args := []string{"-u"}
			if lazy {
				args = append(args, "-z")
			}
			out, err := exec.Command(path, append(args, dir)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s %s %s: %v: %s", tool, strings.Join(args, " "), dir, err, bytes.TrimSpace(out))
			}
			return nil
		}
	}
	flags := 0
	if lazy {
		flags = syscall.MNT_DETACH
	}
	if err := syscall.Unmount(dir, flags); err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	return nil
}

// fuseUsable says why FUSE mounts cannot be made here, or nil.
func fuseUsable() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("no usable /dev/fuse (%v): run as root with fuse3 installed (apt-get install -y fuse3)", err)
	}
	f.Close()
	return nil
}

// dropCaches empties the page cache so that a cold run reads from the
// store, not from memory. It needs root; without it the runs are only as
// cold as a fresh cache directory makes them (the caller says so once).
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// Cleanup is a stack of undo functions, run once, in reverse order, by
// whoever gets there first: the normal end of main or a signal.
type Cleanup struct {
	mu    sync.Mutex // protects fns and order of running them
	fns   []cleanupFn
	seq   int
	runMu sync.Mutex // held while running, so a second caller waits
}

type cleanupFn struct {
	id   int
	name string
	fn   func()
}

// Add registers fn and returns a function that runs it now (once) and
// takes it off the stack.
func (c *Cleanup) Add(name string, fn func()) (runNow func()) {
	c.mu.Lock()
	c.seq++
	id := c.seq
	var once sync.Once
	wrapped := func() { once.Do(fn) }
	c.fns = append(c.fns, cleanupFn{id: id, name: name, fn: wrapped})
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		for i, f := range c.fns {
			if f.id == id {
				c.fns = append(c.fns[:i], c.fns[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
		wrapped()
	}
}

// Run runs every registered function, last first.
func (c *Cleanup) Run() {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	for {
		c.mu.Lock()
		if len(c.fns) == 0 {
			c.mu.Unlock()
			return
		}
		f := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		c.mu.Unlock()
		f.fn()
	}
}

// Pending names what is still to be cleaned up.
func (c *Cleanup) Pending() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, f := range c.fns {
		out = append(out, f.name)
	}
	return out
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the sstatefs module (go env GOMOD is empty): run from the repository")
	}
	return filepath.Dir(mod), nil
}
