package access

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Peer is who is at the other end of a local connection.
type Peer struct {
	Caller
	// UIDOnly: only the uid is known (a loopback TCP client, found in
	// /proc/net/tcp): GID and PID mean nothing, so only root and the
	// rule's uid pass.
	UIDOnly bool
}

func (p Peer) String() string {
	if p.UIDOnly {
		return fmt.Sprintf("uid %d (TCP)", p.UID)
	}
	return fmt.Sprintf("uid %d gid %d pid %d", p.UID, p.GID, p.PID)
}

// AllowsPeer reports whether p may publish.
func (r Rule) AllowsPeer(p Peer) bool {
	if p.UIDOnly {
		return p.UID == 0 || p.UID == r.UID
	}
	return r.Allows(p.Caller)
}

// ErrPeerUnknown says who is at the other end of a connection cannot be
// told: a TCP client that is not on this host's loopback, or whose socket
// is not (or no longer) in /proc/net/tcp. Callers treat it as nobody.
var ErrPeerUnknown = errors.New("peer unknown")

// PeerOf returns who is at the other end of c: the SO_PEERCRED of a unix
// socket (uid, gid and pid at connect time), or for a loopback TCP
// connection the uid owning the client's socket, from the row of
// /proc/net/tcp or tcp6 whose local address is c's remote address (the
// kernel has no credentials for TCP; the row's uid is that of the
// process that created the socket).
func PeerOf(c net.Conn) (Peer, error) {
	switch c := c.(type) {
	case *net.UnixConn:
		return unixPeer(c)
	case *net.TCPConn:
		return tcpPeer(c)
	default:
		return Peer{}, fmt.Errorf("%w: a %T", ErrPeerUnknown, c)
	}
}

func unixPeer(c *net.UnixConn) (Peer, error) {
	sc, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := sc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	if serr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", serr)
	}
	// a pid of 0 (another pid namespace) leaves supplementary groups out
	return Peer{Caller: Caller{UID: cred.Uid, GID: cred.Gid, PID: uint32(max(cred.Pid, 0))}}, nil
}

// procNetTCP are the kernel's tables of TCP sockets (a variable for
// tests).
var procNetTCP = []string{"/proc/net/tcp", "/proc/net/tcp6"}

func tcpPeer(c *net.TCPConn) (Peer, error) {
	remote, ok1 := c.RemoteAddr().(*net.TCPAddr)
	local, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return Peer{}, fmt.Errorf("%w: no TCP addresses", ErrPeerUnknown)
	}
	if !remote.IP.IsLoopback() {
		return Peer{}, fmt.Errorf("%w: %s is not a loopback address", ErrPeerUnknown, remote)
	}
	for _, table := range procNetTCP {
		uid, found, err := findSocketUID(table, remote, local)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return Peer{}, err
		}
		if found {
			return Peer{Caller: Caller{UID: uid}, UIDOnly: true}, nil
		}
	}
	return Peer{}, fmt.Errorf("%w: no socket %s -> %s in /proc/net/tcp", ErrPeerUnknown, remote, local)
}

// findSocketUID finds the socket whose local address is local and remote
// address remote in a /proc/net/tcp table and returns its uid. Each line:
// "sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
// inode ...", addresses as hex words in host byte order, ports big-endian.
func findSocketUID(table string, local, remote *net.TCPAddr) (uint32, bool, error) {
	data, err := os.ReadFile(table)
	if err != nil {
		return 0, false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Scan() // header
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 8 {
			continue
		}
		l, err1 := parseProcAddr(f[1])
		r, err2 := parseProcAddr(f[2])
		if err1 != nil || err2 != nil {
			return 0, false, fmt.Errorf("%s: bad line %q", table, sc.Bytes())
		}
		if !sameAddr(l, local) || !sameAddr(r, remote) {
			continue
		}
		uid, err := strconv.ParseUint(string(f[7]), 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("%s: bad uid %q", table, f[7])
		}
		return uint32(uid), true, nil
	}
	return 0, false, sc.Err()
}

func sameAddr(a, b *net.TCPAddr) bool { return a.Port == b.Port && a.IP.Equal(b.IP) }

// parseProcAddr parses "0100007F:1F90" (IPv4) or 32 hex digits and a port
// (IPv6): the kernel prints each 32-bit word of the address as a number
// in host byte order.
func parseProcAddr(s []byte) (*net.TCPAddr, error) {
	h, p, ok := bytes.Cut(s, []byte(":"))
	if !ok || (len(h) != 8 && len(h) != 32) {
		return nil, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(string(h))
	if err != nil {
		return nil, err
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(string(p), 16, 16)
	if err != nil {
		return nil, err
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, nil
}
