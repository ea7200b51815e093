package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"
)

// Role is what a system stands for in the comparison.
type Role int

const (
	RoleMount Role = iota // a FUSE file system: sstatefs and its peers
	RoleS3                // the plain S3 client: the network-bound reference
	RoleDisk              // the local disk: the reference for local work
)

// Target is what workloads operate on: paths relative to SSTATE_DIR (the
// bucket's keys).
type Target interface {
	// Stat reports whether key exists.
	Stat(ctx context.Context, key string) (bool, error)
	// Open opens key for a sequential read.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// Publish writes an object and its .siginfo the way the system
	// publishes: bitbake's temp file + hard link on a file system, PUT on S3.
	Publish(ctx context.Context, key string, data, siginfo []byte) error
}

// Mounted is one fresh instance of a system: a mount on a new cache
// directory, or a new client with no open connections.
type Mounted interface {
	Target
	// PeakRSS is the peak resident memory (VmHWM) of the mount process in
	// bytes, 0 where there is no such process.
	PeakRSS() int64
	// Unmount ends the instance: unmount, stop the process.
	Unmount() error
}

// System is something the benchmark measures.
type System interface {
	Name() string
	Role() Role
	// Available says why the system cannot run here (and what to install),
	// or nil.
	Available() error
	// Version identifies what was measured, for the report.
	Version() string
	// Mount starts a fresh instance, with its files below dir (a new,
	// empty directory).
	Mount(ctx context.Context, env *Env, dir string) (Mounted, error)
}

// mountTimeout bounds how long a mount may take to appear.
const mountTimeout = 30 * time.Second

// fuseMounted is a FUSE mount as a Mounted.
type fuseMounted struct {
	dirTarget
	*FUSEMount
}

func newFuseMounted(m *FUSEMount) Mounted {
	return fuseMounted{dirTarget{root: m.Root()}, m}
}

// --- sstatefs ---

type sstatefsSystem struct {
	root    string // the module's directory
	bin     string // built from the tree by Bench.buildSstatefs
	version string
	extra   []string // more flags for sstatefs mount (--sstatefs-flags)
	// timeout bounds the wait for the mount (0: mountTimeout); the farm
	// measures mounts whose start can take longer.
	timeout time.Duration
}

func (s *sstatefsSystem) Name() string     { return "sstatefs" }
func (s *sstatefsSystem) Role() Role       { return RoleMount }
func (s *sstatefsSystem) Version() string  { return s.version }
func (s *sstatefsSystem) Available() error { return fuseUsable() }

// Mount: sstatefs mount --store s3://BUCKET --store-endpoint http://PROXY
// --store-path-style --cache-dir FRESH MNT. AWS_CA_BUNDLE stays: sstatefs
// loads it into its transport.
func (s *sstatefsSystem) Mount(ctx context.Context, env *Env, dir string) (Mounted, error) {
	mnt, cache := filepath.Join(dir, "mnt"), filepath.Join(dir, "cache")
	if err := mkdirs(mnt, cache); err != nil {
		return nil, err
	}
	args := []string{s.bin, "mount",
		"--config", env.EmptyConfig,
		"--store", "s3://" + env.Bucket,
		"--store-endpoint", "http://" + env.Proxy.Addr,
		"--store-path-style",
		"--cache-dir", cache,
		"--publish-writer-id", "bench",
		"--publish-drain-timeout", "10s"}
	args = append(append(args, s.extra...), mnt)
	timeout := mountTimeout
	if s.timeout > 0 {
		timeout = s.timeout
	}
	m, err := StartFUSE(ctx, "sstatefs", mnt, filepath.Join(dir, "sstatefs.log"), env.awsEnv(), timeout, args...)
	if err != nil {
		return nil, err
	}
	return newFuseMounted(m), nil
}

// --- rclone ---

type rcloneSystem struct {
	extra []string // more flags for rclone mount (--rclone-flags)
}

func (r *rcloneSystem) Name() string { return "rclone" }
func (r *rcloneSystem) Role() Role   { return RoleMount }
func (r *rcloneSystem) Available() error {
	if _, err := exec.LookPath("rclone"); err != nil {
		return errors.New("rclone not found; install it with: apt-get install -y rclone")
	}
	return fuseUsable()
}
func (r *rcloneSystem) Version() string { return toolVersion("rclone", "version") }

