package audit

import "sync/atomic"

// counters are what a Log did to records other than write them as given,
// for metrics: none of these should go unnoticed.
type counters struct {
	truncated      atomic.Uint64 // fields cut to their bound
	redacted       atomic.Uint64 // token-shaped strings replaced
	failedAppends  atomic.Uint64 // records refused or not made durable
	refusedReserve atomic.Uint64 // records refused to keep the disk reserve
	filesRemoved   atomic.Uint64 // rotated files removed by the size budget
	gaps           atomic.Uint64 // gaps CheckHead found
	headErrors     atomic.Uint64 // failed head recordings
	headSeq        atomic.Uint64 // the last head recorded in the store
}

// Stats is a snapshot of a Log's counters.
type Stats struct {
	// FieldsTruncated counts fields cut to their bound; FieldsRedacted
	// counts token-shaped strings replaced by RedactedToken.
	FieldsTruncated, FieldsRedacted uint64
	// AppendsFailed counts records Append did not make durable (write or
	// sync errors, a closed or failed log, invalid records);
	// AppendsRefusedReserve those refused to keep the disk reserve.
	AppendsFailed, AppendsRefusedReserve uint64
	// FilesRemoved counts rotated files removed by the size budget.
	FilesRemoved uint64
	// CutOffSubscribers counts subscribers cut off for falling behind.
	CutOffSubscribers uint64
	// Gaps counts gaps CheckHead found; HeadErrors failed recordings of
	// the head; HeadSeq is the last head recorded in the store.
	Gaps, HeadErrors, HeadSeq uint64
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	return Stats{
		FieldsTruncated:       l.truncated.Load(),
		FieldsRedacted:        l.redacted.Load(),
		AppendsFailed:         l.failedAppends.Load(),
		AppendsRefusedReserve: l.refusedReserve.Load(),
		FilesRemoved:          l.filesRemoved.Load(),
		CutOffSubscribers:     l.cutOff.Load(),
		Gaps:                  l.gaps.Load(),
		HeadErrors:            l.headErrors.Load(),
		HeadSeq:               l.headSeq.Load(),
	}
}
