package xds

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// ServiceMetadataKey is the node metadata field that names a sidecar's
// service outright. It is one flat key with a dot in it, like Istio's
// metadata keys, not a nested object.
const ServiceMetadataKey = "tokenwarden.service"

// ErrNoService says a node carries neither the metadata field nor an
// Istio-style id, so no service can be derived from it.
var ErrNoService = errors.New("node names no service")

var (
	// podSuffix is the five characters the ReplicaSet (or DaemonSet)
	// controller appends to a pod name, drawn from Kubernetes' safe alphabet:
	// no vowels, no 0, 1 or 3, so it never spells a word.
	podSuffix = regexp.MustCompile(`-[bcdfghjklmnpqrstvwxz2456789]{5}$`)
	// templateHash is the Deployment's pod-template-hash that names its
	// ReplicaSet, from the same alphabet.
	templateHash = regexp.MustCompile(`-[bcdfghjklmnpqrstvwxz2456789]{6,10}$`)
)

// NodeService names the policy service a sidecar serves:
//
//  1. the string in node.metadata["tokenwarden.service"], if set;
//  2. else, for an Istio-style node id, the service derived from the pod
//     name by ServiceFromNodeID.
//
// It does not check the policy: a name not in the policy makes an unknown
// node, which is the server's concern.
func NodeService(node *core.Node) (string, error) {
	if v := node.GetMetadata().GetFields()[ServiceMetadataKey]; v != nil {
		if s := v.GetStringValue(); s != "" {
			return s, nil
		}
		return "", fmt.Errorf("%w: node %q: metadata %s is not a non-empty string", ErrNoService, node.GetId(), ServiceMetadataKey)
	}
	return ServiceFromNodeID(node.GetId())
}

// ServiceFromNodeID derives a service from an Istio-style sidecar node id,
// TYPE~IP~POD.NAMESPACE~DOMAIN, e.g.
// "sidecar~10.1.2.3~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local":
//
//   - the pod name is the third ~ field up to its last dot ("orders-7d4b9c8f6d-x2x7k");
//   - a trailing -XXXXX pod suffix (five characters of Kubernetes' random
//     alphabet bcdfghjklmnpqrstvwxz2456789) is cut ("orders-7d4b9c8f6d");
//   - then a trailing pod-template-hash of 6 to 10 characters of the same
//     alphabet is cut ("orders").
//
// So Deployment pods give their Deployment's name and DaemonSet or bare
// ReplicaSet pods their controller's. A StatefulSet pod ("orders-0") keeps its
// ordinal: give such sidecars the tokenwarden.service metadata field.
func ServiceFromNodeID(id string) (string, error) {
	fields := strings.Split(id, "~")
	if len(fields) != 4 {
		return "", fmt.Errorf("%w: node id %q is not TYPE~IP~POD.NAMESPACE~DOMAIN and the node has no %s metadata", ErrNoService, id, ServiceMetadataKey)
	}
	pod := fields[2]
	dot := strings.LastIndexByte(pod, '.')
	if dot <= 0 {
		return "", fmt.Errorf("%w: node id %q: %q is not POD.NAMESPACE", ErrNoService, id, pod)
	}
	pod = pod[:dot]
	if loc := podSuffix.FindStringIndex(pod); loc != nil && loc[0] > 0 {
		pod = pod[:loc[0]]
		if loc := templateHash.FindStringIndex(pod); loc != nil && loc[0] > 0 {
			pod = pod[:loc[0]]
		}
	}
	return pod, nil
}
