package hashimport

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/sstatefs/sstatefs/index"
)

// requiredColumns are the columns FromSQLite reads, by table, as bitbake's
// hashserv/sqlite.py creates them (it also has id, gc_mark and
// outhash_siginfo, which an import does not need).
var requiredColumns = []struct {
	table   string
	columns []string
}{
	{"unihashes_v3", []string{"method", "taskhash", "unihash"}},
	{"outhashes_v2", []string{"method", "taskhash", "outhash", "created", "owner", "PN", "PV", "PR", "task"}},
}

// selectEquivalences joins every unihash row to its outhash rows. A unihash
// without an outhash row comes out once with NULLs; an outhash row without a
// unihash (left behind by gc-sweep) is no equivalence and is not read.
//
// created is cast to text because the driver would otherwise turn the
// DATETIME column into time.Time with its own rules. julianday() orders the
// formats bitbake has used (with and without zone, 'T' or ' ') by time; it
// has millisecond resolution, so the text breaks ties (uniform within one
// format). Rows without a time sort first.
const selectEquivalences = `
SELECT u.id, u.method, u.taskhash, u.unihash,
       o.id, o.outhash, CAST(o.created AS TEXT), o.owner, o.PN, o.PV, o.PR, o.task
FROM unihashes_v3 AS u
LEFT JOIN outhashes_v2 AS o ON o.method = u.method AND o.taskhash = u.taskhash
ORDER BY julianday(o.created), CAST(o.created AS TEXT), u.method, u.taskhash, o.outhash, u.id, o.id`

// FromSQLite reads every record of a bitbake-hashserv database file and
// calls fn with each, ordered by created, then method and taskhash. The file
// is opened read-only and may be in use by a running server (bitbake keeps it
// in WAL mode); the read is one consistent snapshot. A file without a -wal
// companion is read without locks; if it changes meanwhile (a server started
// on it), FromSQLite fails with ErrChanged after the read.
//
// Rows that are not valid records (hashes that are not lowercase hex, a
// unihash that is not 64 characters, an unreadable created time, ...) are
// counted and skipped, never fatal. A unihash row without an outhash row is
// read with Outhash "". A taskhash with several outhash rows is read once per
// row (a server's get with all=true returns only the oldest).
//
// An error from fn stops the import and is returned wrapped.
func FromSQLite(ctx context.Context, path string, fn func(index.Equivalence) error) (Result, error) {
	var res Result
	wal, before, err := checkSQLiteFile(path)
	if err != nil {
		return res, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return res, fmt.Errorf("hashserv database %s: %w", path, err)
	}
	// mode=ro: sqlite never writes the database. A reader of a WAL database
	// needs the -wal and -shm companions a server keeps beside it, and
	// creates them if it may, and leaves them. Without a -wal file all
	// records are in the database file, so it is read as immutable instead:
	// no companions, no locks, and no need for write permission on the
	// directory. Should a server start writing meanwhile, the file changes,
	// which is checked after the read.
	immutable := wal && !exists(abs+"-wal")
	query := "?mode=ro&_pragma=busy_timeout(10000)"
	if immutable {
		query = "?mode=ro&immutable=1"
	}
	dsn := (&url.URL{Scheme: "file", Path: abs}).String() + query
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return res, fmt.Errorf("hashserv database %s: %w", path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)

	if err := checkSchema(ctx, db); err != nil {
		return res, fmt.Errorf("hashserv database %s: %w", path, sqliteError(err))
	}

	rows, err := db.QueryContext(ctx, selectEquivalences)
	if err != nil {
		return res, fmt.Errorf("hashserv database %s: %w", path, sqliteError(err))
	}
	defer rows.Close()
	for rows.Next() {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var (
			uid                                       int64
			oid                                       sql.NullInt64
			method, taskhash, unihash                 sql.NullString
			outhash, created, owner, pn, pv, pr, task sql.NullString
		)
		if err := rows.Scan(&uid, &method, &taskhash, &unihash,
			&oid, &outhash, &created, &owner, &pn, &pv, &pr, &task); err != nil {
			return res, fmt.Errorf("hashserv database %s: unihashes_v3 id %d: %w", path, uid, err)
		}
		e := index.Equivalence{
			Method: method.String, Taskhash: taskhash.String, Unihash: unihash.String,
			Outhash: outhash.String, Owner: owner.String,
			PN: pn.String, PV: pv.String, PR: pr.String, Task: task.String,
		}
		row := fmt.Sprintf("unihashes_v3 id %d", uid)
		if oid.Valid {
			row += fmt.Sprintf(", outhashes_v2 id %d", oid.Int64)
		}
		row += fmt.Sprintf(" (%s %s)", short(e.Method), short(e.Taskhash))
		if oid.Valid && !outhash.Valid {
			res.skip("%s: outhash is NULL", row)
			continue
		}
		if reason := check(&e); reason != "" {
			res.skip("%s: %s", row, reason)
			continue
		}
		if e.Created, err = parseCreated(created.String); err != nil {
			res.skip("%s: %v", row, err)
			continue
		}
		if err := fn(e); err != nil {
			return res, fmt.Errorf("hashimport: %s: %w", row, err)
		}
		res.Read++
	}
	err = rows.Err()
	switch {
	case ctx.Err() != nil:
		return res, ctx.Err()
	case immutable && changed(path, before):
		// Also when the read failed: a half-written page reads as corrupt.
		return res, fmt.Errorf("hashserv database %s: %w", path, ErrChanged)
	case err != nil:
		return res, fmt.Errorf("hashserv database %s: %w", path, sqliteError(err))
	}
	return res, nil
}

