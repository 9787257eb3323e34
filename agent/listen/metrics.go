package listen

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the listener metrics. Label values are bounded: the listener
// names the agent gives (five) and the refusal reasons (five).
type Metrics struct {
	open    *prometheus.GaugeVec
	limit   *prometheus.GaugeVec
	refused *prometheus.CounterVec

	mu        sync.Mutex
	listeners map[string]*listenerMetrics
}

// NewMetrics registers the listener metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_listener_connections",
			Help: "Connections a listener holds open now.",
		}, []string{"listener"}),
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokenwarden_listener_connection_limit",
			Help: "Most connections a listener holds at once; more are closed on accept.",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_listener_refused_total",
			Help: "Connections and gRPC calls refused, by listener and reason (listener_full, client_full, fd_exhausted, calls_full, client_calls_full).",
		}, []string{"listener", "reason"}),
		listeners: map[string]*listenerMetrics{},
	}
	for _, c := range []prometheus.Collector{m.open, m.limit, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// listener returns name's series, created once with every reason at 0.
func (m *Metrics) listener(name string, limit int) *listenerMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	lm := m.listeners[name]
	if lm == nil {
		lm = &listenerMetrics{open: m.open.WithLabelValues(name), refused: map[string]prometheus.Counter{}}
		for _, r := range []string{ReasonListenerFull, ReasonClientFull, ReasonFDExhausted, ReasonCallsFull, ReasonClientCallsFull} {
			lm.refused[r] = m.refused.WithLabelValues(name, r)
		}
		m.listeners[name] = lm
	}
	if limit > 0 {
		m.limit.WithLabelValues(name).Set(float64(limit))
	}
	return lm
}

// listenerMetrics are one listener's series; a nil one records nothing.
type listenerMetrics struct {
	open    prometheus.Gauge
	refused map[string]prometheus.Counter
}

func (lm *listenerMetrics) opened() {
	if lm != nil {
		lm.open.Inc()
	}
}

func (lm *listenerMetrics) closed() {
	if lm != nil {
		lm.open.Dec()
	}
}

func (lm *listenerMetrics) refuse(reason string) {
	if lm != nil {
		lm.refused[reason].Inc()
	}
}
