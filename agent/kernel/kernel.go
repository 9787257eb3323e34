// Package kernel runs the eBPF sentry for the agent: it keeps the kernel's
// revoked map equal to the hashes of the known tokens the revocation set
// covers (reconciling when they change, not on a timer), turns per-hash
// counters into per-token metrics and anomaly input, and audits kernel
// drops within a per-second budget.
package kernel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/budget"
	"github.com/tokenwarden/tokenwarden/agent/usage"
	"github.com/tokenwarden/tokenwarden/bpf"
)

// Modes: whether the agent runs the kernel side.
const (
	ModeAuto     = "auto"     // use the kernel side when it loads; say so when it does not
	ModeRequired = "required" // refuse to start without it
	ModeOff      = "off"
)

// ValidMode reports an error for anything but the three modes ("" is
// ModeAuto).
func ValidMode(mode string) error {
	switch mode {
	case "", ModeAuto, ModeRequired, ModeOff:
		return nil
	}
	return fmt.Errorf("kernel mode %q: want %s, %s or %s", mode, ModeAuto, ModeRequired, ModeOff)
}

const (
	// DefaultEvery is how often kernel counters are read and a failed
	// revoked-map update is retried.
	DefaultEvery = time.Second
	// MaxRevoked is the capacity of the kernel's revoked map.
	MaxRevoked = 65536
	// DropAuditsPerSecond caps kernel.drop audit records; drops above it
	// are counted into one summary record per interval, so a flood of
	// requests with a revoked token cannot fill the disk or crowd other
	// records out of the audit queue.
	DropAuditsPerSecond = 100
	// eventsRetryEvery is the pause before reading drop events again after
	// the reader failed.
	eventsRetryEvery = time.Second
)

// ErrNothingToAttach is returned by Load when it is given no attach point.
var ErrNothingToAttach = errors.New("kernel: nothing to attach to: give an interface and/or a cgroup")

// Attach says where the programs go.
type Attach struct {
	Interfaces []string // TCX, both directions (ingress only on loopback)
	Cgroup     string   // cgroup_skb ingress
}

// Load loads the programs and attaches them. The caller closes the sentry.
func Load(at Attach) (*bpf.Sentry, error) {
	if len(at.Interfaces) == 0 && at.Cgroup == "" {
		return nil, ErrNothingToAttach
	}
	s, err := bpf.Load(bpf.Config{MaxRevoked: MaxRevoked})
	if err != nil {
		return nil, err
	}
	for _, iface := range at.Interfaces {
		for _, dir := range directions(iface) {
			if err := s.AttachTCX(iface, dir); err != nil {
				s.Close()
				return nil, fmt.Errorf("attach to %s %s: %w", iface, dir, err)
			}
		}
	}
	if at.Cgroup != "" {
		if err := s.AttachCgroup(at.Cgroup); err != nil {
			s.Close()
			return nil, fmt.Errorf("attach to cgroup %s: %w", at.Cgroup, err)
		}
	}
	return s, nil
}

// Status says whether the kernel side runs and, when it does not, why: the
// reason label of tokenwarden_kernel_attached.
type Status string

const (
	StatusAttached      Status = "attached"        // loaded and attached
	StatusOff           Status = "off"             // ModeOff: turned off on purpose
	StatusNoAttachPoint Status = "no_attach_point" // ModeAuto without an interface or cgroup
	StatusLoadFailed    Status = "load_failed"     // ModeAuto: loading or attaching failed
)

// Open loads the programs as mode says: nothing with ModeOff; with
// ModeAuto a failure is logged once and nil returned (the agent runs
// without the kernel side); with ModeRequired a failure is an error. The
// Status says which of these happened.
func Open(mode string, at Attach, log *slog.Logger) (*bpf.Sentry, Status, error) {
	if mode == ModeOff {
		return nil, StatusOff, nil
	}
	s, err := Load(at)
	switch {
	case err == nil:
		log.Info("kernel side attached", "interfaces", at.Interfaces, "cgroup", at.Cgroup)
		return s, StatusAttached, nil
	case mode == ModeRequired:
		return nil, StatusLoadFailed, fmt.Errorf("kernel side required but unavailable: %w", err)
	}
	log.Warn("running without the kernel side: per-token kernel counting and in-kernel revocation are off", "err", err)
	if errors.Is(err, ErrNothingToAttach) {
		return nil, StatusNoAttachPoint, nil
	}
	return nil, StatusLoadFailed, nil
}

