package rotation

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/testclock"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/policy"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// receiver is a webhook endpoint that verifies signatures and answers with
// a scripted sequence of statuses (200 once the script runs out).
type receiver struct {
	*httptest.Server
	secret []byte

	mu         sync.Mutex
	statuses   []int
	attempts   int
	deliveries []Delivery
	timestamps []string
}

func newReceiver(t *testing.T, secret []byte, statuses ...int) *receiver {
	r := &receiver{secret: secret, statuses: statuses}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts++
	ts := req.Header.Get(HeaderTimestamp)
	if req.Method != http.MethodPost || !Verify(r.secret, ts, body, req.Header.Get(HeaderSignature)) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if len(r.statuses) > 0 {
		status := r.statuses[0]
		r.statuses = r.statuses[1:]
		if status == http.StatusMovedPermanently {
			w.Header().Set("Location", "http://elsewhere.invalid/")
		}
		if status != http.StatusOK {
			w.WriteHeader(status)
			return
		}
	}
	var d Delivery
	if err := json.Unmarshal(body, &d); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.deliveries = append(r.deliveries, d)
	r.timestamps = append(r.timestamps, ts)
}

func (r *receiver) got() (attempts int, deliveries []Delivery, timestamps []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts, append([]Delivery(nil), r.deliveries...), append([]string(nil), r.timestamps...)
}

// fixture is a real bolt store, audit log and issuer under the test policy,
// with a scheduler on top.
type fixture struct {
	t         *testing.T
	clock     *testclock.Clock
	store     *bolt.Store
	auditDir  string
	issuer    *issuer.Issuer
	sched     *Scheduler
	reg       *prometheus.Registry
	recv      *receiver
	tokenFile string
}

type fixtureOption func(*Config)

