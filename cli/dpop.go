package cli

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	neturl "net/url"
	"os"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/policy"
)

// maxJWKFileBytes bounds a JWK file read by --bind-jwk and dpop proof.
const maxJWKFileBytes = 16 << 10

func newDPoPCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dpop",
		Short: "Make DPoP keys and proofs (RFC 9449) for tokens of a class with binding: dpop",
	}
	cmd.AddCommand(newDPoPKeygenCommand(), newDPoPProofCommand())
	return cmd
}

func newDPoPKeygenCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Write a new Ed25519 private JWK to FILE (mode 0600); print its thumbprint (jkt)",
		Example: `  tokenwarden dpop keygen --out client.jwk
  tokenwarden token issue --subject partner --class partner --bind-jwk client.jwk`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			b, err := jose.JSONWebKey{Key: priv}.MarshalJSON()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			if _, err := f.Write(append(b, '\n')); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			jkt, err := jwkFileThumbprint(out)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), jkt)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to create (refused if it exists)")
	cmd.MarkFlagRequired("out")
	return cmd
}

func newDPoPProofCommand() *cobra.Command {
	var keyFile, method, url, tokenFile string
	cmd := &cobra.Command{
		Use:   "proof --key FILE --method M --url URL [--token-file FILE]",
		Short: "Print a DPoP proof for one request, signed by the private JWK in FILE",
		Long: `Print a DPoP proof JWT for one request: htm, htu (query and fragment
dropped), iat now, a random jti and, with --token-file (- for stdin), ath of
the access token. A proof is good for one request within the agent's window.`,
		Example: `  curl -H "Authorization: DPoP $TOKEN" \
    -H "DPoP: $(tokenwarden dpop proof --key client.jwk --method GET --url https://orders/orders/1 --token-file tok)" \
    https://orders/orders/1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !isHTTPMethod(method) {
				return usageErrorf("--method %q: want an HTTP method such as GET or POST", method)
			}
			if u, err := neturl.Parse(url); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return usageErrorf("--url %q: want the request's absolute http(s) URL, e.g. https://orders/orders/1", url)
			}
			key, err := readJWK(keyFile)
			if err != nil {
				return usageErrorf("--key %s: %v", keyFile, err)
			}
			signer, ok := key.Key.(crypto.Signer)
			if !ok || key.IsPublic() {
				return usageErrorf("--key %s: want a private Ed25519 or EC P-256 JWK", keyFile)
			}
			var token string
			if tokenFile != "" {
				var r io.Reader = cmd.InOrStdin()
				if tokenFile != "-" {
					f, err := os.Open(tokenFile)
					if err != nil {
						return err
					}
					defer f.Close()
					r = f
				}
				b, err := io.ReadAll(io.LimitReader(r, policy.MaxTokenBytes+2))
				if err != nil {
					return err
				}
				token = strings.TrimSpace(string(b))
			}
			proof, err := policy.MakeDPoPProof(signer, method, url, token, time.Now())
			if err != nil {
				return usageErrorf("%v", err) // --method or --url
			}
			fmt.Fprintln(cmd.OutOrStdout(), proof)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "private JWK file (from dpop keygen)")
	f.StringVar(&method, "method", "", "request method, e.g. GET")
	f.StringVar(&url, "url", "", "request URL, e.g. https://orders/orders/1")
	f.StringVar(&tokenFile, "token-file", "", "file holding the access token (- for stdin), for ath")
	for _, n := range []string{"key", "method", "url"} {
		cmd.MarkFlagRequired(n)
	}
	return cmd
}

// isHTTPMethod reports whether m is an HTTP method token (RFC 9110).
func isHTTPMethod(m string) bool {
	if m == "" || len(m) > 32 {
		return false
	}
	for _, c := range m {
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", c) && !('0' <= c && c <= '9') && !('A' <= c && c <= 'Z') && !('a' <= c && c <= 'z') {
			return false
		}
	}
	return true
}

func readJWK(name string) (*jose.JSONWebKey, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJWKFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxJWKFileBytes {
		return nil, errors.New("file too large for a JWK")
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("not a JWK: %w", err)
	}
	return &k, nil
}

// jwkFileThumbprint is the RFC 7638 thumbprint of the public part of the
// JWK in name.
func jwkFileThumbprint(name string) (string, error) {
	k, err := readJWK(name)
	if err != nil {
		return "", err
	}
	pub := k.Public()
	b, err := pub.MarshalJSON()
	if err != nil {
		return "", err
	}
	return policy.JWKThumbprint(b)
}
