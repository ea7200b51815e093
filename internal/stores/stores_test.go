package stores

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sstatefs/sstatefs/backend"
	"github.com/sstatefs/sstatefs/internal/config"
	"github.com/sstatefs/sstatefs/internal/testutil"
)

// TestOpenReadOnly: a store configured read_only = true refuses every
// write before it reaches the store, local or on a real S3 server, and
// reports itself read-only; the same store without it takes writes.
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	env := testutil.S3Server(t)
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))

	fileDir := t.TempDir()
	bucket := env.NewBucket(t)
	for _, tc := range []struct {
		name string
		sc   config.StoreConfig
		dir  string // where the store keeps its objects on disk
	}{
		{"file", config.StoreConfig{URL: "file://" + fileDir}, fileDir},
		{"s3", config.StoreConfig{URL: "s3://" + bucket + "/p", Endpoint: env.Endpoint, PathStyle: true}, filepath.Join(env.Dir, bucket, "p")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ro := range []bool{false, true} { // the writable store first: it leaves y for Delete
				sc := tc.sc
				sc.ReadOnly = ro
				config.StoreDefaults(&sc)
				sc.Timeout.Duration = 10 * time.Second
				s, err := Open(ctx, sc)
				if err != nil {
					t.Fatal(err)
				}
				if backend.IsReadOnly(s) != ro {
					t.Errorf("read_only = %v: IsReadOnly %v", ro, !ro)
				}
				key := "ab/cd/sstate:x_populate_sysroot.tar.zst"
				if !ro {
					key = "ab/cd/sstate:y_populate_sysroot.tar.zst"
				}
				err = s.Create(ctx, key, strings.NewReader("data"), 4)
				_, statErr := os.Stat(filepath.Join(tc.dir, key))
				switch {
				case ro && (!errors.Is(err, backend.ErrReadOnly) || !strings.Contains(err.Error(), key)):
					t.Errorf("read_only: Create = %v, want ErrReadOnly naming %s", err, key)
				case ro && !errors.Is(statErr, os.ErrNotExist):
					t.Errorf("read_only: the write reached the store: %v", statErr)
				case !ro && (err != nil || statErr != nil):
					t.Errorf("writable: Create = %v, object: %v", err, statErr)
				}
				if ro {
					y := "ab/cd/sstate:y_populate_sysroot.tar.zst"
					if err := s.Delete(ctx, y); !errors.Is(err, backend.ErrReadOnly) {
						t.Errorf("read_only: Delete = %v", err)
					}
					if _, err := os.Stat(filepath.Join(tc.dir, y)); err != nil {
						t.Errorf("read_only: Delete reached the store: %v", err)
					}
				}
			}
		})
	}
}