// Mount: rclone mount bench:BUCKET MNT --vfs-cache-mode full --cache-dir
// FRESH, the remote configured by RCLONE_CONFIG_BENCH_* (provider Other,
// endpoint the proxy). rclone's S3 SDK refuses AWS_CA_BUNDLE with its own
// transport ("unable to load custom CA bundle"), so the bundle is passed
// as --ca-cert instead (irrelevant for the http endpoint, but kept as a
// user would have to).
func (r *rcloneSystem) Mount(ctx context.Context, env *Env, dir string) (Mounted, error) {
	mnt, cache := filepath.Join(dir, "mnt"), filepath.Join(dir, "cache")
	if err := mkdirs(mnt, cache); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "rclone.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		return nil, err
	}
	vars := []string{
		"RCLONE_CONFIG_BENCH_TYPE=s3",
		"RCLONE_CONFIG_BENCH_PROVIDER=Other",
		"RCLONE_CONFIG_BENCH_ENV_AUTH=false",
		"RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=" + env.Server.AccessKey,
		"RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=" + env.Server.SecretKey,
		"RCLONE_CONFIG_BENCH_REGION=" + env.Server.Region,
		"RCLONE_CONFIG_BENCH_ENDPOINT=http://" + env.Proxy.Addr,
		"RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true",
		"AWS_CA_BUNDLE",
	}
	args := []string{"rclone", "mount", "bench:" + env.Bucket, mnt,
		"--config", conf,
		"--vfs-cache-mode", "full",
		"--cache-dir", cache,
	}
	if ca := os.Getenv("AWS_CA_BUNDLE"); ca != "" {
		args = append(args, "--ca-cert", ca)
	}
	args = append(args, r.extra...)
	m, err := StartFUSE(ctx, "rclone", mnt, filepath.Join(dir, "rclone.log"), vars, mountTimeout, args...)
	if err != nil {
		return nil, err
	}
	return newFuseMounted(m), nil
}

// --- s3fs ---

type s3fsSystem struct {
	extra []string // more -o options (--s3fs-options)
}

func (s *s3fsSystem) Name() string { return "s3fs" }
func (s *s3fsSystem) Role() Role   { return RoleMount }
func (s *s3fsSystem) Available() error {
	if _, err := exec.LookPath("s3fs"); err != nil {
		return errors.New("s3fs not found; install it with: apt-get install -y s3fs")
	}
	return fuseUsable()
}
func (s *s3fsSystem) Version() string { return toolVersion("s3fs", "--version") }

// Mount: s3fs BUCKET MNT -f -o passwd_file=F,url=http://PROXY,
// use_path_request_style,use_cache=FRESH (without use_cache s3fs keeps no
// local copy, and a warm restore would fetch everything again).
func (s *s3fsSystem) Mount(ctx context.Context, env *Env, dir string) (Mounted, error) {
	mnt, cache := filepath.Join(dir, "mnt"), filepath.Join(dir, "cache")
	if err := mkdirs(mnt, cache); err != nil {
		return nil, err
	}
	passwd := filepath.Join(dir, "passwd-s3fs")
	if err := os.WriteFile(passwd, []byte(env.Server.AccessKey+":"+env.Server.SecretKey+"\n"), 0o600); err != nil {
		return nil, err
	}
	opts := append([]string{
		"passwd_file=" + passwd,
		"url=http://" + env.Proxy.Addr,
		"use_path_request_style",
		"endpoint=" + env.Server.Region,
		"use_cache=" + cache,
	}, s.extra...)
	args := []string{"s3fs", env.Bucket, mnt, "-f"}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	m, err := StartFUSE(ctx, "s3fs", mnt, filepath.Join(dir, "s3fs.log"), nil, mountTimeout, args...)
	if err != nil {
		return nil, err
	}
	return newFuseMounted(m), nil
}

// --- the plain S3 client ---

type s3ClientSystem struct{}

func (s3ClientSystem) Name() string     { return "S3 client" }
func (s3ClientSystem) Role() Role       { return RoleS3 }
func (s3ClientSystem) Available() error { return nil }
func (s3ClientSystem) Version() string  { return "aws-sdk-go-v2 GetObject/PutObject" }

// Mount makes a new client through the proxy, with a connection for each
// reader.
func (s3ClientSystem) Mount(ctx context.Context, env *Env, dir string) (Mounted, error) {
	return &s3Target{c: env.Server.Client("http://"+env.Proxy.Addr, env.MaxReaders()), bucket: env.Bucket}, nil
}

type s3Target struct {
	c      *s3.Client
	bucket string
}