// RegisterAttached exports tokenwarden_kernel_attached: one series, 1 with
// reason "attached", 0 with the reason the kernel side is not running. It
// exists whatever the mode, so an alert can see a kernel side that failed.
func RegisterAttached(reg prometheus.Registerer, st Status) error {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tokenwarden_kernel_attached",
		Help: "1 while the eBPF programs are loaded and attached; 0 otherwise, with the reason: off (turned off), no_attach_point (auto without an interface or cgroup), load_failed (auto, loading or attaching failed).",
	}, []string{"reason"})
	v := 0.0
	if st == StatusAttached {
		v = 1
	}
	g.WithLabelValues(string(st)).Set(v)
	return reg.Register(g)
}

// directions are the TCX hooks to attach on an interface: both, except on a
// loopback interface, where every packet leaves and arrives on the same
// device and would be counted twice.
func directions(iface string) []bpf.Direction {
	if ifi, err := net.InterfaceByName(iface); err == nil && ifi.Flags&net.FlagLoopback != 0 {
		return []bpf.Direction{bpf.Ingress}
	}
	return []bpf.Direction{bpf.Ingress, bpf.Egress}
}

// Tokens is what the kernel side needs of the node's state (the replica).
type Tokens interface {
	// Changed delivers a value when the revoked hashes may have changed.
	Changed() <-chan struct{}
	// RevokedHashes lists, sorted, the hashes the revoked map must hold.
	RevokedHashes(now time.Time) []uint64
	// Lookup names a wire hash.
	Lookup(hash uint64) (id, subject string, ok bool)
}

// Recorder queues audit records without blocking (audit.UseRecorder).
type Recorder interface{ Record(audit.Record) }

// RequestCounter takes per-token request counts (the anomaly detector).
type RequestCounter interface {
	AddRequests(tokenID, subject string, n uint64)
}

// Config configures a Kernel. Sentry, Tokens and Audit are required.
type Config struct {
	Sentry    *bpf.Sentry
	Tokens    Tokens
	Audit     Recorder
	Requests  RequestCounter // nil: counts go to metrics only
	TopTokens int            // per-token series kept (usage.TopN); 0: none
	// TokenLabels says what the per-token series carry; "" (none) exports
	// none, whatever TopTokens says.
	TokenLabels usage.TokenLabels
	Every       time.Duration // DefaultEvery when zero
	Registerer  prometheus.Registerer
	Now         func() time.Time
	Logger      *slog.Logger
}

// Kernel reconciles and reads the sentry.
type Kernel struct {
	cfg  Config
	drop *budget.PerSecond

	requests *usage.TopN
	drops    prometheus.Counter
	unknown  prometheus.Counter
	overflow prometheus.Gauge
	syncs    prometheus.Counter
	syncErrs prometheus.Counter
	revoked  atomic.Int64

	// afterTick, when set (tests), runs after each periodic read.
	afterTick func()
}