// changed tells whether the file at path is no longer as described by before.
func changed(path string, before os.FileInfo) bool {
	after, err := os.Stat(path)
	return err != nil || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime())
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// sqliteMagic starts every sqlite 3 database file.
var sqliteMagic = []byte("SQLite format 3\x00")

// checkSQLiteFile reports a missing or unreadable file, or one that is no
// sqlite database, before sqlite would (with less clear messages, or by
// treating an empty file as an empty database). wal tells whether the
// database is in WAL mode, as bitbake-hashserv puts it.
func checkSQLiteFile(path string) (wal bool, fi os.FileInfo, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, nil, fmt.Errorf("hashserv database: %w", err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return false, nil, fmt.Errorf("hashserv database: %w", err)
	}
	if fi.IsDir() {
		return false, nil, fmt.Errorf("hashserv database %s: is a directory, want bitbake-hashserv's database file (-d)", path)
	}
	// The header: the magic, then the page size (2 bytes), then the write
	// and read format versions, 2 for WAL.
	head := make([]byte, len(sqliteMagic)+4)
	if _, err := io.ReadFull(f, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil, fmt.Errorf("hashserv database %s: %d bytes long: %w", path, fi.Size(), ErrNotSQLite)
		}
		return false, nil, fmt.Errorf("hashserv database %s: %w", path, err)
	}
	if !bytes.Equal(head[:len(sqliteMagic)], sqliteMagic) {
		return false, nil, fmt.Errorf("hashserv database %s: %w (header %q)", path, ErrNotSQLite, head[:len(sqliteMagic)])
	}
	return head[len(sqliteMagic)+2] == 2 || head[len(sqliteMagic)+3] == 2, fi, nil
}

// checkSchema names every missing table and column at once.
func checkSchema(ctx context.Context, db *sql.DB) error {
	var missing []string
	for _, t := range requiredColumns {
		have, err := tableColumns(ctx, db, t.table)
		if err != nil {
			return err
		}
		if len(have) == 0 {
			missing = append(missing, "table "+t.table)
			continue
		}
		for _, c := range t.columns {
			if !have[strings.ToLower(c)] {
				missing = append(missing, "column "+t.table+"."+c)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	hint := ""
	if containsTable(missing, "unihashes_v3") {
		if old, err := tableColumns(ctx, db, "unihashes_v2"); err == nil && len(old) > 0 {
			hint = " (it has unihashes_v2 of an older bitbake; a current bitbake-hashserv upgrades it when it opens the file)"
		}
	}
	return fmt.Errorf("%w: missing %s%s", ErrSchema, strings.Join(missing, ", "), hint)
}

func containsTable(missing []string, table string) bool {
	for _, m := range missing {
		if m == "table "+table {
			return true
		}
	}
	return false
}

// tableColumns returns the lower-cased column names of a table, none if it
// does not exist (sqlite compares column names case-insensitively).
func tableColumns(ctx context.Context, db *sql.DB, table string) (map[string]bool, error) {
	rows, err := db.QueryContext(ctx, "SELECT name FROM pragma_table_info(?)", table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		cols[strings.ToLower(name)] = true
	}
	return cols, rows.Err()
}

// sqliteError marks sqlite's "file is not a database" (e.g. a corrupt or
// encrypted file with a valid header) as ErrNotSQLite.
func sqliteError(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_NOTADB {
		return fmt.Errorf("%w: %v", ErrNotSQLite, err)
	}
	return err
}