func (t *s3Target) Stat(ctx context.Context, key string) (bool, error) {
	n, err := objectSize(ctx, t.c, t.bucket, key)
	return n >= 0, err
}

func (t *s3Target) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	return s3Open(ctx, t.c, t.bucket, key)
}

func (t *s3Target) Publish(ctx context.Context, key string, data, siginfo []byte) error {
	if err := PutBytes(ctx, t.c, t.bucket, key, data); err != nil {
		return err
	}
	return PutBytes(ctx, t.c, t.bucket, key+".siginfo", siginfo)
}

func (t *s3Target) PeakRSS() int64 { return 0 }
func (t *s3Target) Unmount() error { return nil }

// --- the local disk ---

type diskSystem struct{}

func (diskSystem) Name() string     { return "local disk" }
func (diskSystem) Role() Role       { return RoleDisk }
func (diskSystem) Available() error { return nil }
func (diskSystem) Version() string  { return "the generated store in the work directory" }

// Mount reads the local copy the store was uploaded from and publishes
// into dir.
func (diskSystem) Mount(ctx context.Context, env *Env, dir string) (Mounted, error) {
	return diskMounted{dirTarget{root: env.LocalDir, writeRoot: dir}}, nil
}

type diskMounted struct{ dirTarget }

func (diskMounted) PeakRSS() int64 { return 0 }
func (diskMounted) Unmount() error { return nil }

// --- file system operations, as bitbake makes them ---

// dirTarget is SSTATE_DIR at root (writes below writeRoot if set).
type dirTarget struct {
	root      string
	writeRoot string
}

func (t dirTarget) Stat(ctx context.Context, key string) (bool, error) {
	_, err := os.Stat(filepath.Join(t.root, key))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

func (t dirTarget) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	return os.Open(filepath.Join(t.root, key))
}

// Publish makes the syscalls of sstate_create_and_sign_package and
// dump_sigtask (compat/bitbake-sstate-syscalls.md): exists check, mkdir of
// each level (EEXIST is normal), NamedTemporaryFile beside the final name,
// creat + sequential writes through a second descriptor, chmod 0664,
// lstat, link(tmp, final), utimensat(tmp), close, unlink(tmp); and the
// siginfo through mkstemp + rename.
func (t dirTarget) Publish(ctx context.Context, key string, data, siginfo []byte) error {
	root := t.root
	if t.writeRoot != "" {
		root = t.writeRoot
	}
	final := filepath.Join(root, key)
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("%s exists already", key)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := mkdirLevels(root, filepath.Dir(key)); err != nil {
		return err
	}
	tmp := final + randomChars(8)
	keep, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer keep.Close()
	if err := writeFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, data); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o664); err != nil {
		return err
	}
	if _, err := os.Lstat(final); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("lstat %s before link: %v", key, err)
	}
	if err := os.Link(tmp, final); err != nil {
		return err
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, nil, 0); err != nil {
		return &os.PathError{Op: "utimensat", Path: tmp, Err: err}
	}
	if err := keep.Close(); err != nil {
		return err
	}
	if err := os.Remove(tmp); err != nil {
		return err
	}

	sigtmp := filepath.Join(filepath.Dir(final), "sigtask."+randomChars(8))
	if err := writeFile(sigtmp, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, siginfo); err != nil {
		return err
	}
	if err := os.Chmod(sigtmp, 0o664); err != nil {
		return err
	}
	return os.Rename(sigtmp, final+".siginfo")
}

// mkdirLevels creates each level of dir below root, as bitbake does
// (EEXIST is normal: tasks create the same levels concurrently).
func mkdirLevels(root, dir string) error {
	p := root
	for _, part := range strings.Split(dir, "/") {
		p = filepath.Join(p, part)
		if err := os.Mkdir(p, 0o775); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// writeFile writes data in 1 MiB sequential writes, like pzstd.
func writeFile(path string, flag int, data []byte) error {
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if _, err := f.Write(data[:n]); err != nil {
			f.Close()
			return err
		}
		data = data[n:]
	}
	return f.Close()
}

func randomChars(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// errnoOf names the errno inside err ("EIO"), or "".
func errnoOf(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		if e == syscall.EOPNOTSUPP {
			return "EOPNOTSUPP" // = ENOTSUP on Linux; strace says EOPNOTSUPP
		}
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(e))
	}
	return ""
}

func toolVersion(tool string, args ...string) string {
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil {
		return tool + " (version unknown)"
	}
	return firstLine(string(out))
}
