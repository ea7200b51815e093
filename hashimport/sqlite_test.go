package hashimport

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/index"
)

// bitbakeSchema is the schema bitbake-hashserv 2.19 creates
// (lib/hashserv/sqlite.py, DatabaseEngine.create), statement by statement.
var bitbakeSchema = []string{
	`CREATE TABLE IF NOT EXISTS unihashes_v3 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            method TEXT NOT NULL, taskhash TEXT NOT NULL, unihash TEXT NOT NULL, gc_mark TEXT NOT NULL,
            UNIQUE(method, taskhash)
            )`,
	`CREATE TABLE IF NOT EXISTS outhashes_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            method TEXT NOT NULL, taskhash TEXT NOT NULL, outhash TEXT NOT NULL, created DATETIME, owner TEXT, PN TEXT, PV TEXT, PR TEXT, task TEXT, outhash_siginfo TEXT,
            UNIQUE(method, taskhash, outhash)
            )`,
	`CREATE TABLE IF NOT EXISTS users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            username TEXT NOT NULL, token TEXT NOT NULL, permissions TEXT NOT NULL,
            UNIQUE(username)
            )`,
	`CREATE TABLE IF NOT EXISTS config (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL, value TEXT,
            UNIQUE(name)
            )`,
	`PRAGMA journal_mode = WAL`,
	`CREATE INDEX IF NOT EXISTS taskhash_lookup_v4 ON unihashes_v3 (method, taskhash)`,
	`CREATE INDEX IF NOT EXISTS unihash_lookup_v1 ON unihashes_v3 (unihash)`,
	`CREATE INDEX IF NOT EXISTS outhash_lookup_v3 ON outhashes_v2 (method, outhash)`,
	`CREATE INDEX IF NOT EXISTS config_lookup ON config (name)`,
}

const (
	mSysroot = "do_populate_sysroot"
	mPackage = "do_package"
)

// h makes a 64-character hex hash from a number.
func h(n int) string { return fmt.Sprintf("%064x", n) }

type outhashRow struct {
	method, taskhash, outhash string
	created                   any // string or nil
	owner, pn, pv, pr, task   any
}

