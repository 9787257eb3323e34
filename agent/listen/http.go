package listen

import (
	stdlog "log"
	"log/slog"
	"net/http"
	"strings"
	"sync"
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
		ErrorLog:          ErrorLog(nil),
	}
}

// ErrorLog is the ErrorLog of an HTTP server on a listener of the agent:
// its lines go to log at Warn, except failed TLS handshakes (a client
// without a certificate, with a wrong one, or not speaking TLS), which
// anyone who reaches the port can cause at will: one line per warnEvery
// says how many there were, so that a flood of them is not a log flood.
func ErrorLog(log *slog.Logger) *stdlog.Logger {
	if log == nil {
		log = slog.Default()
	}
	return stdlog.New(&errorLog{log: log}, "", 0)
}

type errorLog struct {
	log *slog.Logger

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (e *errorLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if !strings.HasPrefix(line, "http: TLS handshake error") {
		e.log.Warn(line)
		return len(p), nil
	}
	e.mu.Lock()
	now := time.Now()
	if now.Sub(e.last) < warnEvery {
		e.suppressed++
		e.mu.Unlock()
		return len(p), nil
	}
	n := e.suppressed
	e.last, e.suppressed = now, 0
	e.mu.Unlock()
	e.log.Warn("listener: TLS handshakes refused (client without a valid certificate, or not speaking TLS)",
		"example", line, "more_since_last_report", n)
	return len(p), nil
}
