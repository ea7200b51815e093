package fs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sstatefs/sstatefs/internal/access"
)

// userOp is one file operation a helper process makes as another user.
type userOp struct {
	Op   string // read, write, create, creat, chmod, unlink, mkdir, rename, link, utime, touch
	A, B string // paths (B: second path, or the bytes to write)
}

// run makes the operation; its error is what the syscall answered.
func (o userOp) run() error {
	write := func(flags int, perm os.FileMode) error {
		f, err := os.OpenFile(o.A, flags, perm)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(o.B); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	switch o.Op {
	case "read":
		_, err := os.ReadFile(o.A)
		return err
	case "write": // overwrite an existing file
		return write(os.O_WRONLY|os.O_TRUNC, 0)
	case "create": // bitbake's temp file
		return write(os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	case "creat": // tar's creat, the sanity check's file
		return write(os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	case "chmod":
		return os.Chmod(o.A, 0o664)
	case "chmod777":
		return os.Chmod(o.A, 0o777)
	case "unlink":
		return syscall.Unlink(o.A)
	case "mkdir":
		return syscall.Mkdir(o.A, 0o777)
	case "rename":
		return syscall.Rename(o.A, o.B)
	case "link":
		return syscall.Link(o.A, o.B)
	case "utime": // os.utime(path, None)
		return unix.UtimesNanoAt(unix.AT_FDCWD, o.A, nil, 0)
	case "touch": // coreutils touch on an existing file
		fd, err := syscall.Open(o.A, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0o666)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return unix.UtimesNanoAt(fd, "", nil, unix.AT_EMPTY_PATH)
	}
	return fmt.Errorf("unknown op %q", o.Op)
}

// errName is "ok", an errno's name (EACCES) or the error.
func errName(err error) string {
	var en syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &en):
		return unix.ErrnoName(en)
	}
	return err.Error()
}

const userOpsEnv = "SSTATEFS_TEST_USER_OPS"

// TestUserOpsHelper is not a test: it is the process asUser starts as
// another user, which makes the operations and prints their results.
func TestUserOpsHelper(t *testing.T) {
	spec := os.Getenv(userOpsEnv)
	if spec == "" {
		t.Skip("helper process of asUser")
	}
	var ops []userOp
	if err := json.Unmarshal([]byte(spec), &ops); err != nil {
		t.Fatal(err)
	}
	syscall.Umask(0o002) // bitbake's

	res := make([]string, len(ops))
	for i, o := range ops {
		res[i] = errName(o.run())
	}
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
}

// reachable makes dir and its parent (t.TempDir's, 0700) enterable by
// other users.
func reachable(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// helperBinary copies this test binary where other users can run it.
func helperBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	reachable(t, dir)
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	bin := filepath.Join(dir, "fs.test")
	out, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// user is a local user the helper runs as.
type user struct {
	uid, gid uint32
	groups   []uint32
}

var (
	nobody = user{uid: 65534, gid: 65534}
	other  = user{uid: 65533, gid: 65533}
	member = user{uid: 65533, gid: 65533, groups: []uint32{65534}} // in nobody's group
)

// asUser makes ops as u in a helper process and returns their results.
func asUser(t *testing.T, bin string, u user, ops ...userOp) []string {
	t.Helper()
	spec, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestUserOpsHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), userOpsEnv+"="+string(spec))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper as uid %d: %v\n%s", u.uid, err, out)
	}
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "RESULT "); ok {
			var res []string
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("helper as uid %d printed no result:\n%s", u.uid, out)
	return nil
}

// expect runs steps as u and checks each answer: "ok", or "denied" for
// EACCES or EPERM.
type step struct {
	userOp
	want string
	why  string
}

func expect(t *testing.T, bin string, u user, steps ...step) {
	t.Helper()
	ops := make([]userOp, len(steps))
	for i, s := range steps {
		ops[i] = s.userOp
	}
	res := asUser(t, bin, u, ops...)
	for i, s := range steps {
		got := res[i]
		ok := got == s.want || (s.want == "denied" && (got == "EACCES" || got == "EPERM"))
		if !ok {
			t.Errorf("uid %d: %s %s %s = %s, want %s (%s)", u.uid, s.Op, s.A, s.B, got, s.want, s.why)
		}
	}
}

// publishLog records what the FS published.
type publishLog struct {
	mu   sync.Mutex
	keys []string
}

func (p *publishLog) publish(ctx context.Context, key, path string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append(p.keys, key)
	return nil
}

func (p *publishLog) get() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(slices.Values(p.keys))
}

// objectIn returns a valid object name in the ab/cd directory of a hash
// starting with ab and cd (nothing of that name in the store).
func objectIn(native, pn, hash string) string {
	k := hash[0:2] + "/" + hash[2:4] + "/sstate:" + pn + ":x86_64-linux:1.0:r0:x86_64:14:" + hash + "_populate_sysroot.tar.zst"
	if native != "" {
		k = native + "/" + k
	}
	return k
}

