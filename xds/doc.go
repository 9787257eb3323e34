// Package xds configures the Envoy sidecars on a node so that they ask
// tokenwarden's ext_authz on every request: it builds each sidecar's Envoy v3
// resources from the policy and serves them over ADS (go-control-plane,
// state of the world and delta), or renders them as a static bootstrap.
//
// See docs/xds.md for the node→service rule, the resources built and the
// metrics.
package xds
