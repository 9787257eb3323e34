// Package etcdtest runs a real single-member etcd server in-process for
// tests of the etcd backend and of agents sharing one cluster.
package etcdtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Start runs etcd on 127.0.0.1 with its data in dir and returns the server
// (Close it) and its client endpoints. Ports are found free by listening on
// :0 and closing; another process may take one in between, so a failed
// start is tried again on fresh ports.
func Start(dir string) (*embed.Etcd, []string, error) {
	return StartWith(dir, Options{})
}

// Options change how StartWith runs the server.
type Options struct {
	// TLS, when set, serves the client URLs over https with its server
	// certificate, and requires a client certificate signed by its CA.
	TLS *PKI
}

// StartWith is Start with options.
func StartWith(dir string, o Options) (*embed.Etcd, []string, error) {
	var lastErr error
	for attempt := range 3 {
		ports, err := freePorts(2)
		if err != nil {
			return nil, nil, err
		}
		cfg := embed.NewConfig()
		cfg.Name = "tokenwarden-test"
		cfg.Dir = fmt.Sprintf("%s/data-%d", dir, attempt)
		cfg.LogLevel = "error"
		cfg.BcryptCost = 4 // the minimum: passwords here are throw-away, tests run under -race
		scheme := "http"
		if o.TLS != nil {
			scheme = "https"
			cfg.ClientTLSInfo = transport.TLSInfo{
				CertFile: o.TLS.ServerCert, KeyFile: o.TLS.ServerKey,
				TrustedCAFile: o.TLS.CA, ClientCertAuth: true,
			}
		}
		client := url.URL{Scheme: scheme, Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
		peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			var endpoints []string
			for _, u := range e.Clients {
				endpoints = append(endpoints, scheme+"://"+u.Addr().String())
			}
			return e, endpoints, nil
		case err := <-e.Err():
			lastErr = err
		case <-time.After(10 * time.Second):
			lastErr = errors.New("not ready within 10s")
		}
		e.Close()
	}
	return nil, nil, lastErr
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