func newFixture(t *testing.T, statuses []int, opts ...fixtureOption) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, clock: testclock.New(t0), auditDir: filepath.Join(dir, "audit"), reg: prometheus.NewRegistry()}
	secret := []byte("receiver-secret")
	secretFile := filepath.Join(dir, "webhook.secret")
	if err := os.WriteFile(secretFile, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	f.recv = newReceiver(t, secret, statuses...)
	f.tokenFile = filepath.Join(dir, "ci.token")
	tmpl, err := os.ReadFile("testdata/policy.yaml.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.NewReplacer("${FILE}", f.tokenFile, "${URL}", f.recv.URL, "${SECRET}", secretFile).Replace(string(tmpl))
	p, err := policy.Load("policy.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("load test policy: %v", err)
	}
	f.store, err = bolt.Open(filepath.Join(dir, "tokenwarden.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	log, err := audit.Open(audit.Config{Dir: f.auditDir, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	f.issuer, err = issuer.New(t.Context(), issuer.Config{
		Store: f.store, KEK: make([]byte, 32), Env: "prod", Policy: func() *policy.Policy { return p },
		Audit: log, Now: f.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Store: f.store, Rotator: f.issuer, Policy: func() *policy.Policy { return p }, Audit: log,
		Now: f.clock.Now, Registerer: f.reg, WebhookMaxAttempts: 3, WebhookBackoff: time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	f.sched, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) issue(class string, ttl time.Duration) issuer.Issued {
	f.t.Helper()
	iss, err := f.issuer.Issue(f.t.Context(), policy.IssueRequest{Subject: "ci", Class: class, Env: "prod", TTL: ttl}, "admin-jti")
	if err != nil {
		f.t.Fatalf("issue %s token: %v", class, err)
	}
	return iss
}

func (f *fixture) tickAt(at time.Time) error {
	f.t.Helper()
	f.clock.Set(at)
	return f.sched.Tick(f.t.Context())
}

func (f *fixture) record(id string) store.TokenRecord {
	f.t.Helper()
	r, err := f.store.Token(f.t.Context(), id)
	if err != nil {
		f.t.Fatalf("token %s: %v", id, err)
	}
	return r
}

func (f *fixture) audits(action string) []audit.Record {
	f.t.Helper()
	var out []audit.Record
	if err := audit.Read(f.auditDir, audit.Filter{Action: action}, func(r audit.Record) error {
		out = append(out, r)
		return nil
	}); err != nil {
		f.t.Fatalf("read audit: %v", err)
	}
	return out
}

// metric returns the value of the series of name with exactly these labels.
func (f *fixture) metric(name string, labels ...string) float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, labels) {
				if mf.GetType() == dto.MetricType_GAUGE {
					return m.GetGauge().GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	f.t.Fatalf("no series %s%v", name, labels)
	return 0
}

func labelsMatch(m *dto.Metric, labels []string) bool {
	if len(m.GetLabel())*2 != len(labels) {
		return false
	}
	for _, lp := range m.GetLabel() {
		found := false
		for i := 0; i+1 < len(labels); i += 2 {
			found = found || (labels[i] == lp.GetName() && labels[i+1] == lp.GetValue())
		}
		if !found {
			return false
		}
	}
	return true
}

// claims decodes a token's payload without verifying it.
func claims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(strings.TrimPrefix(token, "tw_"), ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestScheduleRotatesWhenDue(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()
	pred := f.issue("ci-deploy", 0)

	if err := f.tickAt(t0.Add(6*time.Hour - time.Second)); err != nil {
		t.Fatalf("tick before due: %v", err)
	}
	if r := f.record(pred.Record.ID); r.Successor != "" || r.Status != store.TokenActive {
		t.Fatalf("rotated before rotate_after: %+v", r)
	}
	if _, err := os.Stat(f.tokenFile); !os.IsNotExist(err) {
		t.Fatalf("token file exists before rotation (stat err %v)", err)
	}

	due := t0.Add(6 * time.Hour)
	if err := f.tickAt(due); err != nil {
		t.Fatalf("tick when due: %v", err)
	}
	r := f.record(pred.Record.ID)
	if r.Successor == "" || r.Status != store.TokenRotated {
		t.Fatalf("predecessor after due tick: successor %q status %s, want a successor and rotated", r.Successor, r.Status)
	}
	succ := f.record(r.Successor)
	if succ.Rotated != pred.Record.ID || succ.Status != store.TokenActive || succ.Actor != audit.ActorSystem {
		t.Errorf("successor record %+v: want rotated=%s, active, actor system", succ, pred.Record.ID)
	}

	// The predecessor's revocation takes effect when the grace ends.
	revs, err := f.store.Revocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rule *policy.Revocation
	for i := range revs {
		if revs[i].Kind == policy.RevokeToken && revs[i].Target == pred.Record.ID {
			rule = &revs[i]
		}
	}
	if rule == nil || !rule.EffectiveAt.Equal(due.Add(15*time.Minute)) {
		t.Fatalf("revocation of predecessor = %+v, want one effective at %v", rule, due.Add(15*time.Minute))
	}

	// File sink: the successor token itself, mode 0600, nothing else.
	fi, err := os.Stat(f.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	token, _ := os.ReadFile(f.tokenFile)
	if policy.LeakHash(string(token)) != succ.LeakHash {
		t.Fatalf("token file does not hold the successor token")
	}
	if rot := claims(t, string(token))["rot"]; rot != pred.Record.ID {
		t.Errorf("successor rot claim = %v, want %s", rot, pred.Record.ID)
	}

	// Webhook sink: one signed delivery (the receiver refuses bad signatures).
	attempts, got, timestamps := f.recv.got()
	if attempts != 1 || len(got) != 1 {
		t.Fatalf("receiver: %d attempts, %d deliveries; want 1 and 1", attempts, len(got))
	}
	want := Delivery{
		TokenID: succ.ID, Predecessor: pred.Record.ID, Subject: "ci", Class: "ci-deploy",
		ExpiresAt: succ.ExpiresAt, Token: string(token),
	}
	if !got[0].ExpiresAt.Equal(want.ExpiresAt) {
		t.Errorf("delivered expires_at %v, want %v", got[0].ExpiresAt, want.ExpiresAt)
	}
	got[0].ExpiresAt = want.ExpiresAt
	if got[0] != want {
		t.Errorf("delivered %+v\nwant      %+v", got[0], want)
	}
	if timestamps[0] != strconv.FormatInt(due.Unix(), 10) {
		t.Errorf("timestamp header %s, want %d", timestamps[0], due.Unix())
	}

	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokenwarden_rotations_total", []string{"trigger", "schedule", "result", "ok"}, 1},
		{"tokenwarden_rotations_total", []string{"trigger", "schedule", "result", "error"}, 0},
		{"tokenwarden_rotation_deliveries_total", []string{"sink", "file", "result", "ok"}, 1},
		{"tokenwarden_rotation_deliveries_total", []string{"sink", "webhook", "result", "ok"}, 1},
	} {
		if got := f.metric(m.name, m.labels...); got != m.want {
			t.Errorf("%s%v = %v, want %v", m.name, m.labels, got, m.want)
		}
	}

	// Later ticks leave the rotated pair alone until the successor is due.
	if err := f.tickAt(due.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := len(f.audits(audit.ActionTokenRotate)); n != 1 {
		t.Errorf("%d token.rotate records after a second tick, want 1", n)
	}
	if err := f.tickAt(due.Add(6 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if s := f.record(succ.ID); s.Successor == "" {
		t.Error("successor was not rotated in its turn")
	}
}

func TestWebhookDelivery(t *testing.T) {
	tests := map[string]struct {
		statuses     []int
		wantAttempts int
		wantOK       bool
	}{
		"first try":                     {nil, 1, true},
		"503 twice then accepted":       {[]int{503, 503}, 3, true},
		"429 then accepted":             {[]int{429}, 2, true},
		"500 until attempts run out":    {[]int{500, 500, 500, 500}, 3, false},
		"400 is not retried":            {[]int{400}, 1, false},
		"redirect is not followed":      {[]int{301}, 1, false},
		"404 is not retried either way": {[]int{404, 200}, 1, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tc.statuses)
			pred := f.issue("ci-deploy", 0)
			err := f.tickAt(t0.Add(6 * time.Hour))
			attempts, got, _ := f.recv.got()
			if attempts != tc.wantAttempts {
				t.Errorf("%d attempts, want %d", attempts, tc.wantAttempts)
			}
			failures := f.audits(audit.ActionDeliveryFailed)
			succ := f.record(pred.Record.ID).Successor
			if succ == "" {
				t.Fatal("no successor issued")
			}
			// The file sink is independent of the webhook.
			if v := f.metric("tokenwarden_rotation_deliveries_total", "sink", "file", "result", "ok"); v != 1 {
				t.Errorf("file deliveries ok = %v, want 1", v)
			}
			if tc.wantOK {
				if err != nil || len(got) != 1 || len(failures) != 0 {
					t.Fatalf("tick err %v, %d deliveries, %d failure records; want nil, 1, 0", err, len(got), len(failures))
				}
				if v := f.metric("tokenwarden_rotation_deliveries_total", "sink", "webhook", "result", "ok"); v != 1 {
					t.Errorf("webhook deliveries ok = %v, want 1", v)
				}
				return
			}
			if !errors.Is(err, ErrDelivery) {
				t.Errorf("tick err = %v, want one wrapping ErrDelivery", err)
			}
			if v := f.metric("tokenwarden_rotation_deliveries_total", "sink", "webhook", "result", "error"); v != 1 {
				t.Errorf("webhook deliveries error = %v, want 1", v)
			}
			if len(failures) != 1 {
				t.Fatalf("%d %s records, want 1", len(failures), audit.ActionDeliveryFailed)
			}
			var d struct{ Sink, Error, Predecessor string }
			if err := json.Unmarshal(failures[0].Details, &d); err != nil {
				t.Fatal(err)
			}
			if failures[0].TokenID != succ || d.Sink != KindWebhook || d.Predecessor != pred.Record.ID || d.Error == "" {
				t.Errorf("failure record %+v details %+v", failures[0], d)
			}
			// The rotation itself succeeded; only the delivery failed.
			if v := f.metric("tokenwarden_rotations_total", "trigger", "schedule", "result", "ok"); v != 1 {
				t.Errorf("scheduled rotations ok = %v, want 1", v)
			}
			assertNoTokenInAudit(t, f.auditDir)
		})
	}
}

// assertNoTokenInAudit checks that no audit file holds a token string.
func assertNoTokenInAudit(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("tw_eyJ")) {
			t.Errorf("audit file %s holds a token", e.Name())
		}
	}
}

func TestManualRotate(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()
	f.clock.Set(t0.Add(time.Hour))
	pred := f.issue("ci-deploy", 0)

	succ, err := f.sched.Rotate(ctx, pred.Record.ID, "admin-jti")
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if succ.Record.Rotated != pred.Record.ID || succ.Record.Actor != "admin-jti" || succ.Token == "" {
		t.Errorf("successor %+v", succ.Record)
	}
	token, _ := os.ReadFile(f.tokenFile)
	if string(token) != succ.Token {
		t.Error("token file does not hold the manual successor")
	}
	if _, err := f.sched.Rotate(ctx, pred.Record.ID, "admin-jti"); err == nil {
		t.Error("rotating an already rotated token succeeded")
	}
	if v := f.metric("tokenwarden_rotations_total", "trigger", "manual", "result", "ok"); v != 1 {
		t.Errorf("manual ok = %v, want 1", v)
	}
	if v := f.metric("tokenwarden_rotations_total", "trigger", "manual", "result", "error"); v != 1 {
		t.Errorf("manual error = %v, want 1", v)
	}

	// A class without delivery rotates with nothing to deliver.
	svc := f.issue("service", 0)
	if _, err := f.sched.Rotate(ctx, svc.Record.ID, "admin-jti"); err != nil {
		t.Fatalf("Rotate service token: %v", err)
	}
	if attempts, _, _ := f.recv.got(); attempts != 1 {
		t.Errorf("receiver saw %d attempts, want only the ci-deploy one", attempts)
	}
}

func TestExpiryWarnedAndRecordedOnce(t *testing.T) {
	f := newFixture(t, nil)
	svc := f.issue("service", 0)             // 10h, never rotated: warned 1h before
	short := f.issue("ci-deploy", time.Hour) // expires before rotate_after: warned 6m before
	ids := []string{svc.Record.ID, short.Record.ID}

	steps := []struct {
		at           time.Duration
		wantWarned   []bool // per token in ids
		wantExpired  []bool
		wantExpiring float64
	}{
		{53 * time.Minute, []bool{false, false}, []bool{false, false}, 0},
		{54 * time.Minute, []bool{false, true}, []bool{false, false}, 1},
		{55 * time.Minute, []bool{false, true}, []bool{false, false}, 1},
		{time.Hour, []bool{false, true}, []bool{false, true}, 0},
		{9*time.Hour - time.Second, []bool{false, true}, []bool{false, true}, 0},
		{9 * time.Hour, []bool{true, true}, []bool{false, true}, 1},
		{10 * time.Hour, []bool{true, true}, []bool{true, true}, 0},
		{11 * time.Hour, []bool{true, true}, []bool{true, true}, 0},
	}
	for _, st := range steps {
		if err := f.tickAt(t0.Add(st.at)); err != nil {
			t.Fatalf("tick at +%v: %v", st.at, err)
		}
		for i, id := range ids {
			r := f.record(id)
			if r.ExpiryWarned != st.wantWarned[i] || r.ExpiryRecorded != st.wantExpired[i] {
				t.Errorf("+%v token %d: warned %v recorded %v, want %v %v", st.at, i, r.ExpiryWarned, r.ExpiryRecorded, st.wantWarned[i], st.wantExpired[i])
			}
		}
		if v := f.metric("tokenwarden_tokens_expiring"); v != st.wantExpiring {
			t.Errorf("+%v tokens_expiring = %v, want %v", st.at, v, st.wantExpiring)
		}
	}
	// One record of each kind per token, however many ticks saw it.
	for _, action := range []string{audit.ActionTokenExpiring, audit.ActionTokenExpire} {
		recs := f.audits(action)
		if len(recs) != 2 {
			t.Fatalf("%d %s records, want 2", len(recs), action)
		}
		for _, r := range recs {
			if r.Actor != audit.ActorSystem || r.Subject != "ci" || (r.TokenID != ids[0] && r.TokenID != ids[1]) {
				t.Errorf("%s record %+v", action, r)
			}
		}
	}
}

func TestWarnBefore(t *testing.T) {
	tests := map[string]struct {
		configured, lifetime, want time.Duration
	}{
		"day-long token: an hour":      {0, 24 * time.Hour, time.Hour},
		"hour-long token: a tenth":     {0, time.Hour, 6 * time.Minute},
		"configured warning wins":      {5 * time.Minute, 24 * time.Hour, 5 * time.Minute},
		"ten-hour token: the hour cap": {0, 10 * time.Hour, time.Hour},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := &Scheduler{cfg: Config{ExpiryWarning: tc.configured}}
			r := store.TokenRecord{IssuedAt: t0, ExpiresAt: t0.Add(tc.lifetime)}
			if got := s.warnBefore(r); got != tc.want {
				t.Errorf("warnBefore = %v, want %v", got, tc.want)
			}
		})
	}
}

// failingRotator fails every rotation and counts the calls.
type failingRotator struct{ calls int }

func (r *failingRotator) Rotate(context.Context, string, string) (issuer.Issued, error) {
	r.calls++
	return issuer.Issued{}, errors.New("store unavailable")
}

func TestFailedRotationBacksOff(t *testing.T) {
	rot := &failingRotator{}
	f := newFixture(t, nil, func(c *Config) { c.Rotator = rot; c.Interval = time.Minute })
	pred := f.issue("ci-deploy", 0)
	due := t0.Add(6 * time.Hour)

	for _, st := range []struct {
		at        time.Duration
		wantCalls int
		wantErr   bool
	}{
		{0, 1, true},                 // first failure: wait one interval
		{30 * time.Second, 1, false}, // still waiting
		{time.Minute, 2, true},       // second failure: wait two
		{2 * time.Minute, 2, false},
		{3 * time.Minute, 3, true},
	} {
		err := f.tickAt(due.Add(st.at))
		if rot.calls != st.wantCalls || (err != nil) != st.wantErr {
			t.Fatalf("+%v: %d rotation attempts, tick err %v; want %d attempts, error %v", st.at, rot.calls, err, st.wantCalls, st.wantErr)
		}
	}
	failed := f.audits(audit.ActionRotationFailed)
	if len(failed) != 3 || failed[0].TokenID != pred.Record.ID {
		t.Errorf("%d rotation.failed records (first %+v), want 3 for %s", len(failed), failed, pred.Record.ID)
	}
	if v := f.metric("tokenwarden_rotations_total", "trigger", "schedule", "result", "error"); v != 3 {
		t.Errorf("scheduled rotation errors = %v, want 3", v)
	}
}

func TestRunTicksUntilCancelled(t *testing.T) {
	f := newFixture(t, nil, func(c *Config) { c.Interval = 10 * time.Millisecond })
	pred := f.issue("ci-deploy", 0)
	f.clock.Set(t0.Add(6 * time.Hour))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); f.sched.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for f.record(pred.Record.ID).Successor == "" {
		if time.Now().After(deadline) {
			t.Fatal("Run did not rotate the due token within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

func TestNewRequiresDependencies(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New accepted an empty Config")
	}
}

// TestScheduledRotationCarriesAPendingRevocation is the attack of a token
// with a revocation scheduled past its rotate_after: the schedule rotates
// it (and delivers the successor), but the successor is revoked when the
// predecessor's revocation takes effect, and so is the successor's own
// successor at the next rotation.
func TestScheduledRotationCarriesAPendingRevocation(t *testing.T) {
	f := newFixture(t, nil)
	ctx := t.Context()
	pred := f.issue("ci-deploy", 0)
	effective := t0.Add(16 * time.Hour)
	if _, _, err := f.issuer.Revoke(ctx, policy.Revocation{
		Kind: policy.RevokeToken, Target: pred.Record.ID, Reason: "contract ends", Actor: "admin-jti", EffectiveAt: effective,
	}); err != nil {
		t.Fatal(err)
	}
	// revokedFromEffective: the stored rules revoke token id from the
	// predecessor's effective_at, and not a second before.
	revokedFromEffective := func(id string) bool {
		t.Helper()
		set := revocation.NewSet()
		rules, err := f.store.Revocations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			set.Add(r)
		}
		rec := f.record(id)
		tok := &policy.Token{Claims: policy.Claims{ID: rec.ID, Subject: rec.Subject, IssuedAt: rec.IssuedAt.Unix()}, KeyID: rec.KeyID}
		return !set.Revoked(tok, effective.Add(-time.Second)) && set.Revoked(tok, effective)
	}
	id := pred.Record.ID
	for _, at := range []time.Time{t0.Add(6 * time.Hour), t0.Add(12 * time.Hour)} {
		if err := f.tickAt(at); err != nil {
			t.Fatalf("tick at %s: %v", at, err)
		}
		succ := f.record(id).Successor
		if succ == "" {
			t.Fatalf("token %s not rotated at %s", id, at)
		}
		if !revokedFromEffective(succ) {
			t.Errorf("successor %s (rotated at %s) is not revoked exactly when its predecessor's revocation takes effect", succ, at.Sub(t0))
		}
		id = succ
	}
	if _, d, _ := f.recv.got(); len(d) != 2 {
		t.Errorf("%d deliveries, want both successors delivered", len(d))
	}
}
