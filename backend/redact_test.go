package backend

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	const secret = "SECRET"
	for _, tc := range []struct{ raw, want string }{
		{"https://sstate.yoctoproject.org/all/", "https://sstate.yoctoproject.org/all/"},
		{"https://mirror.example", "https://mirror.example"},
		{"http://user:SECRET@mirror.example:8080/a%20b/?sig=SECRET#frag", "http://mirror.example:8080/a%20b/"},
		{"https://SECRET@mirror.example/x", "https://mirror.example/x"},
		{"https://mirror.example/x?token=SECRET", "https://mirror.example/x"},
		{"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=SECRET&X-Amz-Signature=SECRET", "https://b.s3.amazonaws.com/k"},
		{"https://mirror.example/x#SECRET", "https://mirror.example/x"},
		{"s3://key:SECRET@bucket/prefix", "s3://bucket/prefix"},
		{"mirror.example/x?sig=SECRET", "mirror.example/x"},
		{"/u:pw-SECRET@host/?sig=SECRET", "(URL not shown: it may hold credentials)"},
		{"u:pw-SECRET@host/", "(URL not shown: it may hold credentials)"},
		{"mailto:x", "mailto:x"},
		{"http://u:pw-SECRET@host:bad/", "(unparsable URL, not shown)"},
		{"://u:pw-SECRET@host/", "(unparsable URL, not shown)"},
		{"https:///pw-SECRET@x", "(URL not shown: it may hold credentials)"},
		{"", ""},
	} {
		got := RedactURL(tc.raw)
		if got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.raw, got, tc.want)
		}
		if strings.Contains(got, secret) {
			t.Errorf("RedactURL(%q) = %q shows the secret", tc.raw, got)
		}
	}
}
