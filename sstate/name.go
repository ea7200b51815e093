// Package sstate knows the grammar of sstate object names and of the
// SSTATE_DIR layout (compat/README.md):
//
//	[<NATIVELSBSTRING>/]<h0h1>/<h2h3>/sstate:<PN>:<arch>:<PV>:<PR>:<pkgarch>:<version>:<hash>_<task>.tar.zst[.siginfo|.sig]
//
// Source-like tasks use the short form sstate:<PN>::<PV>:<PR>::<version>:<hash>_<task>.
package sstate

import (
	"errors"
	"fmt"
	"strings"
)

// Name is a parsed object name.
type Name struct {
	Native    string // NATIVELSBSTRING directory ("debian-12", "universal"), "" for top level
	PN        string
	Arch      string // "" in the short form
	PV, PR    string
	PkgArch   string // "" in the short form
	Version   string // SSTATE_VERSION, e.g. "14"
	Hash      string // the unihash: lowercase hex
	Task      string // e.g. "populate_sysroot"
	Ext       string // archive extension: ".tar.zst" (or ".tgz" before kirkstone)
	Companion string // "", ".siginfo" or ".sig"
}

// ErrNotSstate is wrapped by Parse errors: the path is not an sstate object.
var ErrNotSstate = errors.New("not an sstate object name")

// ErrControlChar is wrapped (with ErrNotSstate) by the Parse errors of
// names holding a control character (a newline, say). bitbake's names
// never do (PN, PV and PR are recipe and version strings, the arch fields
// identifiers, the hash hex), and such a name would break every log line
// and list that shows it.
var ErrControlChar = errors.New("contains a control character")

// hasControl reports whether s holds an ASCII control character or DEL.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// Parse parses an object's path relative to SSTATE_DIR and checks that its
// directory levels match its hash.
func Parse(path string) (Name, error) {
	var n Name
	if hasControl(path) {
		return n, fmt.Errorf("%w: %q: %w", ErrNotSstate, path, ErrControlChar)
	}
	parts := strings.Split(path, "/")
	switch len(parts) {
	case 3:
	case 4:
		n.Native = parts[0]
		if !IsNativeDir(n.Native) {
			return n, fmt.Errorf("%w: %q: %q is not a NATIVELSBSTRING directory", ErrNotSstate, path, n.Native)
		}
		parts = parts[1:]
	default:
		return n, fmt.Errorf("%w: %q: want [NATIVELSBSTRING/]ab/cd/sstate:...", ErrNotSstate, path)
	}
	if err := n.parseFile(parts[2]); err != nil {
		return n, fmt.Errorf("%w: %q: %v", ErrNotSstate, path, err)
	}
	if len(n.Hash) < 4 || parts[0] != n.Hash[0:2] || parts[1] != n.Hash[2:4] {
		return n, fmt.Errorf("%w: %q: directory %s/%s does not match hash %.8s", ErrNotSstate, path, parts[0], parts[1], n.Hash)
	}
	return n, nil
}

// ParseFile parses the base name of an object, without directory checks.
func ParseFile(base string) (Name, error) {
	var n Name
	if hasControl(base) {
		return n, fmt.Errorf("%w: %q: %w", ErrNotSstate, base, ErrControlChar)
	}
	if err := n.parseFile(base); err != nil {
		return n, fmt.Errorf("%w: %q: %v", ErrNotSstate, base, err)
	}
	return n, nil
}

func (n *Name) parseFile(base string) error {
	rest, ok := strings.CutPrefix(base, "sstate:")
	if !ok {
		return errors.New("no sstate: prefix")
	}
	for _, c := range []string{".siginfo", ".sig"} {
		if r, ok := strings.CutSuffix(rest, c); ok {
			n.Companion, rest = c, r
			break
		}
	}
	for _, e := range []string{".tar.zst", ".tgz"} {
		if r, ok := strings.CutSuffix(rest, e); ok {
			n.Ext, rest = e, r
			break
		}
	}
	if n.Ext == "" {
		return errors.New("no .tar.zst or .tgz extension")
	}
	f := strings.Split(rest, ":")
	if len(f) != 7 {
		return fmt.Errorf("%d colon-separated fields, want 7", len(f))
	}
	n.PN, n.Arch, n.PV, n.PR, n.PkgArch, n.Version = f[0], f[1], f[2], f[3], f[4], f[5]
	last := f[6]
	i := strings.IndexByte(last, '_')
	if i < 0 {
		return errors.New("no _<task> after the hash")
	}
	n.Hash, n.Task = last[:i], last[i+1:]
	if n.PN == "" || n.Task == "" {
		return errors.New("empty PN or task")
	}
	if !IsHash(n.Hash) {
		return fmt.Errorf("hash %q is not lowercase hex", n.Hash)
	}
	return nil
}

// IsHash reports whether s is a lowercase hex string of 4 to 128 characters
// (bitbake's unihashes are 64; older or test setups use other lengths).
func IsHash(s string) bool {
	if len(s) < 4 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// IsHexDir reports whether s is a two-character lowercase hex directory name.
func IsHexDir(s string) bool {
	return len(s) == 2 && IsHash(s+"00")
}

// IsNativeDir reports whether s looks like a NATIVELSBSTRING directory:
// "universal", "universal-4.9", "debian-12", "ubuntu-22.04", "fedora-41", ...
// (a lowercase distro id, a dash, a version), and is not a hex directory.
func IsNativeDir(s string) bool {
	if s == "universal" {
		return true
	}
	i := strings.LastIndexByte(s, '-')
	if i <= 0 || i == len(s)-1 || len(s) > 64 {
		return false
	}
	id, ver := s[:i], s[i+1:]
	for j := 0; j < len(id); j++ {
		c := id[j]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	if id[0] < 'a' || id[0] > 'z' {
		return false
	}
	if ver[0] < '0' || ver[0] > '9' {
		return false
	}
	for j := 0; j < len(ver); j++ {
		c := ver[j]
		if !(c >= '0' && c <= '9' || c == '.') {
			return false
		}
	}
	return true
}

// String reassembles the object's path relative to SSTATE_DIR.
func (n Name) String() string {
	p := fmt.Sprintf("%s/%s/sstate:%s:%s:%s:%s:%s:%s:%s_%s%s%s",
		n.Hash[0:2], n.Hash[2:4], n.PN, n.Arch, n.PV, n.PR, n.PkgArch, n.Version, n.Hash, n.Task, n.Ext, n.Companion)
	if n.Native != "" {
		p = n.Native + "/" + p
	}
	return p
}