// createDB writes a bitbake-hashserv database with the given rows.
func createDB(t *testing.T, path string, unihashes [][3]string, outhashes []outhashRow) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, stmt := range bitbakeSchema {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	for _, u := range unihashes {
		if _, err := db.Exec(`INSERT INTO unihashes_v3 (method, taskhash, unihash, gc_mark) VALUES (?, ?, ?, '')`, u[0], u[1], u[2]); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range outhashes {
		if _, err := db.Exec(`INSERT INTO outhashes_v2 (method, taskhash, outhash, created, owner, PN, PV, PR, task) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			o.method, o.taskhash, o.outhash, o.created, o.owner, o.pn, o.pv, o.pr, o.task); err != nil {
			t.Fatal(err)
		}
	}
}

func collect(out *[]index.Equivalence) func(index.Equivalence) error {
	return func(e index.Equivalence) error {
		*out = append(*out, e)
		return nil
	}
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// sameEquivalences compares field by field, times with Equal.
func sameEquivalences(t *testing.T, got, want []index.Equivalence) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d records, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		g, w := got[i], want[i]
		gc, wc := g.Created, w.Created
		g.Created, w.Created = time.Time{}, time.Time{}
		if g != w || !gc.Equal(wc) {
			t.Errorf("record %d:\n got %+v created %v\nwant %+v created %v", i, g, gc, w, wc)
		}
	}
}

func fileDigest(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestFromSQLite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hashserv.db")
	createDB(t, path,
		[][3]string{
			{mSysroot, h(1), h(0x101)},
			{mSysroot, h(2), h(0x101)},
			{mPackage, h(3), h(0x103)},
			{mSysroot, h(4), h(0x104)},                   // report-equiv: no outhash row
			{mSysroot, "ABCDEF", h(0x105)},               // taskhash not lowercase hex
			{mSysroot, h(6), "abc"},                      // unihash too short
			{mSysroot, h(7), h(0x107)},                   // created unreadable
			{mSysroot, h(8), h(0x108)},                   // same created as 9: method, taskhash decide
			{mPackage, h(9), h(0x109)},                   //
			{mSysroot, h(10), h(0x10a)},                  // outhash not hex
			{mSysroot, h(11), h(0x10b)},                  // outhash row without created
			{mSysroot, h(12), strings.ToUpper(h(0x10c))}, // unihash upper case
		},
		[]outhashRow{
			{mSysroot, h(1), h(0xa1), "2024-03-01T10:00:00.500000+00:00", "alice", "zlib", "1.3.1", "r0", "populate_sysroot"},
			{mSysroot, h(2), h(0xa1), "2024-03-01T10:00:00+00:00", "bob", "zlib", "1.3.1", "r1", "populate_sysroot"},
			// Two outhashes for one taskhash: two records. +02:00 is earlier than it reads.
			{mPackage, h(3), h(0xc1), "2024-03-01T12:30:00.000001+02:00", nil, "busybox", "1.36", "r0", "package"},
			// Old bitbake: naive time with a space.
			{mPackage, h(3), h(0xc2), "2023-12-31 23:59:59.999999", nil, "busybox", "1.36", "r0", "package"},
			{mSysroot, h(6), h(0xa6), "2024-01-01T00:00:00+00:00", nil, nil, nil, nil, nil},
			{mSysroot, h(7), h(0xa7), "yesterday", nil, nil, nil, nil, nil},
			{mSysroot, h(8), h(0xa8), "2024-03-02T00:00:00+00:00", nil, nil, nil, nil, nil},
			{mPackage, h(9), h(0xa9), "2024-03-02T00:00:00+00:00", nil, nil, nil, nil, nil},
			{mSysroot, h(10), "XYZ", "2024-04-01T00:00:00+00:00", nil, nil, nil, nil, nil},
			{mSysroot, h(11), h(0xab), nil, "carol", nil, nil, nil, nil},
			{mSysroot, h(12), h(0xac), "2024-04-02T00:00:00+00:00", nil, nil, nil, nil, nil},
			// Left behind by gc-sweep: no unihash, no equivalence.
			{mSysroot, h(0x99), h(0xa1), "2020-01-01T00:00:00+00:00", nil, nil, nil, nil, nil},
		})
	before := fileDigest(t, path)
	names := dirNames(t, dir)

	var got []index.Equivalence
	res, err := FromSQLite(context.Background(), path, collect(&got))
	if err != nil {
		t.Fatal(err)
	}
	want := []index.Equivalence{
		{Method: mSysroot, Taskhash: h(4), Unihash: h(0x104)},
		{Method: mSysroot, Taskhash: h(11), Outhash: h(0xab), Unihash: h(0x10b), Owner: "carol"},
		{Method: mPackage, Taskhash: h(3), Outhash: h(0xc2), Unihash: h(0x103), PN: "busybox", PV: "1.36", PR: "r0", Task: "package",
			Created: utc("2023-12-31T23:59:59.999999Z")},
		{Method: mSysroot, Taskhash: h(2), Outhash: h(0xa1), Unihash: h(0x101), PN: "zlib", PV: "1.3.1", PR: "r1", Task: "populate_sysroot", Owner: "bob",
			Created: utc("2024-03-01T10:00:00Z")},
		{Method: mSysroot, Taskhash: h(1), Outhash: h(0xa1), Unihash: h(0x101), PN: "zlib", PV: "1.3.1", PR: "r0", Task: "populate_sysroot", Owner: "alice",
			Created: utc("2024-03-01T10:00:00.5Z")},
		{Method: mPackage, Taskhash: h(3), Outhash: h(0xc1), Unihash: h(0x103), PN: "busybox", PV: "1.36", PR: "r0", Task: "package",
			Created: utc("2024-03-01T10:30:00.000001Z")},
		{Method: mPackage, Taskhash: h(9), Outhash: h(0xa9), Unihash: h(0x109), Created: utc("2024-03-02T00:00:00Z")},
		{Method: mSysroot, Taskhash: h(8), Outhash: h(0xa8), Unihash: h(0x108), Created: utc("2024-03-02T00:00:00Z")},
	}
	sameEquivalences(t, got, want)
	if res.Read != len(want) || res.Skipped != 5 {
		t.Errorf("Read %d Skipped %d, want %d 5; problems:\n%s", res.Read, res.Skipped, len(want), strings.Join(res.Problems, "\n"))
	}
	wantProblems := []string{
		`unihashes_v3 id 5 (do_populate_sysroot ABCDEF): taskhash "ABCDEF" is not lowercase hex`,
		`unihashes_v3 id 7, outhashes_v2 id 6 (do_populate_sysroot ` + h(7) + `): created "yesterday" is not an ISO 8601 time`,
		`unihashes_v3 id 6, outhashes_v2 id 5 (do_populate_sysroot ` + h(6) + `): unihash "abc" is not 64 lowercase hex characters`,
		`unihashes_v3 id 10, outhashes_v2 id 9 (do_populate_sysroot ` + h(10) + `): outhash "XYZ" is not lowercase hex`,
		`unihashes_v3 id 12, outhashes_v2 id 11 (do_populate_sysroot ` + h(12) + `): unihash "` + strings.ToUpper(h(0x10c)) + `" is not 64 lowercase hex characters`,
	}
	if !slices.Equal(res.Problems, wantProblems) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(res.Problems, "\n"), strings.Join(wantProblems, "\n"))
	}

	// Read-only: the file is unchanged and nothing is left beside it.
	if fileDigest(t, path) != before {
		t.Error("FromSQLite changed the database file")
	}
	if after := dirNames(t, dir); !slices.Equal(after, names) {
		t.Errorf("directory holds %v after the import, %v before", after, names)
	}

	// The same again: the order is deterministic.
	var again []index.Equivalence
	if _, err := FromSQLite(context.Background(), path, collect(&again)); err != nil {
		t.Fatal(err)
	}
	sameEquivalences(t, again, got)
}

func TestFromSQLiteReadOnlyFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root can write a read-only file")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "hashserv.db")
	createDB(t, path, [][3]string{{mSysroot, h(1), h(2)}}, nil)
	// As when the server runs as another user: nothing may be created.
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })
	var got []index.Equivalence
	if _, err := FromSQLite(context.Background(), path, collect(&got)); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Errorf("read %d records, want 1", len(got))
	}
}

func TestFromSQLiteErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	exec := func(name string, stmts ...string) string {
		p := filepath.Join(dir, name)
		db, err := sql.Open("sqlite", p)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for _, s := range stmts {
			if _, err := db.Exec(s); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	corrupt := write("corrupt.db", "SQLite format 3\x00"+strings.Repeat("\xff", 4096))

	tests := []struct {
		name    string
		path    string
		is      error
		message []string
	}{
		{"missing", filepath.Join(dir, "nope.db"), fs.ErrNotExist, []string{"nope.db"}},
		{"directory", dir, nil, []string{"is a directory"}},
		{"empty", write("empty.db", ""), ErrNotSQLite, []string{"empty.db", "0 bytes"}},
		{"text", write("notes.txt", "BB_HASHSERVE = \"auto\"\nnot a database at all\n"), ErrNotSQLite, []string{"notes.txt"}},
		{"corrupt", corrupt, ErrNotSQLite, []string{"corrupt.db"}},
		{"no tables", exec("other.db", "CREATE TABLE t (x)"), ErrSchema,
			[]string{"other.db", "missing table unihashes_v3, table outhashes_v2"}},
		{"missing column", exec("cols.db",
			"CREATE TABLE unihashes_v3 (id INTEGER PRIMARY KEY, method TEXT, taskhash TEXT, unihash TEXT)",
			"CREATE TABLE outhashes_v2 (id INTEGER PRIMARY KEY, method TEXT, taskhash TEXT, outhash TEXT, owner TEXT, PN TEXT, PV TEXT, PR TEXT)"),
			ErrSchema, []string{"missing column outhashes_v2.created, column outhashes_v2.task"}},
		{"old bitbake", exec("v2.db",
			"CREATE TABLE unihashes_v2 (id INTEGER PRIMARY KEY, method TEXT, taskhash TEXT, unihash TEXT)",
			"CREATE TABLE outhashes_v2 (id INTEGER PRIMARY KEY, method TEXT, taskhash TEXT, outhash TEXT, created DATETIME, owner TEXT, PN TEXT, PV TEXT, PR TEXT, task TEXT)"),
			ErrSchema, []string{"missing table unihashes_v3", "unihashes_v2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			_, err := FromSQLite(context.Background(), tt.path, func(index.Equivalence) error { called = true; return nil })
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if called {
				t.Error("fn called")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v is not %v", err, tt.is)
			}
			for _, m := range tt.message {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestFromSQLiteStops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hashserv.db")
	createDB(t, path, [][3]string{{mSysroot, h(1), h(0x101)}, {mSysroot, h(2), h(0x102)}}, nil)

	t.Run("fn error", func(t *testing.T) {
		stop := errors.New("index full")
		res, err := FromSQLite(context.Background(), path, func(index.Equivalence) error { return stop })
		if !errors.Is(err, stop) || !strings.Contains(err.Error(), h(1)) {
			t.Errorf("error %v, want %v naming the row", err, stop)
		}
		if res.Read != 0 {
			t.Errorf("Read %d, want 0", res.Read)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		_, err := FromSQLite(ctx, path, func(index.Equivalence) error { n++; cancel(); return nil })
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
		if n != 1 {
			t.Errorf("fn called %d times, want 1", n)
		}
	})
}

func TestParseCreated(t *testing.T) {
	tests := []struct {
		in   string
		want string // RFC 3339, "" for the zero time, "error"
	}{
		{"", ""},
		{"2026-11-25T21:46:31.437029+00:00", "2026-11-25T21:46:31.437029Z"},
		{"2026-11-25T21:46:31+00:00", "2026-11-25T21:46:31Z"},
		{"2026-11-25T23:46:31.5+02:00", "2026-11-25T21:46:31.5Z"},
		{"2026-11-25T21:46:31Z", "2026-11-25T21:46:31Z"},
		{"2022-05-01 12:34:56.789012", "2022-05-01T12:34:56.789012Z"},
		{"2022-05-01 12:34:56", "2022-05-01T12:34:56Z"},
		{"2022-05-01T12:34:56", "2022-05-01T12:34:56Z"},
		{"2022-05-01", "2022-05-01T00:00:00Z"},
		{"1714567890", "error"},
		{"yesterday", "error"},
	}
	for _, tt := range tests {
		got, err := parseCreated(tt.in)
		switch {
		case tt.want == "error":
			if err == nil {
				t.Errorf("parseCreated(%q) = %v, want an error", tt.in, got)
			}
		case err != nil:
			t.Errorf("parseCreated(%q): %v", tt.in, err)
		case tt.want == "" && !got.IsZero():
			t.Errorf("parseCreated(%q) = %v, want zero", tt.in, got)
		case tt.want != "" && !got.Equal(utc(tt.want)):
			t.Errorf("parseCreated(%q) = %v, want %s", tt.in, got, tt.want)
		case got.Location() != time.UTC:
			t.Errorf("parseCreated(%q) in %v, want UTC", tt.in, got.Location())
		}
	}
}

func TestFromSQLiteChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hashserv.db")
	createDB(t, path, [][3]string{{mSysroot, h(1), h(0x101)}, {mSysroot, h(2), h(0x102)}}, nil)
	_, err := FromSQLite(context.Background(), path, func(index.Equivalence) error {
		// What a checkpoint of a server that opened the file meanwhile does.
		return os.Chtimes(path, time.Time{}, time.Now().Add(time.Hour))
	})
	if !errors.Is(err, ErrChanged) {
		t.Errorf("error %v, want ErrChanged", err)
	}
}

// TestFromSQLiteLive reads a database that another connection holds open in
// WAL mode with records only in the -wal file, as a running server does.
func TestFromSQLiteLive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hashserv.db")
	createDB(t, path, [][3]string{{mSysroot, h(1), h(0x101)}}, nil)
	server, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	insert := func(n int) {
		t.Helper()
		if _, err := server.Exec(`INSERT INTO unihashes_v3 (method, taskhash, unihash, gc_mark) VALUES (?, ?, ?, '')`, mSysroot, h(n), h(0x100+n)); err != nil {
			t.Fatal(err)
		}
		if _, err := server.Exec(`INSERT INTO outhashes_v2 (method, taskhash, outhash, created) VALUES (?, ?, ?, ?)`, mSysroot, h(n), h(0xa0+n), fmt.Sprintf("2024-01-%02dT00:00:00+00:00", n)); err != nil {
			t.Fatal(err)
		}
	}
	insert(2)
	insert(3)
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Fatalf("no -wal file: %v", err)
	}
	var got []index.Equivalence
	res, err := FromSQLite(context.Background(), path, func(e index.Equivalence) error {
		if len(got) == 0 {
			insert(4) // after the snapshot: not read
		}
		got = append(got, e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []index.Equivalence{
		{Method: mSysroot, Taskhash: h(1), Unihash: h(0x101)},
		{Method: mSysroot, Taskhash: h(2), Outhash: h(0xa2), Unihash: h(0x102), Created: utc("2024-01-02T00:00:00Z")},
		{Method: mSysroot, Taskhash: h(3), Outhash: h(0xa3), Unihash: h(0x103), Created: utc("2024-01-03T00:00:00Z")},
	}
	sameEquivalences(t, got, want)
	if res.Read != 3 || res.Skipped != 0 {
		t.Errorf("result %+v", res)
	}
}