// New registers the kernel metrics and returns a Kernel; Run drives it.
func New(cfg Config) (*Kernel, error) {
	if cfg.Sentry == nil || cfg.Tokens == nil || cfg.Audit == nil {
		return nil, errors.New("kernel: Sentry, Tokens and Audit are required")
	}
	labels, err := usage.ParseTokenLabels(string(cfg.TokenLabels))
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	cfg.TokenLabels = labels
	cfg.Every = cmp.Or(cfg.Every, DefaultEvery)
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.Registerer = cmp.Or[prometheus.Registerer](cfg.Registerer, prometheus.NewRegistry())
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	k := &Kernel{cfg: cfg, drop: budget.NewPerSecond(DropAuditsPerSecond, cfg.Now)}
	if err := k.registerMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kernel) registerMetrics(reg prometheus.Registerer) error {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_kernel_requests_total",
		Help: "HTTP requests seen in the kernel per token, for the busiest tokens only; series of tokens that drop out are deleted.",
	}, []string{"token_id", "subject"})
	top := max(k.cfg.TopTokens, 0)
	if !k.cfg.TokenLabels.PerToken() {
		top = 0
	}
	k.requests = usage.NewTopN(vec, top)
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	k.drops = counter("tokenwarden_kernel_drops_total", "Requests dropped in the kernel for carrying a revoked token.")
	k.unknown = counter("tokenwarden_kernel_unknown_token_requests_total",
		"Requests seen in the kernel with a bearer token this node cannot name (not issued here, or garbage).")
	k.syncs = counter("tokenwarden_kernel_revoked_syncs_total",
		"Updates of the kernel's revoked map (one per change of the revoked tokens, not per second).")
	k.syncErrs = counter("tokenwarden_kernel_revoked_sync_errors_total",
		"Failed updates of the kernel's revoked map (retried every second; until one succeeds, new revocations are enforced by ext_authz only).")
	k.overflow = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tokenwarden_kernel_revoked_overflow",
		Help: "Revoked token hashes that do not fit in the kernel's revoked map (enforced by ext_authz only).",
	})
	stat := func(name, help string, pick func(bpf.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			st, err := k.cfg.Sentry.Stats()
			if err != nil {
				return 0
			}
			return float64(pick(st))
		})
	}
	cs := []prometheus.Collector{
		vec, k.drops, k.unknown, k.overflow, k.syncs, k.syncErrs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tokenwarden_kernel_revoked_hashes", Help: "Token hashes in the kernel's revoked map."}, func() float64 { return float64(k.revoked.Load()) }),
		stat("tokenwarden_kernel_packets_total", "Packets seen by the eBPF programs.", func(s bpf.Stats) uint64 { return s.Packets }),
		stat("tokenwarden_kernel_parsed_requests_total", "Packets that began an HTTP request.", func(s bpf.Stats) uint64 { return s.Requests }),
		stat("tokenwarden_kernel_tokens_total", "Bearer tokens found and hashed in the kernel.", func(s bpf.Stats) uint64 { return s.Tokens }),
		stat("tokenwarden_kernel_tokens_truncated_total", "Bearer tokens too long to hash in the kernel.", func(s bpf.Stats) uint64 { return s.Truncated }),
		stat("tokenwarden_kernel_events_lost_total", "Drop events lost to a full ring buffer.", func(s bpf.Stats) uint64 { return s.EventsLost }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Revoked is the number of hashes in the kernel's revoked map.
func (k *Kernel) Revoked() int { return int(k.revoked.Load()) }

// Run reconciles the revoked map when the revoked tokens change, reads
// counters and audits drop events until ctx ends. A tick does no
// revocation work unless the last update failed: the cost of a quiet
// second does not grow with the number of known tokens. The caller closes
// the sentry after Run returns.
func (k *Kernel) Run(ctx context.Context) {
	events := make(chan struct{})
	go func() {
		defer close(events)
		k.readEvents(ctx)
	}()
	defer func() { <-events }()
	t := time.NewTicker(k.cfg.Every)
	defer t.Stop()
	failed := !k.reconcile()
	for {
		select {
		case <-ctx.Done():
			k.flushDropAudit()
			return
		case <-k.cfg.Tokens.Changed():
			failed = !k.reconcile()
		case <-t.C:
			if failed {
				failed = !k.reconcile()
			}
			k.Flush()
			k.flushDropAudit()
			if k.afterTick != nil {
				k.afterTick()
			}
		}
	}
}

// Stats are the programs' own counters.
func (k *Kernel) Stats() (bpf.Stats, error) { return k.cfg.Sentry.Stats() }

// Flush reads the kernel counters and exports the per-token series now,
// without waiting for the next tick (shutdown, tests).
func (k *Kernel) Flush() {
	k.readCounts()
	k.requests.Flush()
}

// readEvents audits drop events until ctx ends; a reader that fails is
// started again, so one bad event does not end drop auditing.
func (k *Kernel) readEvents(ctx context.Context) {
	for {
		err := k.cfg.Sentry.ReadEvents(ctx, k.onDrop)
		if ctx.Err() != nil || errors.Is(err, bpf.ErrClosed) {
			return
		}
		k.cfg.Logger.Error("reading kernel drop events failed; reading again", "err", err, "in", eventsRetryEvery)
		t := time.NewTimer(eventsRetryEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// reconcile makes the kernel's revoked map hold the hashes of the known
// tokens the revocation set covers. Should they outnumber the map's
// capacity, as many as fit are enforced (the rest by ext_authz only) rather
// than none. It reports whether the map was updated.
func (k *Kernel) reconcile() bool {
	hashes := k.cfg.Tokens.RevokedHashes(k.cfg.Now())
	over := 0
	if len(hashes) > MaxRevoked {
		over = len(hashes) - MaxRevoked
		hashes = hashes[:MaxRevoked]
	}
	k.overflow.Set(float64(over))
	k.syncs.Inc()
	if err := k.cfg.Sentry.SetRevoked(hashes); err != nil {
		k.syncErrs.Inc()
		k.cfg.Logger.Error("update kernel revoked map; retrying", "hashes", len(hashes), "err", err, "in", k.cfg.Every)
		return false
	}
	if over > 0 {
		k.cfg.Logger.Error("kernel revoked map is full: some revoked tokens are refused by ext_authz only, not dropped in the kernel",
			"capacity", MaxRevoked, "not_in_kernel", over)
	}
	k.revoked.Store(int64(len(hashes)))
	return true
}

func (k *Kernel) readCounts() {
	counts, err := k.cfg.Sentry.ReadCounts()
	if err != nil {
		k.cfg.Logger.Error("read kernel counters", "err", err)
		return
	}
	for _, c := range counts {
		id, subject, ok := k.cfg.Tokens.Lookup(c.Hash)
		if !ok {
			k.unknown.Add(float64(c.Requests))
			continue
		}
		if k.cfg.TokenLabels.PerToken() {
			k.requests.Add(id, k.cfg.TokenLabels.Subject(subject), float64(c.Requests))
		}
		if k.cfg.Requests != nil {
			k.cfg.Requests.AddRequests(id, subject, c.Requests)
		}
	}
}

// onDrop audits a request the kernel dropped. The audit write is queued, so
// a flood of drops cannot stall event reading, and capped per second.
func (k *Kernel) onDrop(ev bpf.DropEvent) {
	k.drops.Inc()
	if !k.drop.Take() {
		return
	}
	id, subject, _ := k.cfg.Tokens.Lookup(ev.Hash)
	k.cfg.Audit.Record(audit.Record{
		Action: audit.ActionKernelDrop, Actor: audit.ActorSystem, TokenID: id, Subject: subject,
		Reason: "revoked", Source: ev.Src.String(),
		Details: audit.Details(map[string]any{
			"wire_hash": fmt.Sprintf("%016x", ev.Hash), "dst": ev.Dst.String(), "hook": ev.Hook.String(), "at": ev.Time,
		}),
	})
}

// flushDropAudit records, in one line, the drops not audited one by one.
func (k *Kernel) flushDropAudit() {
	n := k.drop.Over()
	if n == 0 {
		return
	}
	k.cfg.Audit.Record(audit.Record{
		Action: audit.ActionKernelDrop, Actor: audit.ActorSystem, Reason: "revoked", Count: n,
		Details: audit.Details(map[string]any{"suppressed": n, "cap_per_second": DropAuditsPerSecond}),
	})
}
