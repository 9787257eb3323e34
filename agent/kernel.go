package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/usage"
	"github.com/tokenwarden/tokenwarden/bpf"
)

// BPF modes (serve --bpf).
const (
	BPFAuto     = "auto"     // use the kernel side when it loads; say so when it does not
	BPFRequired = "required" // refuse to start without it
	BPFOff      = "off"
)

// kernelEvery is how often kernel counters are read and the revoked map is
// reconciled; a revocation event reconciles at once.
const kernelEvery = time.Second

// kernelMaxRevoked is the capacity of the kernel's revoked map.
const kernelMaxRevoked = 65536

// dropAuditsPerSecond caps kernel.drop audit records; drops above it are
// counted into one summary record per second, so a flood of requests with
// a revoked token cannot fill the disk or crowd other records out of the
// audit queue.
const dropAuditsPerSecond = 100

// eventsRetryEvery is the pause before reading drop events again after the
// reader failed.
const eventsRetryEvery = time.Second

// kernel runs the eBPF sentry for the agent: it keeps the kernel's revoked
// map equal to the hashes of the known tokens the revocation set covers,
// turns per-hash counters into per-token metrics and anomaly input, and
// audits kernel drops.
type kernel struct {
	sentry *bpf.Sentry
	a      *Agent
	kick   chan struct{}

	requests *usage.TopN
	drops    prometheus.Counter
	unknown  prometheus.Counter
	overflow prometheus.Gauge
	syncErrs prometheus.Counter
	revoked  atomic.Int64

	// Drop audit budget: the second it is for, records used, drops
	// not audited one by one.
	dropSecond     atomic.Int64
	dropAudited    atomic.Int64
	dropSuppressed atomic.Uint64
}

// startKernel loads and attaches the programs as cfg says. With BPFAuto a
// failure is logged once and the agent runs without the kernel side.
func (a *Agent) startKernel() (*kernel, error) {
	mode := a.cfg.BPF
	if mode == "" {
		mode = BPFAuto
	}
	switch mode {
	case BPFOff:
		return nil, nil
	case BPFAuto, BPFRequired:
	default:
		return nil, fmt.Errorf("--bpf %q: want auto, required or off", mode)
	}
	k, err := a.loadKernel()
	if err == nil {
		return k, nil
	}
	if mode == BPFRequired {
		return nil, fmt.Errorf("kernel side required (--bpf=required) but unavailable: %w", err)
	}
	a.log.Warn("running without the kernel side (--bpf=auto): per-token kernel counting and in-kernel revocation are off", "err", err)
	return nil, nil
}

