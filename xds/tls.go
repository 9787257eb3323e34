package xds

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// UpstreamTLS is how a sidecar dials the agent over TLS. The files are
// paths on the sidecar's file system (a Secret mounted into its pod), read
// by Envoy, never by the agent.
type UpstreamTLS struct {
	// CAFile is the PEM bundle the agent's certificate chains to. Empty:
	// plain text (no other field may be set).
	CAFile string
	// CertFile and KeyFile are the sidecar's client certificate and key,
	// for an agent that requires one (mTLS). Both or neither.
	CertFile, KeyFile string
	// ServerName is the name the agent's certificate must carry (a DNS
	// SAN), also sent as SNI. Empty: the chain alone is verified.
	ServerName string
}

// Enabled reports whether the sidecar dials over TLS.
func (u UpstreamTLS) Enabled() bool { return u.CAFile != "" }

func (u UpstreamTLS) check(address string) error {
	var errs []error
	if !u.Enabled() {
		if u != (UpstreamTLS{}) {
			errs = append(errs, errors.New("a client certificate or server name without a CA file: give the CA the agent's certificate chains to"))
		}
		return errors.Join(errs...)
	}
	if strings.HasPrefix(address, unixPrefix) {
		errs = append(errs, fmt.Errorf("%s is a unix socket, which the agent never serves over TLS", address))
	}
	if (u.CertFile == "") != (u.KeyFile == "") {
		errs = append(errs, errors.New("a client certificate needs its key and a key its certificate"))
	}
	for _, f := range []string{u.CAFile, u.CertFile, u.KeyFile} {
		if f != "" && !filepath.IsAbs(f) {
			errs = append(errs, fmt.Errorf("%q: want an absolute path on the sidecar's file system", f))
		}
	}
	return errors.Join(errs...)
}

// transportSocket is the Envoy transport socket that dials over u, with
// ALPN alpn; nil when u is not enabled.
func (u UpstreamTLS) transportSocket(alpn string) (*core.TransportSocket, error) {
	if !u.Enabled() {
		return nil, nil
	}
	validation := &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: u.CAFile}},
	}
	if u.ServerName != "" {
		validation.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_DNS,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: u.ServerName}},
		}}
	}
	common := &tlsv3.CommonTlsContext{
		TlsParams:             &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		AlpnProtocols:         []string{alpn},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: validation},
	}
	if u.CertFile != "" {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: u.CertFile}},
			PrivateKey:       &core.DataSource{Specifier: &core.DataSource_Filename{Filename: u.KeyFile}},
		}}
	}
	ctx, err := typed(&tlsv3.UpstreamTlsContext{CommonTlsContext: common, Sni: u.ServerName})
	if err != nil {
		return nil, err
	}
	return &core.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: ctx},
	}, nil
}
