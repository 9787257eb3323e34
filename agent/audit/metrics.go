package audit

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics exports what the log and the use recorder did to records
// other than write them as given. Every label has a fixed set of values.
func RegisterMetrics(reg prometheus.Registerer, l *Log, u *UseRecorder) error {
	counter := func(name, help string, labels prometheus.Labels, fn func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(fn()) })
	}
	const (
		lost       = "tokenwarden_audit_records_lost_total"
		lostHelp   = "Audit records not written: queue_full (the writer fell behind), write_failed (the log refused the record or could not make it durable), disk_reserve (refused to keep free space for the store)."
		suppressed = "tokenwarden_audit_denies_suppressed_total"
		suppHelp   = "Deny records left out for being over a budget (client: one source's per-second budget; node: the node's); each is counted in an authz.deny_suppressed record."
		rewritten  = "tokenwarden_audit_fields_rewritten_total"
		rewrHelp   = "Audit record fields rewritten before writing: truncated (over their size bound) or redacted (token-shaped text replaced)."
	)
	cs := []prometheus.Collector{
		counter(lost, lostHelp, prometheus.Labels{"cause": "queue_full"}, func() uint64 { return u.Stats().Dropped }),
		counter(lost, lostHelp, prometheus.Labels{"cause": "write_failed"}, func() uint64 { return l.Stats().AppendsFailed }),
		counter(lost, lostHelp, prometheus.Labels{"cause": "disk_reserve"}, func() uint64 { return l.Stats().AppendsRefusedReserve }),
		counter(suppressed, suppHelp, prometheus.Labels{"budget": "client"}, func() uint64 { return u.Stats().SuppressedClient }),
		counter(suppressed, suppHelp, prometheus.Labels{"budget": "node"}, func() uint64 { return u.Stats().SuppressedGlobal }),
		counter(rewritten, rewrHelp, prometheus.Labels{"how": "truncated"}, func() uint64 { return l.Stats().FieldsTruncated }),
		counter(rewritten, rewrHelp, prometheus.Labels{"how": "redacted"}, func() uint64 { return l.Stats().FieldsRedacted }),
		counter("tokenwarden_audit_files_removed_total", "Rotated audit files removed to keep the log within its size budget (each removal is recorded as audit.prune).",
			nil, func() uint64 { return l.Stats().FilesRemoved }),
		counter("tokenwarden_audit_gaps_total", "Times the agent found, at start, its audit log behind the chain head recorded in the store (records cut or the log replaced; recorded as audit.gap).",
			nil, func() uint64 { return l.Stats().Gaps }),
		counter("tokenwarden_audit_head_errors_total", "Failed recordings of the audit chain head in the store.",
			nil, func() uint64 { return l.Stats().HeadErrors }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tokenwarden_audit_head_recorded_seq", Help: "Seq of the last audit chain head recorded in the store."},
			func() float64 { return float64(l.Stats().HeadSeq) }),
		counter("tokenwarden_audit_subscribers_cut_off_total", "Audit stream subscribers cut off for falling behind.",
			nil, func() uint64 { return l.Stats().CutOffSubscribers }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
