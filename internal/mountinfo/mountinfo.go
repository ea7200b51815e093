// Package mountinfo reads the kernel's table of mounts
// (/proc/self/mountinfo): what is mounted at a directory, and from where.
package mountinfo

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// File is the mount table read (a variable for tests).
var File = "/proc/self/mountinfo"

// At returns the file system type and source of the mount at dir (an
// absolute path without symbolic links); ok is false when nothing is
// mounted there or the table cannot be read.
func At(dir string) (fstype, source string, ok bool) {
	f, err := os.Open(File)
	if err != nil {
		return "", "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if fstype, source, ok := parseLine(sc.Text(), dir); ok {
			return fstype, source, true
		}
	}
	return "", "", false
}

// Under returns the mountpoints at dir or below it, in the table's order.
func Under(dir string) []string {
	b, err := os.ReadFile(File)
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			if mp := unescape(f[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

// parseLine reads one line of the table if it is the mount at dir:
// id parent major:minor root mountpoint options... - fstype source superopts
func parseLine(line, dir string) (fstype, source string, ok bool) {
	fields := strings.Fields(line)
	if len(fields) < 5 || unescape(fields[4]) != dir {
		return "", "", false
	}
	for i, fl := range fields {
		if fl == "-" && i+2 < len(fields) {
			return fields[i+1], unescape(fields[i+2]), true
		}
	}
	return "unknown", "", true
}

// unescape undoes the kernel's octal escapes (\040 for a space) of paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
