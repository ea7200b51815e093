package access

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

func TestRule(t *testing.T) {
	r := Rule{UID: 1000, GID: 1000}
	for _, tc := range []struct {
		name string
		c    Caller
		want bool
	}{
		{"root", Caller{UID: 0, GID: 0}, true},
		{"owner", Caller{UID: 1000, GID: 5}, true},
		{"primary group", Caller{UID: 1001, GID: 1000}, true},
		{"other, pid unknown", Caller{UID: 65534, GID: 65534}, false},
		{"other, process gone", Caller{UID: 65534, GID: 65534, PID: 1 << 30}, false},
	} {
		if got := r.Allows(tc.c); got != tc.want {
			t.Errorf("%s: Allows(%+v) = %v, want %v", tc.name, tc.c, got, tc.want)
		}
	}
}

// A process whose supplementary groups include the rule's group may
// publish; the same process without it may not.
func TestSupplementaryGroups(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a process with other groups")
	}
	for _, tc := range []struct {
		groups []uint32
		want   bool
	}{{[]uint32{4242}, true}, {[]uint32{4343}, false}} {
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: tc.groups}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		got := Rule{UID: 1000, GID: 4242}.Allows(Caller{UID: 65534, GID: 65534, PID: uint32(cmd.Process.Pid)})
		cmd.Process.Kill()
		cmd.Wait()
		if got != tc.want {
			t.Errorf("groups %v: Allows = %v, want %v", tc.groups, got, tc.want)
		}
	}
}
