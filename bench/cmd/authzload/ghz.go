package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/tokenwarden/tokenwarden/bench"
)

// ghzLoad drives gRPC checks with ghz (github.com/bojand/ghz), a load
// generator nobody here wrote: the same CheckRequests as drive's, given to
// ghz as JSON with a protoset built from the compiled-in descriptors (the
// no-op server has no reflection), ghz rotating through them.
type ghzLoad struct {
	bin, data, protoset string
}

// newGHZ writes ghz's inputs for tokens into dir.
func newGHZ(bin, dir string, tokens []string) (*ghzLoad, error) {
	g := &ghzLoad{bin: bin, data: filepath.Join(dir, "ghz-data.json"), protoset: filepath.Join(dir, "ghz.protoset")}
	msgs := make([]json.RawMessage, len(tokens))
	for i, t := range tokens {
		b, err := protojson.Marshal(bench.CheckRequest(t, i))
		if err != nil {
			return nil, err
		}
		msgs[i] = b
	}
	data, err := json.Marshal(msgs)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(g.data, data, 0o600); err != nil {
		return nil, err
	}
	set, err := protoset(authv3.File_envoy_service_auth_v3_external_auth_proto)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(g.protoset, set, 0o600); err != nil {
		return nil, err
	}
	return g, nil
}

// protoset is the FileDescriptorSet of fd and everything it imports.
func protoset(fd protoreflect.FileDescriptor) ([]byte, error) {
	var set descriptorpb.FileDescriptorSet
	seen := map[string]bool{}
	var add func(protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		imps := f.Imports()
		for i := range imps.Len() {
			add(imps.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(f))
	}
	add(fd)
	return proto.Marshal(&set)
}

// ghzReport is the part of ghz's JSON report used here.
type ghzReport struct {
	Count   int64         `json:"count"`
	Total   time.Duration `json:"total"`
	Details []struct {
		Latency time.Duration `json:"latency"`
		Status  string        `json:"status"`
		Error   string        `json:"error"`
	} `json:"details"`
}

// run has ghz load s with c concurrent workers over one connection per
// four workers (as drive does) for d, at rps checks a second if rps > 0,
// and reports what it measured; cpu is the server's CPU time over the run.
func (g *ghzLoad) run(s *server, c, rps int, d time.Duration, measure bool) (*result, error) {
	args := []string{"--insecure", "--protoset", g.protoset,
		"--call", "envoy.service.auth.v3.Authorization.Check", "-D", g.data,
		"-c", strconv.Itoa(c), "--timeout", checkTimeout.String(), "--connections", strconv.Itoa((c + 3) / 4),
		"-z", d.String(), "-O", "json"}
	if rps > 0 {
		args = append(args, "--rps", strconv.Itoa(rps))
	}
	cmd := exec.Command(g.bin, append(args, s.addr)...)
	cpu0, err := s.cpuTicks()
	if err != nil {
		return nil, err
	}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ghz: %w", err)
	}
	cpu1, err := s.cpuTicks()
	if err != nil {
		return nil, err
	}
	if !measure {
		return nil, nil
	}
	var rep ghzReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("ghz report: %w", err)
	}
	res := &result{elapsed: rep.Total, cpu: time.Duration(cpu1-cpu0) * time.Second / clockTicks}
	// ghz ends a timed run by closing its connections: the calls then in
	// flight or queued fail as Unavailable or Canceled. Other failures,
	// or more of those than 1% of the run (and one per worker), are fatal.
	failed := 0
	for _, x := range rep.Details {
		if x.Status == "OK" {
			res.latencies = append(res.latencies, x.Latency)
			continue
		}
		if x.Status != "Unavailable" && x.Status != "Canceled" {
			return nil, fmt.Errorf("ghz: a check failed: %s %s", x.Status, x.Error)
		}
		failed++
	}
	if failed > max(c, len(rep.Details)/100) {
		return nil, fmt.Errorf("ghz: %d of %d checks failed (Unavailable or Canceled)", failed, len(rep.Details))
	}
	res.checks = int64(len(res.latencies))
	if res.checks == 0 {
		return nil, fmt.Errorf("ghz: no checks in %d reported", rep.Count)
	}
	return res, nil
}
