package xds

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"

	"go.yaml.in/yaml/v3"
)

// CredentialHeader is the gRPC metadata key a sidecar sends its xDS
// credential in. Envoy sends it with `initial_metadata` on the ADS
// grpc_service (deploy/envoy/bootstrap.yaml).
const CredentialHeader = "x-tokenwarden-xds-credential"

// CredentialMetadataKey is the node metadata field that may carry the
// credential instead, for clients that cannot set call metadata (grpc-go's
// xDS bootstrap sets node metadata only).
const CredentialMetadataKey = "tokenwarden.credential"

const (
	// maxCredentialsFile bounds the credentials file read.
	maxCredentialsFile = 1 << 20
	// maxCredentials bounds its entries: each presented credential is
	// compared with every entry.
	maxCredentials = 4096
	// maxCredentialLen bounds a presented credential; longer ones are
	// refused before hashing.
	maxCredentialLen = 512
)

// serviceName is a policy service name (policy's namePattern).
var serviceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// Credentials map the secrets sidecars present to the service they serve.
// The file holds SHA-256 digests only, so reading it does not give a
// sidecar's credential away:
//
//	credentials:
//	  - service: orders
//	    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//
// The digest is of the credential's bytes as the sidecar sends them
// (`printf %s "$CRED" | sha256sum`).
type Credentials struct {
	entries []credential
}

type credential struct {
	service string
	digest  [sha256.Size]byte
}

// credentialsFile is the file's shape.
type credentialsFile struct {
	Credentials []struct {
		Service string `yaml:"service"`
		SHA256  string `yaml:"sha256"`
	} `yaml:"credentials"`
}

// LoadCredentials reads a credentials file.
func LoadCredentials(path string) (*Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("xds credentials: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialsFile+1))
	if err != nil {
		return nil, fmt.Errorf("xds credentials: %w", err)
	}
	c, err := ParseCredentials(data)
	if err != nil {
		return nil, fmt.Errorf("xds credentials %s: %w", path, err)
	}
	return c, nil
}

// ParseCredentials reads the credentials file format (see Credentials):
// unknown fields, duplicate digests, malformed digests and service names
// are errors, and so is a file with no entry.
func ParseCredentials(data []byte) (*Credentials, error) {
	if len(data) > maxCredentialsFile {
		return nil, fmt.Errorf("larger than %d bytes", maxCredentialsFile)
	}
	var doc credentialsFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("no credentials")
		}
		return nil, err
	}
	if len(doc.Credentials) == 0 {
		return nil, errors.New("no credentials")
	}
	if len(doc.Credentials) > maxCredentials {
		return nil, fmt.Errorf("%d credentials, at most %d", len(doc.Credentials), maxCredentials)
	}
	c := &Credentials{entries: make([]credential, 0, len(doc.Credentials))}
	seen := make(map[[sha256.Size]byte]bool, len(doc.Credentials))
	for i, e := range doc.Credentials {
		if !serviceName.MatchString(e.Service) || len(e.Service) > 63 {
			return nil, fmt.Errorf("credential %d: service %.70q is not a service name", i, e.Service)
		}
		var cr credential
		cr.service = e.Service
		if len(e.SHA256) != hex.EncodedLen(sha256.Size) {
			return nil, fmt.Errorf("credential %d (%s): sha256 wants %d hex digits", i, e.Service, hex.EncodedLen(sha256.Size))
		}
		if _, err := hex.Decode(cr.digest[:], []byte(e.SHA256)); err != nil {
			return nil, fmt.Errorf("credential %d (%s): sha256: %w", i, e.Service, err)
		}
		if seen[cr.digest] {
			return nil, fmt.Errorf("credential %d (%s): the same digest is listed twice", i, e.Service)
		}
		seen[cr.digest] = true
		c.entries = append(c.entries, cr)
	}
	return c, nil
}

// Len is the number of credentials.
func (c *Credentials) Len() int { return len(c.entries) }

// service returns the service of a presented credential. Every entry is
// compared, in constant time, whatever matches.
func (c *Credentials) service(presented string) (string, bool) {
	if c == nil || presented == "" || len(presented) > maxCredentialLen {
		return "", false
	}
	d := sha256.Sum256([]byte(presented))
	match := -1
	for i := range c.entries {
		if subtle.ConstantTimeCompare(d[:], c.entries[i].digest[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", false
	}
	return c.entries[match].service, true
}
