package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// versionHexDigits is how much of a content hash names a version: 64 bits
// tell versions of one resource type apart with room to spare.
const versionHexDigits = 16

// newSnapshot checks res (ValidateAll on every resource, then the snapshot's
// Consistent) and versions each resource type by a hash of its content. So a
// policy change that touches only routes pushes only RDS, and a reload of an
// unchanged policy pushes nothing.
func newSnapshot(res map[resource.Type][]types.Resource) (*cachev3.Snapshot, error) {
	if err := validateResources(res); err != nil {
		return nil, err
	}
	snap := &cachev3.Snapshot{}
	for typ, items := range res {
		i := cachev3.GetResponseType(typ)
		if i == types.UnknownType {
			return nil, fmt.Errorf("unknown resource type %s", typ)
		}
		v, err := contentVersion(items)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", typeName(typ), err)
		}
		snap.Resources[i] = cachev3.NewResources(v, items)
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("inconsistent snapshot: %w", err)
	}
	return snap, nil
}

func contentVersion(items []types.Resource) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, r := range items {
		var err error
		buf, err = opts.MarshalAppend(buf[:0], r)
		if err != nil {
			return "", fmt.Errorf("marshal %s: %w", cachev3.GetResourceName(r), err)
		}
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))[:versionHexDigits], nil
}

// typeName is the short name of an xDS resource type, as used in logs and
// the nacks metric's type label: listener, route, cluster, endpoint, or other.
func typeName(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	default:
		return "other"
	}
}
