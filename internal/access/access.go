// Package access decides which local users may change the shared store
// through a mount: publish an object (a link or rename onto an sstate object
// name) or record a hash equivalence. Everything a mount publishes is
// trusted by every builder that mounts the same store, so this is narrower
// than "may write to the mount".
//
// The rule: root, the publishing owner's uid, and any process whose primary
// or supplementary groups include the publishing group. By default the owner
// and group are those of the mountpoint (or --mount-owner): mount as root
// over a directory owned by the build user and that user, and members of its
// group, publish; nobody else does.
package access

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Caller is the process asking: from the FUSE request header or from a unix
// socket's SO_PEERCRED. PID 0 means unknown (another PID namespace): its
// supplementary groups are then not consulted.
type Caller struct {
	UID, GID uint32
	PID      uint32
}

// Rule says who may publish.
type Rule struct {
	UID, GID uint32
}

// Allows reports whether c may publish.
func (r Rule) Allows(c Caller) bool {
	if c.UID == 0 || c.UID == r.UID || c.GID == r.GID {
		return true
	}
	if c.PID == 0 {
		return false
	}
	groups, err := Groups(c.PID)
	if err != nil {
		return false
	}
	for _, g := range groups {
		if g == r.GID {
			return true
		}
	}
	return false
}

// String describes the rule for logs and documentation.
func (r Rule) String() string {
	return fmt.Sprintf("root, uid %d and members of gid %d", r.UID, r.GID)
}

// Groups returns the supplementary groups of process pid (from
// /proc/PID/status). The caller's process may have exited; the error then
// says so and the caller is refused.
func Groups(pid uint32) ([]uint32, error) {
	data, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/status")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Bytes()
		rest, ok := bytes.CutPrefix(line, []byte("Groups:"))
		if !ok {
			continue
		}
		var out []uint32
		for _, f := range bytes.Fields(rest) {
			g, err := strconv.ParseUint(string(f), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("/proc/%d/status: bad group %q", pid, f)
			}
			out = append(out, uint32(g))
		}
		return out, nil
	}
	return nil, fmt.Errorf("/proc/%d/status: no Groups line", pid)
}