// TestAllowOtherAttacks: on a root mount with allow_other, another local
// user can read what everyone may read and nothing more: not root's
// private file, not change or remove other users' files, not create in the
// root, not hide a store object, and not publish, even in a directory
// someone made world-writable.
func TestAllowOtherAttacks(t *testing.T) {
	for _, daemonOpens := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemonOpens=%v", daemonOpens), func(t *testing.T) { testAllowOtherAttacks(t, daemonOpens) })
	}
}

func testAllowOtherAttacks(t *testing.T, daemonOpens bool) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("pkg"))
	writeStore(t, storeDir, pkgKey+".siginfo", []byte("sig"))
	writeStore(t, storeDir, licKey, []byte("lic"))
	var pl publishLog
	// mount made by root over a root-owned mountpoint: root publishes
	m := mount(t, mountOpts{storeDir: storeDir, allowOther: true, publishers: access.Rule{UID: 0, GID: 0}, publish: pl.publish, daemonOpens: daemonOpens})
	reachable(t, m.dir)
	bin := helperBinary(t)
	p := func(rel string) string { return filepath.Join(m.dir, rel) }

	// root's files, a world-writable directory root made, and a store
	// directory root made world-writable
	if err := os.WriteFile(p("secret"), []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("victim"), []byte("root's bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("shared"), 0o777); err != nil {
		t.Fatal(err)
	}
	pkgDir := filepath.Dir(pkgKey)
	for _, d := range []string{"shared", pkgDir} {
		if err := os.Chmod(p(d), 0o777); err != nil {
			t.Fatal(err)
		}
	}
	evil := objectIn("debian-12", "evil-native", h1) // a new name in pkgDir
	tmp := p(pkgDir + "/tmp.attack")

	expect(t, bin, nobody,
		step{userOp{Op: "read", A: p("secret")}, "denied", "root's 0600 file"},
		step{userOp{Op: "write", A: p("secret"), B: "attacker"}, "denied", "overwrite root's file"},
		step{userOp{Op: "unlink", A: p("secret")}, "denied", "delete root's file"},
		step{userOp{Op: "mkdir", A: p("evil")}, "denied", "mkdir in the root-owned root"},
		step{userOp{Op: "creat", A: p("evil.txt"), B: "x"}, "denied", "create in the root-owned root"},
		step{userOp{Op: "unlink", A: p(licKey)}, "denied", "hide a store object"},
		step{userOp{Op: "unlink", A: p(pkgKey)}, "denied", "hide a store object in a 0777 directory"},
		step{userOp{Op: "create", A: p("shared/mine"), B: "attacker"}, "ok", "a world-writable directory"},
		step{userOp{Op: "rename", A: p("shared/mine"), B: p("victim")}, "denied", "replace root's file"},
		step{userOp{Op: "create", A: tmp, B: "attacker"}, "ok", "a temp file in a world-writable directory"},
		step{userOp{Op: "link", A: tmp, B: p(evil)}, "denied", "publish by link"},
		step{userOp{Op: "rename", A: tmp, B: p(evil + ".siginfo")}, "denied", "publish by rename"},
		step{userOp{Op: "rename", A: tmp, B: p(pkgKey)}, "denied", "replace a store object"},
		step{userOp{Op: "creat", A: p(objectIn("debian-12", "evil2-native", h1)), B: "attacker"}, "denied", "create an object's name"},
		step{userOp{Op: "utime", A: p(pkgKey)}, "denied", "touch a store object (bitbake tolerates EACCES)"},
		step{userOp{Op: "chmod777", A: p(pkgDir)}, "denied", "chmod root's directory"},
		step{userOp{Op: "read", A: p(pkgKey)}, "ok", "objects are world-readable"},
		step{userOp{Op: "read", A: p("victim")}, "ok", "a 0644 file"},
	)

	for rel, want := range map[string]string{"secret": "root's secret", "victim": "root's bytes", pkgKey: "pkg", licKey: "lic"} {
		if got, err := os.ReadFile(p(rel)); err != nil || string(got) != want {
			t.Errorf("%s after the attacks: %q, %v; want %q", rel, got, err, want)
		}
	}
	for _, rel := range []string{evil, evil + ".siginfo", "evil"} {
		if _, err := os.Lstat(p(rel)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after the attacks: %v", rel, err)
		}
	}
	if got := pl.get(); len(got) != 0 {
		t.Errorf("published by another user: %q", got)
	}
	// the rule refused several times, and said so once for this user
	if n := strings.Count(m.fsLog.String(), "uid=65534"); n != 1 {
		t.Errorf("refusals of uid 65534 logged %d times, want once:\n%s", n, m.fsLog.String())
	}
}

