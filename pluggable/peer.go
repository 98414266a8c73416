package pluggable

import (
	"net"
	"sync"
	"sync/atomic"
)

// A daprd is told apart from another by its process id, read from the
// socket's peer credentials when it connects. The process, not the
// connection, is the identity: daprd's gRPC client drops a connection after
// 30 idle minutes and dials a new one on the next call, without calling Init
// again. Where the component cannot see the caller's process (another PID
// namespace, as between the containers of a Kubernetes pod), the id is 0 and
// every caller counts as one daprd, which is what a sidecar is.
//
// conn numbers the connection itself, from 1. daprd dials a connection of
// its own for each Component it initialises, and closes it when it closes
// the Component (a hot reload that edits, renames or removes it); see
// Server.connClosed.
type peerAddr struct {
	net.Addr
	pid  int
	conn uint64
}

// lastConn numbers the accepted connections.
var lastConn atomic.Uint64

// newPeerConn tags c with pid and a new connection number; closed is told
// when c closes.
func newPeerConn(c net.Conn, pid int, closed func(peerAddr)) *peerConn {
	return &peerConn{Conn: c, addr: peerAddr{Addr: c.RemoteAddr(), pid: pid, conn: lastConn.Add(1)}, closed: closed}
}

// peerListener tags every accepted connection with its caller's process id
// and tells the server when the connection opens and closes.
type peerListener struct {
	net.Listener
	opened, closed func(peerAddr)
}

func (l *peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := newPeerConn(c, peerPID(c), l.closed)
	l.opened(pc.addr)
	return pc, nil
}

// peerConn reports its own close once: gRPC closes a connection's net.Conn
// whichever side ended it, and only then.
type peerConn struct {
	net.Conn
	addr   peerAddr
	closed func(peerAddr)
	once   sync.Once
}

func (c *peerConn) RemoteAddr() net.Addr { return c.addr }

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.closed(c.addr) })
	return err
}

// peerPID is the process id of the process at the other end of a Unix
// socket connection, or 0 when it cannot be known.
func peerPID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	_ = raw.Control(func(fd uintptr) { pid = socketPeerPID(int(fd)) })
	return pid
}
