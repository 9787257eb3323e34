package etcdtest

import (
	"io"
	"net"
	"sync"
)

// Link is a TCP proxy between one client and a server whose connection a
// test cuts and heals. Cut makes it a black hole, as a partition is: the
// connections stay open and every byte is dropped, new ones are accepted
// and go nowhere. Heal closes what was cut and forwards again.
type Link struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
}

// NewLink listens on a loopback port and forwards to target (host:port).
func NewLink(target string) (*Link, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	k := &Link{l: l, target: target, conns: map[net.Conn]struct{}{}}
	go k.serve()
	return k, nil
}

// Addr is where clients connect.
func (k *Link) Addr() string { return k.l.Addr().String() }

// Cut drops every byte from now on, both ways.
func (k *Link) Cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cut = true
}

// Heal closes every connection (whatever was in flight was lost) and
// forwards again.
func (k *Link) Heal() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cut = false
	for c := range k.conns {
		c.Close()
		delete(k.conns, c)
	}
}

// Close stops the proxy and closes every connection.
func (k *Link) Close() {
	k.l.Close()
	k.Heal()
}

func (k *Link) isCut() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cut
}

func (k *Link) track(cs ...net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range cs {
		k.conns[c] = struct{}{}
	}
	return !k.cut
}

func (k *Link) serve() {
	for {
		c, err := k.l.Accept()
		if err != nil {
			return
		}
		go k.handle(c)
	}
}

func (k *Link) handle(c net.Conn) {
	if !k.track(c) {
		io.Copy(io.Discard, c) // a black hole until Heal closes it
		c.Close()
		return
	}
	s, err := net.Dial("tcp", k.target)
	if err != nil {
		c.Close()
		return
	}
	k.track(s)
	go k.pipe(s, c)
	k.pipe(c, s)
}

// pipe copies from src to dst, dropping what it reads while cut.
func (k *Link) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !k.isCut() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
