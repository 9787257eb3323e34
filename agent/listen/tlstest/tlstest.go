// Package tlstest makes throw-away certificate authorities and
// certificates for tests of the agent's TLS listeners: valid, expired and
// from a foreign CA.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority held in memory.
type CA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
}

var serial atomic.Int64

// NewCA makes a CA valid from an hour ago for a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Leaf is a certificate and its key, PEM encoded.
type Leaf struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// Server issues a server certificate for 127.0.0.1 and localhost, valid
// for a day.
func (ca *CA) Server(t testing.TB, name string) Leaf {
	return ca.issue(t, name, x509.ExtKeyUsageServerAuth, time.Now().Add(24*time.Hour))
}

// ServerAt is Server with ip as a SAN too.
func (ca *CA) ServerAt(t testing.TB, name string, ip net.IP) Leaf {
	return ca.issue(t, name, x509.ExtKeyUsageServerAuth, time.Now().Add(24*time.Hour), ip)
}

// Client issues a client certificate valid for a day.
func (ca *CA) Client(t testing.TB, name string) Leaf {
	return ca.issue(t, name, x509.ExtKeyUsageClientAuth, time.Now().Add(24*time.Hour))
}

// ExpiredClient issues a client certificate that expired a minute ago.
func (ca *CA) ExpiredClient(t testing.TB, name string) Leaf {
	return ca.issue(t, name, x509.ExtKeyUsageClientAuth, time.Now().Add(-time.Minute))
}

func (ca *CA) issue(t testing.TB, name string, usage x509.ExtKeyUsage, notAfter time.Time, ips ...net.IP) Leaf {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...), DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Leaf{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
		Cert:    cert,
	}
}

// TLS is the leaf as a tls.Certificate.
func (l Leaf) TLS(t testing.TB) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Pool is a pool of the CA alone.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Volume is a directory laid out as Kubernetes mounts a Secret (and as
// cert-manager's and SPIRE's helpers rotate files): the files live in a
// versioned directory that the ..data symlink points at, and each name
// is a symlink through ..data. Swap replaces every file at once.
type Volume struct {
	Dir     string
	version int
}

// NewVolume makes an empty volume in a temporary directory.
func NewVolume(t testing.TB) *Volume { return &Volume{Dir: t.TempDir()} }

// Path is the path of the file name in the volume.
func (v *Volume) Path(name string) string { return filepath.Join(v.Dir, name) }

// Swap writes files into a new version directory and points ..data at it
// with an atomic rename, as the kubelet does.
func (v *Volume) Swap(t testing.TB, files map[string][]byte) {
	t.Helper()
	v.version++
	ver := filepath.Join(v.Dir, "..v"+time.Now().Format("150405.000000000")+"-"+string(rune('a'+v.version%26)))
	if err := os.Mkdir(ver, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(ver, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		link := v.Path(name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := v.Path("..data_tmp")
	if err := os.Symlink(filepath.Base(ver), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, v.Path("..data")); err != nil {
		t.Fatal(err)
	}
}
