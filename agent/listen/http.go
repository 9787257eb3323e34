package listen

import (
	"net/http"
	"time"
)

// HTTPServer is an http.Server for h with the limits of the admin and
// metrics listeners. Their clients (the CLI, kubelet probes, Prometheus)
// send a request at once and read the answer at once; a client that
// trickles either is dropped. Request bodies are bounded by the admin API
// itself (64 KiB).
func HTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 3 * time.Second,  // drops clients that trickle headers (slowloris)
		ReadTimeout:       10 * time.Second, // a whole request, body included
		WriteTimeout:      30 * time.Second, // an answer (a scrape, a token list); the audit stream re-arms it before each write
		IdleTimeout:       60 * time.Second, // a keep-alive connection idle this long is closed
		MaxHeaderBytes:    16 << 10,         // a bearer token and a few ordinary headers
	}
}
