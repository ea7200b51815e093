package main

import (
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/internal/mount"
	"github.com/sstatefs/sstatefs/publish"
)

// TestPrintLiveStatusChanged: publications dropped because their file
// changed after bitbake published them are counted in the status.
func TestPrintLiveStatusChanged(t *testing.T) {
	st := mount.LiveStatus{Uploads: publish.Stats{Uploaded: 3, Conflicts: 1, Changed: 2}}
	var out strings.Builder
	printLiveStatus(&out, st, time.Now())
	if want := "1 kept by the store (other content), 2 dropped (file changed after publication)"; !strings.Contains(out.String(), want) {
		t.Errorf("status output lacks %q:\n%s", want, out.String())
	}
}
