package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Results collects the measurements of every run and renders the table.
type Results struct {
	Header  []string // lines describing the run (parameters, versions)
	Notes   []string // general remarks (skipped systems, ...)
	rows    []Row
	columns []string // systems, in table order
	peers   []string // systems sstatefs is compared with, one ratio column each
	cells   map[string]map[string][]Measurement
}

// NewResults makes an empty table with these system columns; peers get a
// ratio column each ("sstatefs vs rclone"), the reference one more.
func NewResults(columns, peers []string) *Results {
	return &Results{columns: columns, peers: peers, cells: map[string]map[string][]Measurement{}}
}

// AddRow adds a row (once; later calls with the same ID are ignored).
func (r *Results) AddRow(row Row) {
	for _, x := range r.rows {
		if x.ID == row.ID {
			return
		}
	}
	r.rows = append(r.rows, row)
}

// Add records one run's measurement of a row on a system.
func (r *Results) Add(rowID, system string, m Measurement) {
	if r.cells[rowID] == nil {
		r.cells[rowID] = map[string][]Measurement{}
	}
	r.cells[rowID][system] = append(r.cells[rowID][system], m)
}

// Get returns what was recorded for a row and system.
func (r *Results) Get(rowID, system string) []Measurement { return r.cells[rowID][system] }

// summary is what a cell shows: the median of the runs that produced a
// value, or why there is none.
type summary struct {
	value  float64
	ok     bool
	approx bool
	na     bool
	text   string   // shown instead of a value
	notes  []string // footnotes
}

