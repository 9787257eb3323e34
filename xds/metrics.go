package xds

import (
	"errors"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	nacks           *prometheus.CounterVec
	refused         *prometheus.CounterVec
	unknownNodes    prometheus.Counter
	connectedNodes  prometheus.Gauge
	snapshotVersion prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_xds_nacks_total",
			Help: "xDS responses a sidecar rejected (NACK), by resource type.",
		}, []string{"type"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokenwarden_xds_refused_streams_total",
			Help: "xDS streams refused, by reason: no_credential, bad_credential, service_mismatch, invalid_node, node_changed, node_limit, stream_limit.",
		}, []string{"reason"}),
		unknownNodes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokenwarden_xds_unknown_nodes_total",
			Help: "Sidecars given the deny-all configuration because the policy has no service for them, counted when they connect or a policy change drops their service.",
		}),
		connectedNodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_xds_connected_nodes",
			Help: "Sidecars (distinct node ids) with an open xDS stream.",
		}),
		snapshotVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokenwarden_xds_snapshot_version",
			Help: "Generation of the policy the xDS server serves: 1 for the first policy, plus one per applied change.",
		}),
	}
	// Start every type's series at zero so a rate() sees the first NACK.
	for _, t := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType} {
		m.nacks.WithLabelValues(typeName(t))
	}
	for _, r := range refusalReasons {
		m.refused.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.nacks, m.refused, m.unknownNodes, m.connectedNodes, m.snapshotVersion} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register xds metrics: %w", err)
	}
	return m, nil
}
