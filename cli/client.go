package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// adminFlags are the flags every admin API command shares.
type adminFlags struct {
	server    string
	tokenFile string
}

// adminClient calls the agent's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func (f *adminFlags) client() (*adminClient, error) {
	b, err := os.ReadFile(f.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("read admin token: %w (is the agent running? `make run` writes .data/admin.token; or pass --admin-token-file)", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return nil, fmt.Errorf("admin token file %s is empty", f.tokenFile)
	}
	base := strings.TrimRight(f.server, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "http://" + base
	}
	return &adminClient{base: base, token: tok, http: &http.Client{}}, nil
}

// apiError is an error answer of the admin API.
type apiError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
}

func (e *apiError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	return fmt.Sprintf("admin API answered %d %s", e.Status, e.Code)
}

// do sends a JSON request and decodes a JSON answer into out.
func (c *adminClient) do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("decode admin API answer: %w", err)
	}
	return nil
}

func (c *adminClient) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op interface{ Timeout() bool }
		if errors.As(err, &op) && op.Timeout() {
			return nil, fmt.Errorf("admin API at %s did not answer in time", c.base)
		}
		return nil, fmt.Errorf("cannot reach the agent's admin API at %s: %w (start it with `make run` or pass --server)", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		e := &apiError{Status: resp.StatusCode}
		json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(e)
		return nil, e
	}
	return resp, nil
}