func summarize(ms []Measurement) summary {
	var s summary
	if len(ms) == 0 {
		return summary{na: true}
	}
	var vals []float64
	var errs []string
	for _, m := range ms {
		switch {
		case m.Err != nil:
			errs = append(errs, m.Err.Error())
		case m.NA:
			s.na = true
		case m.Note != "" && m.Value == 0 && !m.Approx:
			s.text = m.Note
		default:
			vals = append(vals, m.Value)
			s.approx = s.approx || m.Approx
			if m.Note != "" && !slices.Contains(s.notes, m.Note) {
				s.notes = append(s.notes, m.Note)
			}
		}
	}
	if len(vals) > 0 {
		s.value, s.ok, s.na = median(vals), true, false
		s.text = ""
		if len(vals) < len(ms) && len(errs) > 0 {
			s.notes = append(s.notes, fmt.Sprintf("%d of %d runs failed: %s", len(errs), len(ms), errs[0]))
		} else if len(ms) > 1 {
			// a median of repeated runs: say how far apart they were
			lo, hi := slices.Min(vals), slices.Max(vals)
			if lo > 0 && hi/lo > 1.5 {
				s.notes = append(s.notes, fmt.Sprintf("runs ranged from %s to %s", formatValue(lo), formatValue(hi)))
			}
		}
		return s
	}
	if len(errs) > 0 {
		s.na = false
		s.text = "error"
		s.notes = append(s.notes, errs[0])
	}
	return s
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// ratio is how many times better sstatefs did than other on a row: for
// throughputs sstatefs ÷ other, for times and sizes other ÷ sstatefs, so
// that above 1 always means sstatefs is better.
func ratio(row Row, sstatefs, other summary) (float64, bool) {
	if !sstatefs.ok || !other.ok || sstatefs.value <= 0 || other.value <= 0 {
		return 0, false
	}
	if row.HigherBetter {
		return sstatefs.value / other.value, true
	}
	return other.value / sstatefs.value, true
}

// grid is the table as strings, with its footnotes.
func (r *Results) grid() ([][]string, []string) {
	head := []string{"workload"}
	head = append(head, r.columns...)
	for _, p := range r.peers {
		head = append(head, "vs "+p)
	}
	head = append(head, "vs reference")
	out := [][]string{head}
	var notes []string
	mark := func(text string, ns []string) string {
		for _, n := range ns {
			i := slices.Index(notes, n)
			if i < 0 {
				notes = append(notes, n)
				i = len(notes) - 1
			}
			text += fmt.Sprintf(" [%d]", i+1)
		}
		return text
	}
	for _, row := range r.rows {
		line := []string{row.Title + " (" + row.Unit + ")"}
		sums := map[string]summary{}
		for _, c := range r.columns {
			s := summarize(r.cells[row.ID][c])
			sums[c] = s
			var text string
			switch {
			case s.ok:
				text = formatValue(s.value)
				if s.approx {
					text = "~" + text
				}
			case s.text != "":
				text = s.text
			default:
				text = "–"
			}
			line = append(line, mark(text, s.notes))
		}
		for _, p := range append(slices.Clone(r.peers), row.Ref) {
			if x, ok := ratio(row, sums["sstatefs"], sums[p]); ok && p != "" {
				t := formatValue(x) + "×"
				if sums["sstatefs"].approx || sums[p].approx {
					t = "~" + t
				}
				line = append(line, t)
			} else {
				line = append(line, "–")
			}
		}
		if row.Ref != "" && line[len(line)-1] != "–" {
			line[len(line)-1] += " (" + row.Ref + ")"
		}
		out = append(out, line)
	}
	return out, notes
}

const ratioNote = "Values are medians of the runs. \"vs X\" says how many times better sstatefs did than X: " +
	"throughput sstatefs ÷ X, times and memory X ÷ sstatefs (above 1: sstatefs is better). " +
	"~ marks a value extrapolated from part of the work."

// Text renders the table for a terminal.
func (r *Results) Text() string {
	g, notes := r.grid()
	width := make([]int, len(g[0]))
	for _, line := range g {
		for i, c := range line {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, h := range r.Header {
		b.WriteString(h + "\n")
	}
	b.WriteString("\n")
	for li, line := range g {
		for i, c := range line {
			pad := width[i] - utf8.RuneCountInString(c)
			if i == 0 {
				b.WriteString(c + strings.Repeat(" ", pad))
			} else {
				b.WriteString("  " + strings.Repeat(" ", pad) + c)
			}
		}
		b.WriteString("\n")
		if li == 0 {
			total := 0
			for _, w := range width {
				total += w + 2
			}
			b.WriteString(strings.Repeat("-", total-2) + "\n")
		}
	}
	b.WriteString("\n" + ratioNote + "\n")
	for i, n := range notes {
		fmt.Fprintf(&b, "[%d] %s\n", i+1, n)
	}
	for _, n := range r.Notes {
		b.WriteString("Note: " + n + "\n")
	}
	return b.String()
}

// Markdown renders the table for BENCHMARKS.md.
func (r *Results) Markdown() string {
	g, notes := r.grid()
	var b strings.Builder
	for _, h := range r.Header {
		b.WriteString("- " + mdEscape(h) + "\n")
	}
	b.WriteString("\n")
	for li, line := range g {
		b.WriteString("|")
		for _, c := range line {
			b.WriteString(" " + mdEscape(c) + " |")
		}
		b.WriteString("\n")
		if li == 0 {
			b.WriteString("|---|")
			for range line[1:] {
				b.WriteString("---:|")
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n" + ratioNote + "\n")
	if len(notes) > 0 {
		b.WriteString("\n")
		for i, n := range notes {
			fmt.Fprintf(&b, "%d. %s\n", i+1, mdEscape(n))
		}
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range r.Notes {
			b.WriteString("- " + mdEscape(n) + "\n")
		}
	}
	return b.String()
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

// formatValue prints about three significant digits.
func formatValue(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return thousands(int(math.Round(v)))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a >= 0.01:
		return fmt.Sprintf("%.3f", v)
	case a == 0:
		return "0"
	}
	return fmt.Sprintf("%.2g", v)
}

// thousands prints an integer with commas: 8,691.
func thousands(n int) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatBytes prints a size in binary units: 64 MiB, 1.0 GiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), ""
	for _, x := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		u = x
		if v < unit {
			break
		}
	}
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f %s", v, u)
	}
	return fmt.Sprintf("%.1f %s", v, u)
}

// parseBytes reads a size: 1GiB, 64MiB, 500MB, 1e9, 4096.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{
		{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3},
		{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"k", 1 << 10}, {"B", 1},
	}
	mult := 1.0
	for _, u := range units {
		if r, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(r), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("size %q: want a positive number with an optional unit (64MiB, 1GiB, 500MB)", s)
	}
	if v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: too big", s)
	}
	return int64(v * mult), nil
}
