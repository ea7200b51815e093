package mountinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAt(t *testing.T) {
	table := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(table, []byte(`22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw
98 22 0:50 / /srv/with\040space rw,nosuid,nodev - fuse.sstatefs /var/cache/sstate\040fs rw,user_id=0
99 22 0:51 / /odd rw
`), 0o644)
	old := File
	File = table
	t.Cleanup(func() { File = old })
	for _, tc := range []struct {
		dir, fstype, source string
		ok                  bool
	}{
		{"/srv/with space", "fuse.sstatefs", "/var/cache/sstate fs", true},
		{"/proc", "proc", "proc", true},
		{"/odd", "unknown", "", true},
		{"/srv", "", "", false},
		{`/srv/with\040space`, "", "", false},
	} {
		fstype, source, ok := At(tc.dir)
		if fstype != tc.fstype || source != tc.source || ok != tc.ok {
			t.Errorf("At(%q) = %q, %q, %v; want %q, %q, %v", tc.dir, fstype, source, ok, tc.fstype, tc.source, tc.ok)
		}
	}
	if got := Under("/srv"); len(got) != 1 || got[0] != "/srv/with space" {
		t.Errorf("Under(/srv) = %q", got)
	}
	if got := Under("/odd"); len(got) != 1 || got[0] != "/odd" {
		t.Errorf("Under(/odd) = %q", got)
	}
	if got := Under("/sr"); len(got) != 0 {
		t.Errorf("Under(/sr) = %q", got)
	}
}
