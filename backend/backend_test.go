package backend_test

import (
	"errors"
	"testing"

	"github.com/sstatefs/sstatefs/backend"
)

func TestCheckKey(t *testing.T) {
	for key, ok := range map[string]bool{
		"ab/cd/sstate:zlib:x:1:r0:x:14:abcd_package.tar.zst": true,
		".sstatefs/index/snapshot.v1":                        true,
		"":                                                   false,
		"/ab/cd/x":                                           false,
		"ab/../x":                                            false,
		"ab//x":                                              false,
		"ab/cd/x\x00":                                        false,
		"ab/cd/sstate:zlib\nfake:x":                          false,
		"ab/cd/x\r":                                          false,
		"ab/cd/x\x7f":                                        false,
	} {
		err := backend.CheckKey(key)
		if (err == nil) != ok || (err != nil && !errors.Is(err, backend.ErrInvalidKey)) {
			t.Errorf("CheckKey(%q) = %v", key, err)
		}
	}
}
