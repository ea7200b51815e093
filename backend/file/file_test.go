package file

import (
	"testing"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/backend/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) backend.Store {
		s, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storetest.Options{})
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"file:///srv/sstate", "/srv/sstate", true},
		{"file://localhost/srv/sstate/", "/srv/sstate", true},
		{"file://host/srv", "", false},
		{"file:relative", "", false},
		{"s3://b/p", "", false},
	} {
		got, err := ParseURL(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseURL(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestNotReadOnly(t *testing.T) {
	s, _ := New(t.TempDir())
	if backend.IsReadOnly(&backend.Timeout{Store: s}) {
		t.Fatal("file store reported read-only")
	}
}
