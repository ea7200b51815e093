package access

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sstatefs/sstatefs/internal/testutil"
)

// TestPeerHelper is the client of TestPeerOf, run as nobody: it dials
// ACCESS_PEER_DIAL ("network address"), says "hi" and waits until the
// server closes the connection.
func TestPeerHelper(t *testing.T) {
	dial := os.Getenv("ACCESS_PEER_DIAL")
	if dial == "" {
		t.Skip("helper of TestPeerOf")
	}
	network, addr, _ := strings.Cut(dial, " ")
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hi\n"))
	c.Read(make([]byte, 1))
}

// acceptFromNobody accepts the connection of a helper run as nobody and
// returns it with the helper's pid; the helper exits when the connection
// is closed.
func acceptFromNobody(t *testing.T, ln net.Listener, network, addr string) (net.Conn, int) {
	t.Helper()
	cmd := testutil.NobodyHelper(t, "TestPeerHelper", "ACCESS_PEER_DIAL="+network+" "+addr)
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// the helper has connected once its line arrives
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatalf("helper: %v %s", err, out.String())
	}
	return c, cmd.Process.Pid
}

func TestPeerOf(t *testing.T) {
	rule := Rule{UID: 1000, GID: testutil.Nobody}
	t.Run("unix", func(t *testing.T) {
		sock := filepath.Join(testutil.OpenDir(t), "s")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		os.Chmod(sock, 0o666)
		c, pid := acceptFromNobody(t, ln, "unix", sock)
		p, err := PeerOf(c)
		if err != nil {
			t.Fatal(err)
		}
		if p.UID != testutil.Nobody || p.GID != testutil.Nobody || p.PID != uint32(pid) || p.UIDOnly {
			t.Errorf("peer %+v, want uid and gid %d, pid %d", p, testutil.Nobody, pid)
		}
		if !rule.AllowsPeer(p) {
			t.Errorf("%v refused by %v", p, rule) // its primary group is the rule's
		}
	})
	t.Run("tcp", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, _ := acceptFromNobody(t, ln, "tcp", ln.Addr().String())
		p, err := PeerOf(c)
		if err != nil {
			t.Fatal(err)
		}
		if p.UID != testutil.Nobody || !p.UIDOnly {
			t.Errorf("peer %+v, want uid %d known by uid only", p, testutil.Nobody)
		}
		if rule.AllowsPeer(p) {
			t.Errorf("%v allowed by %v: the group of a TCP client is unknown", p, rule)
		}
		// and this process's own connection is this process's uid
		go func() {
			if c2, err := net.Dial("tcp", ln.Addr().String()); err == nil {
				defer c2.Close()
				c2.Read(make([]byte, 1))
			}
		}()
		c2, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		if p, err := PeerOf(c2); err != nil || p.UID != uint32(os.Getuid()) {
			t.Errorf("own connection: %+v %v, want uid %d", p, err, os.Getuid())
		}
	})
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80",
		"00000000000000000000000001000000:01BB": "[::1]:443",
	} {
		a, err := parseProcAddr([]byte(in))
		if err != nil || a.String() != want {
			t.Errorf("parseProcAddr(%q) = %v %v, want %s", in, a, err, want)
		}
	}
	for _, in := range []string{"", "0100007F", "0100007:1F90", "zz00007F:1F90", "0100007F:zz"} {
		if a, err := parseProcAddr([]byte(in)); err == nil {
			t.Errorf("parseProcAddr(%q) = %v", in, a)
		}
	}
}
