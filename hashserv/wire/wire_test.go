package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestReadLine(t *testing.T) {
	in := "a\n\nb c \r\n" + strings.Repeat("x", 10) + "\n" + strings.Repeat("y", 11) + "\nz"
	r := NewLineReader(strings.NewReader(in), 10)
	for _, want := range []string{"a", "", "b c \r", strings.Repeat("x", 10)} {
		l, err := r.ReadLine()
		if err != nil || string(l) != want {
			t.Fatalf("got %q, %v; want %q", l, err, want)
		}
	}
	if _, err := r.ReadLine(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("11 bytes: %v", err)
	}
	r = NewLineReader(strings.NewReader("z"), 10)
	if _, err := r.ReadLine(); !errors.Is(err, ErrPartialLine) {
		t.Fatalf("partial line: %v", err)
	}
	if _, err := NewLineReader(strings.NewReader(""), 10).ReadLine(); !errors.Is(err, io.EOF) {
		t.Fatalf("empty input: %v", err)
	}
}

// The chunking boundary is bitbake's: a message of 32766 characters is one
// line, one of 32767 is chunked; bitbake counts characters, not bytes.
func TestAppendMessage(t *testing.T) {
	for _, n := range []int{0, 10, ChunkSize - 3, ChunkSize - 2, ChunkSize - 1, ChunkSize, 2*ChunkSize - 2, 70000, 100000} {
		for _, multi := range []bool{false, true} {
			msg := strings.Repeat("x", n)
			if multi {
				msg = strings.Repeat("é", n/2) + strings.Repeat("x", n-n/2)
			}
			enc := AppendMessage([]byte("prefix\n"), []byte(msg))
			lines := strings.Split(strings.TrimSuffix(strings.TrimPrefix(string(enc), "prefix\n"), "\n"), "\n")
			if n < ChunkSize-1 {
				if len(lines) != 1 || lines[0] != msg {
					t.Errorf("%d characters: sent as %d lines", n, len(lines))
				}
				continue
			}
			if lines[0] != `{"chunk-stream": null}` || lines[len(lines)-1] != "" {
				t.Fatalf("%d characters: framing %q ... %q", n, lines[0], lines[len(lines)-1])
			}
			body := lines[1 : len(lines)-1]
			for i, l := range body {
				if c := utf8.RuneCountInString(l); c > ChunkSize-1 || c == 0 || (i < len(body)-1 && c != ChunkSize-1) {
					t.Errorf("%d characters: line %d has %d characters", n, i, c)
				}
			}
			if strings.Join(body, "") != msg {
				t.Errorf("%d characters: chunks do not join to the message", n)
			}
		}
	}
}

// TestReadMessage: what AppendMessage frames, ReadMessage joins, and the
// limits and truncations end the read with their errors.
func TestReadMessage(t *testing.T) {
	big, _ := json.Marshal(map[string]string{"k": strings.Repeat("é", 50000)})
	var in []byte
	in = AppendMessage(in, []byte(`{"ping": {}}`))
	in = AppendMessage(in, big)
	in = AppendMessage(in, []byte(`"ok"`))
	r := NewLineReader(bytes.NewReader(in), MaxLine)
	for _, want := range [][]byte{[]byte(`{"ping": {}}`), big, []byte(`"ok"`)} {
		got, err := ReadMessage(r, 1<<20)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("ReadMessage = %.40q, %v; want %.40q", got, err, want)
		}
	}
	if _, err := ReadMessage(r, 1<<20); !errors.Is(err, io.EOF) {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"too long", string(AppendMessage(nil, big)), ErrMessageTooLong},
		{"cut in the chunks", "{\"chunk-stream\": null}\n{\"a\":", ErrPartialMessage},
		{"cut before the end", "{\"chunk-stream\": null}\n{\"a\": 1}\n", ErrPartialMessage},
		{"invalid UTF-8 in a chunk", "{\"chunk-stream\": null}\n\xff\n\n", ErrInvalidUTF8},
		{"invalid UTF-8", "\xff\n", ErrInvalidUTF8},
		{"line too long", strings.Repeat("x", MaxLine+1) + "\n", ErrLineTooLong},
	} {
		_, err := ReadMessage(NewLineReader(strings.NewReader(tc.in), MaxLine), 1000)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestReadHandshake(t *testing.T) {
	h, err := ReadHandshake(NewLineReader(strings.NewReader(ClientHello), MaxLine))
	if err != nil || len(h) != 1 || h["needs-headers"] != "false" {
		t.Fatalf("ClientHello: %v, %v", h, err)
	}
	h, err = ReadHandshake(NewLineReader(strings.NewReader("OEHASHEQUIV 1.1 \nNeeds-Headers:  true \n\n"), MaxLine))
	if err != nil || h["needs-headers"] != "true" {
		t.Fatalf("headers: %v, %v", h, err)
	}
	for _, in := range []string{
		"\n", "OEHASHEQUIV\n\n", "OEHASHEQUIV 1.0\n\n", "OEHASHEQUIV 1.2\n\n", "OEHASHEQUIV x\n\n",
		"HTTP/1.1 1.1\n\n", "OEHASHEQUIV 1.1\nno colon\n\n", "OEHASHEQUIV 1.1\n" + strings.Repeat("a: b\n", 65) + "\n",
	} {
		if _, err := ReadHandshake(NewLineReader(strings.NewReader(in), MaxLine)); !errors.Is(err, ErrHandshake) {
			t.Errorf("%.40q: %v, want ErrHandshake", in, err)
		}
	}
	if _, err := ReadHandshake(NewLineReader(strings.NewReader("OEHASHEQUIV 1.1\n"), MaxLine)); !errors.Is(err, io.EOF) {
		t.Errorf("cut handshake: %v, want io.EOF", err)
	}
}

// FuzzReadMessage feeds arbitrary bytes to ReadMessage: it must return
// messages or errors, never panic, never accept a line or a message over
// its limits; and any valid UTF-8 text survives framing and reading.
func FuzzReadMessage(f *testing.F) {
	for _, s := range []string{
		`"ok"` + "\n" + `{"alive": true}` + " \t\n",
		"{\"chunk-stream\": null}\n{\"a\": \n\"b\"}\n \n",
		"{\"chunk-stream\": 1, \"x\": 2}\n" + strings.Repeat("z", 199) + "\n",
		"{\"chunk-stream\": null}\n" + strings.Repeat("é", 120) + "\n\n",
		"ok\r\nEND\n\x1c\n",
		"partial",
	} {
		f.Add([]byte(s))
	}
	const maxLine, maxMessage = 200, 1000
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewLineReader(bytes.NewReader(data), maxLine)
		for range 1000 {
			m, err := ReadMessage(r, maxMessage)
			if err != nil {
				break
			}
			if len(m) > maxMessage || len(r.buf) > maxLine {
				t.Fatalf("accepted a message of %d bytes, a line of %d", len(m), len(r.buf))
			}
		}
		if !utf8.Valid(data) || bytes.ContainsAny(data, "\n") {
			return
		}
		// One message per line: any text without a newline, framed, reads
		// back as it was, up to trailing whitespace that bitbake strips.
		want := bytes.TrimRightFunc(data, IsSpace)
		if len(want) == 0 || isChunkStream(string(want)) {
			return
		}
		got, err := ReadMessage(NewLineReader(bytes.NewReader(AppendMessage(nil, want)), MaxLine), 1<<20)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("round trip of %q: %q, %v", want, got, err)
		}
	})
}