// TestAllowOtherPublishers: the mount owner (here nobody, as when the
// mountpoint belongs to the build user) and members of its group publish
// the way bitbake does; another user reads, and can neither publish nor
// touch, even in a directory the owner made world-writable.
func TestAllowOtherPublishers(t *testing.T) {
	storeDir := t.TempDir()
	writeStore(t, storeDir, pkgKey, []byte("pkg"))
	writeStore(t, storeDir, pkgKey+".siginfo", []byte("sig"))
	var pl publishLog
	owner := [2]uint32{nobody.uid, nobody.gid}
	m := mount(t, mountOpts{storeDir: storeDir, allowOther: true, owner: &owner,
		publishers: access.Rule{UID: nobody.uid, GID: nobody.gid}, publish: pl.publish})
	reachable(t, m.dir)
	bin := helperBinary(t)
	p := func(rel string) string { return filepath.Join(m.dir, rel) }

	// sstate_create_and_sign_package, dump_sigtask and the restore's
	// touches (compat/bitbake-sstate-syscalls.md), as the owner
	publishSteps := func(key string) []step {
		dir := filepath.Dir(key)
		tmp := p(key + "Ab3_x9Qz")
		sig := p(dir + "/sigtask.k2j3h4")
		return []step{
			{userOp{Op: "mkdir", A: p(filepath.Dir(dir))}, "ok", "mkdir ab"},
			{userOp{Op: "mkdir", A: p(dir)}, "ok", "mkdir ab/cd"},
			{userOp{Op: "create", A: tmp}, "ok", "temp file"},
			{userOp{Op: "creat", A: tmp, B: "package of " + key}, "ok", "tar's creat"},
			{userOp{Op: "chmod", A: tmp}, "ok", "chmod 0664"},
			{userOp{Op: "link", A: tmp, B: p(key)}, "ok", "publish by link"},
			{userOp{Op: "utime", A: tmp}, "ok", "touch the temp name"},
			{userOp{Op: "unlink", A: tmp}, "ok", "remove the temp name"},
			{userOp{Op: "create", A: sig, B: "siginfo"}, "ok", "mkstemp"},
			{userOp{Op: "chmod", A: sig}, "ok", "chmod 0664"},
			{userOp{Op: "rename", A: sig, B: p(key + ".siginfo")}, "ok", "publish by rename"},
			{userOp{Op: "read", A: p(key)}, "ok", "read back"},
		}
	}
	long := p(strings.Repeat("q", 200))
	mine := objectIn("", "probe-native", "abcd"+h1[4:])
	steps := append(publishSteps(mine),
		step{userOp{Op: "utime", A: p(pkgKey)}, "ok", "os.utime of a store object"},
		step{userOp{Op: "touch", A: p(pkgKey + ".siginfo")}, "ok", "touch of a store object"},
		step{userOp{Op: "read", A: p(pkgKey)}, "ok", "read a store object"},
		step{userOp{Op: "creat", A: long, B: ""}, "ok", "sanity check's long name"},
		step{userOp{Op: "unlink", A: long}, "ok", "sanity check's cleanup"},
		step{userOp{Op: "mkdir", A: p("shared")}, "ok", "a directory"},
		step{userOp{Op: "chmod777", A: p("shared")}, "ok", "made world-writable"},
		step{userOp{Op: "chmod777", A: p(filepath.Dir(mine))}, "ok", "made world-writable"},
	)
	expect(t, bin, nobody, steps...)

	// a member of the owner's group publishes too
	theirs := objectIn("", "member-native", "abce"+h1[4:])
	expect(t, bin, member, append(publishSteps(theirs)[1:],
		step{userOp{Op: "utime", A: p(pkgKey)}, "ok", "os.utime of a store object by the group"},
		step{userOp{Op: "touch", A: p(pkgKey)}, "ok", "touch of a store object by the group"})...)

	// anyone else: reads, but no publish, touch or hiding
	tmp := p(filepath.Dir(mine) + "/tmp.other")
	expect(t, bin, other,
		step{userOp{Op: "read", A: p(mine)}, "ok", "published objects are world-readable"},
		step{userOp{Op: "read", A: p(pkgKey)}, "ok", "store objects are world-readable"},
		step{userOp{Op: "mkdir", A: p("x")}, "denied", "the root is the owner's, 0775"},
		step{userOp{Op: "utime", A: p(pkgKey)}, "denied", "touch a store object"},
		step{userOp{Op: "utime", A: p(mine)}, "denied", "touch the owner's object"},
		step{userOp{Op: "write", A: p(mine), B: "attacker"}, "denied", "overwrite the owner's object"},
		step{userOp{Op: "create", A: tmp, B: "attacker"}, "ok", "a world-writable directory"},
		step{userOp{Op: "link", A: tmp, B: p(objectIn("", "evil-native", "abcd"+h1[4:]))}, "denied", "publish by link"},
		step{userOp{Op: "rename", A: tmp, B: p(mine + ".siginfo")}, "denied", "replace a published siginfo"},
		step{userOp{Op: "unlink", A: p(mine)}, "denied", "remove a published object in a world-writable directory"},
		step{userOp{Op: "rename", A: p(mine), B: p(filepath.Dir(mine) + "/moved")}, "denied", "move a published object away"},
	)

	want := []string{mine, mine + ".siginfo", theirs, theirs + ".siginfo"}
	slices.Sort(want)
	if got := pl.get(); !slices.Equal(got, want) {
		t.Errorf("published %q, want %q", got, want)
	}
	if got, err := os.ReadFile(p(mine + ".siginfo")); err != nil || !bytes.Equal(got, []byte("siginfo")) {
		t.Errorf("siginfo after the other user: %q, %v", got, err)
	}
}
