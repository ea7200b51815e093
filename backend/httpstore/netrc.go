package httpstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// netrcEntry is one "machine" (or the "default") entry of a netrc file.
type netrcEntry struct {
	machine   string // "" for the default entry
	isDefault bool
	login     string
	password  string
}

// parseNetrc parses the netrc format of ftp(1) and curl: whitespace-separated
// tokens "machine NAME", "default", "login NAME", "password SECRET",
// "account SECRET" (ignored) and "macdef NAME" (the macro body, up to the next
// blank line, is skipped). Values may be double-quoted with backslash escapes;
// a line whose first non-blank character is '#' is a comment.
//
// Errors name the line and never quote a token, which may be a secret.
func parseNetrc(data string) ([]netrcEntry, error) {
	var entries []netrcEntry
	cur := -1   // index of the entry login/password apply to
	want := ""  // keyword waiting for its value
	wantAt := 0 // line of that keyword
	inMacro := false
	for i, line := range strings.Split(data, "\n") {
		lineno := i + 1
		if inMacro {
			if strings.TrimSpace(line) == "" {
				inMacro = false
			}
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		fields, err := netrcFields(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", lineno, err)
		}
		for _, f := range fields {
			if want != "" {
				switch want {
				case "machine":
					entries = append(entries, netrcEntry{machine: f})
					cur = len(entries) - 1
				case "login":
					entries[cur].login = f
				case "password":
					entries[cur].password = f
				case "macdef":
					// The body starts on the next line.
					inMacro = true
				}
				want = ""
				if inMacro {
					break
				}
				continue
			}
			switch f {
			case "machine", "macdef":
				want, wantAt = f, lineno
			case "default":
				entries = append(entries, netrcEntry{isDefault: true})
				cur = len(entries) - 1
			case "login", "password", "account":
				if cur < 0 {
					return nil, fmt.Errorf("line %d: %q before any machine or default", lineno, f)
				}
				want, wantAt = f, lineno
			default:
				return nil, fmt.Errorf("line %d: unexpected token (not a netrc keyword)", lineno)
			}
		}
	}
	if want != "" {
		return nil, fmt.Errorf("line %d: %q without a value", wantAt, want)
	}
	return entries, nil
}

// netrcFields splits a line into tokens, honouring double quotes.
func netrcFields(line string) ([]string, error) {
	var out []string
	for i := 0; i < len(line); {
		switch c := line[i]; {
		case c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f':
			i++
		case c == '"':
			var b strings.Builder
			i++
			closed := false
			for i < len(line) && !closed {
				c := line[i]
				switch {
				case c == '"':
					closed = true
				case c == '\\' && i+1 < len(line):
					i++
					switch e := line[i]; e {
					case 'n':
						b.WriteByte('\n')
					case 'r':
						b.WriteByte('\r')
					case 't':
						b.WriteByte('\t')
					default:
						b.WriteByte(e)
					}
				default:
					b.WriteByte(c)
				}
				i++
			}
			if !closed {
				return nil, errors.New("unterminated quoted string")
			}
			out = append(out, b.String())
		default:
			j := i
			for j < len(line) && !strings.ContainsRune(" \t\r\v\f", rune(line[j])) {
				j++
			}
			out = append(out, line[i:j])
			i = j
		}
	}
	return out, nil
}

// lookupNetrc returns the first entry for host (compared case-insensitively),
// or else the default entry.
func lookupNetrc(entries []netrcEntry, host string) (netrcEntry, bool) {
	for _, e := range entries {
		if !e.isDefault && strings.EqualFold(e.machine, host) {
			return e, true
		}
	}
	for _, e := range entries {
		if e.isDefault {
			return e, true
		}
	}
	return netrcEntry{}, false
}

// netrcCredentials finds basic-auth credentials for host in the netrc file
// at path; "" means $NETRC, or ~/.netrc if it exists.
func netrcCredentials(path, host string) (e netrcEntry, ok bool, err error) {
	required := true
	if path == "" {
		path = os.Getenv("NETRC")
	}
	if path == "" {
		home, herr := os.UserHomeDir()
		if herr != nil {
			return netrcEntry{}, false, nil
		}
		path, required = filepath.Join(home, ".netrc"), false
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if !required && errors.Is(err, fs.ErrNotExist) {
			return netrcEntry{}, false, nil
		}
		return netrcEntry{}, false, fmt.Errorf("netrc: %w", err)
	}
	entries, err := parseNetrc(string(data))
	if err != nil {
		return netrcEntry{}, false, fmt.Errorf("netrc %s: %w", path, err)
	}
	e, ok = lookupNetrc(entries, host)
	return e, ok, nil
}