func (a *Agent) loadKernel() (*kernel, error) {
	if len(a.cfg.BPFInterfaces) == 0 && a.cfg.BPFCgroup == "" {
		return nil, errors.New("nothing to attach to: give --bpf-iface and/or --bpf-cgroup")
	}
	s, err := bpf.Load(bpf.Config{MaxRevoked: kernelMaxRevoked})
	if err != nil {
		return nil, err
	}
	for _, iface := range a.cfg.BPFInterfaces {
		for _, dir := range directions(iface) {
			if err := s.AttachTCX(iface, dir); err != nil {
				s.Close()
				return nil, fmt.Errorf("attach to %s %s: %w", iface, dir, err)
			}
		}
	}
	if a.cfg.BPFCgroup != "" {
		if err := s.AttachCgroup(a.cfg.BPFCgroup); err != nil {
			s.Close()
			return nil, fmt.Errorf("attach to cgroup %s: %w", a.cfg.BPFCgroup, err)
		}
	}
	k := &kernel{sentry: s, a: a, kick: make(chan struct{}, 1)}
	if err := k.registerMetrics(a.registry); err != nil {
		s.Close()
		return nil, err
	}
	a.closers = append(a.closers, func() error {
		if err := s.Close(); err != nil && !errors.Is(err, bpf.ErrClosed) {
			return err
		}
		return nil
	})
	a.log.Info("kernel side attached", "interfaces", a.cfg.BPFInterfaces, "cgroup", a.cfg.BPFCgroup)
	return k, nil
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

func (k *kernel) registerMetrics(reg prometheus.Registerer) error {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_kernel_requests_total",
		Help: "HTTP requests seen in the kernel per token, for the busiest tokens only; series of tokens that drop out are deleted.",
	}, []string{"token_id", "subject"})
	top := k.a.cfg.TopTokens
	if top == 0 {
		top = authz.DefaultTopTokens
	}
	k.requests = usage.NewTopN(vec, max(top, 0))
	k.drops = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwarden_kernel_drops_total",
		Help: "Requests dropped in the kernel for carrying a revoked token.",
	})
	k.unknown = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwarden_kernel_unknown_token_requests_total",
		Help: "Requests seen in the kernel with a bearer token this node cannot name (not issued here, or garbage).",
	})
	k.syncErrs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tokenwarden_kernel_revoked_sync_errors_total",
		Help: "Failed updates of the kernel's revoked map (retried every second; until one succeeds, new revocations are enforced by ext_authz only).",
	})
	k.overflow = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tokenwarden_kernel_revoked_overflow",
		Help: "Revoked token hashes that do not fit in the kernel's revoked map (enforced by ext_authz only).",
	})
	stat := func(name, help string, pick func(bpf.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			st, err := k.sentry.Stats()
			if err != nil {
				return 0
			}
			return float64(pick(st))
		})
	}
	cs := []prometheus.Collector{
		vec, k.drops, k.unknown, k.overflow, k.syncErrs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tokenwarden_kernel_attached", Help: "1 while the eBPF programs are loaded and attached."}, func() float64 { return 1 }),
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

// reconcile asks for a revoked-map update soon (a revocation arrived).
func (k *kernel) reconcileSoon() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// run reconciles the revoked map, reads counters and audits drop events
// until ctx ends. Agent.Close releases the kernel objects.
func (k *kernel) run(ctx context.Context) {
	events := make(chan struct{})
	go func() {
		defer close(events)
		k.readEvents(ctx)
	}()
	defer func() { <-events }()
	t := time.NewTicker(kernelEvery)
	defer t.Stop()
	k.reconcile()
	for {
		select {
		case <-ctx.Done():
			k.flushDropAudit()
			return
		case <-k.kick:
			k.reconcile()
		case <-t.C:
			k.reconcile()
			k.readCounts()
			k.requests.Flush()
			k.flushDropAudit()
		}
	}
}

// readEvents audits drop events until ctx ends; a reader that fails is
// started again, so one bad event does not end drop auditing.
func (k *kernel) readEvents(ctx context.Context) {
	for {
		err := k.sentry.ReadEvents(ctx, k.onDrop)
		if ctx.Err() != nil || errors.Is(err, bpf.ErrClosed) {
			return
		}
		k.a.log.Error("reading kernel drop events failed; reading again", "err", err, "in", eventsRetryEvery)
		select {
		case <-ctx.Done():
			return
		case <-time.After(eventsRetryEvery):
		}
	}
}

// reconcile makes the kernel's revoked map hold the hashes of the known
// tokens the revocation set covers. Should they outnumber the map's
// capacity, as many as fit are enforced (the rest by ext_authz only) rather
// than none.
func (k *kernel) reconcile() {
	hashes := k.a.tokens.revokedHashes(k.a.revoked, k.a.cfg.Now())
	slices.Sort(hashes)
	over := 0
	if len(hashes) > kernelMaxRevoked {
		over = len(hashes) - kernelMaxRevoked
		hashes = hashes[:kernelMaxRevoked]
	}
	k.overflow.Set(float64(over))
	if err := k.sentry.SetRevoked(hashes); err != nil {
		k.syncErrs.Inc()
		k.a.log.Error("update kernel revoked map; retrying within a second", "hashes", len(hashes), "err", err)
		return
	}
	if over > 0 {
		k.a.log.Error("kernel revoked map is full: some revoked tokens are refused by ext_authz only, not dropped in the kernel",
			"capacity", kernelMaxRevoked, "not_in_kernel", over)
	}
	k.revoked.Store(int64(len(hashes)))
}

func (k *kernel) readCounts() {
	counts, err := k.sentry.ReadCounts()
	if err != nil {
		k.a.log.Error("read kernel counters", "err", err)
		return
	}
	for _, c := range counts {
		id, subject, ok := k.a.tokens.lookup(c.Hash)
		if !ok {
			k.unknown.Add(float64(c.Requests))
			continue
		}
		k.requests.Add(id, subject, float64(c.Requests))
		if k.a.anomaly != nil {
			k.a.anomaly.AddRequests(id, subject, c.Requests)
		}
	}
}

// onDrop audits a request the kernel dropped. The audit write is queued, so
// a flood of drops cannot stall event reading, and capped per second.
func (k *kernel) onDrop(ev bpf.DropEvent) {
	k.drops.Inc()
	sec := k.a.cfg.Now().Unix()
	if w := k.dropSecond.Load(); w != sec && k.dropSecond.CompareAndSwap(w, sec) {
		k.dropAudited.Store(0)
	}
	if k.dropAudited.Add(1) > dropAuditsPerSecond {
		k.dropSuppressed.Add(1)
		return
	}
	id, subject, _ := k.a.tokens.lookup(ev.Hash)
	details, _ := json.Marshal(map[string]any{
		"wire_hash": fmt.Sprintf("%016x", ev.Hash), "dst": ev.Dst.String(), "hook": ev.Hook.String(), "at": ev.Time,
	})
	k.a.use.Record(audit.Record{
		Action: audit.ActionKernelDrop, Actor: audit.ActorSystem, TokenID: id, Subject: subject,
		Reason: "revoked", Source: ev.Src.String(), Details: details,
	})
}

// flushDropAudit records, in one line, the drops not audited one by one.
func (k *kernel) flushDropAudit() {
	n := k.dropSuppressed.Swap(0)
	if n == 0 {
		return
	}
	details, _ := json.Marshal(map[string]any{"suppressed": n, "cap_per_second": dropAuditsPerSecond})
	k.a.use.Record(audit.Record{
		Action: audit.ActionKernelDrop, Actor: audit.ActorSystem, Reason: "revoked", Count: n, Details: details,
	})
}
