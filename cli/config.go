package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
)

// The CLI's configuration file holds named contexts: which agent to talk
// to and with which admin token, so that the CLI works from any directory
// and switches between agents by name:
//
//	current-context: dev
//	contexts:
//	  dev:
//	    server: http://127.0.0.1:9003
//	    admin-token-file: /home/me/.local/state/tokenwarden/admin.token
//	  prod-node-1:
//	    server: https://tokenwarden-admin.prod.example:9003
//	    admin-token-file: /home/me/.config/tokenwarden/prod.token
//	    ca-file: /home/me/.config/tokenwarden/prod-ca.pem
const (
	envConfig  = "TOKENWARDEN_CONFIG"
	envContext = "TOKENWARDEN_CONTEXT"
	// maxConfigBytes bounds the configuration file.
	maxConfigBytes = 64 << 10
	// maxContexts bounds the contexts of one file.
	maxContexts = 256
	// maxConfigPathBytes bounds a path in the file.
	maxConfigPathBytes = 4096
)

// contextName is what a context may be called: a word, as in a shell.
var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// cliConfig is the configuration file.
type cliConfig struct {
	CurrentContext string                `yaml:"current-context,omitempty" json:"current-context,omitempty"`
	Contexts       map[string]cliContext `yaml:"contexts,omitempty" json:"contexts,omitempty"`
}

// cliContext is one named agent.
type cliContext struct {
	Server         string `yaml:"server,omitempty" json:"server,omitempty"`                     // admin API address
	AdminTokenFile string `yaml:"admin-token-file,omitempty" json:"admin-token-file,omitempty"` // absolute path
	CAFile         string `yaml:"ca-file,omitempty" json:"ca-file,omitempty"`                   // PEM bundle for an https:// server
}

// configPath is the configuration file: $TOKENWARDEN_CONFIG, else
// $XDG_CONFIG_HOME/tokenwarden/config.yaml, else
// ~/.config/tokenwarden/config.yaml. "" when no home is known.
func configPath() string {
	if p := os.Getenv(envConfig); p != "" {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
		return p
	}
	// The XDG base directory spec: a relative value is ignored.
	if x := os.Getenv("XDG_CONFIG_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "tokenwarden", "config.yaml")
	}
	if home, err := os.UserHomeDir(); err == nil && filepath.IsAbs(home) {
		return filepath.Join(home, ".config", "tokenwarden", "config.yaml")
	}
	return ""
}

// loadConfig reads the configuration file at path; a file that does not
// exist is an empty configuration. A file others may write is refused: it
// chooses where the admin token is sent.
func loadConfig(path string) (*cliConfig, error) {
	if path == "" {
		return &cliConfig{}, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &cliConfig{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("config %s: not a regular file", path)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("config %s has mode %04o: others on this host could point the CLI, and its admin token, at a server of theirs; run `chmod 600 %s`", path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c, err := parseConfig(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// parseConfig reads a configuration strictly: known fields only, one
// document, bounded, every context named as a word with a valid server;
// relative paths are taken from dir (the file's directory), as kubectl
// does.
func parseConfig(data []byte, dir string) (*cliConfig, error) {
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("over %d bytes", maxConfigBytes)
	}
	c := &cliConfig{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document: keep one")
	}
	if len(c.Contexts) > maxContexts {
		return nil, fmt.Errorf("%d contexts: at most %d", len(c.Contexts), maxContexts)
	}
	for name, ctx := range c.Contexts {
		if !contextName.MatchString(name) {
			return nil, fmt.Errorf("context %q: a name is a letter or digit, then up to 62 letters, digits, '.', '_' or '-'", name)
		}
		if ctx.Server != "" {
			if _, err := serverURL(ctx.Server); err != nil {
				return nil, fmt.Errorf("context %s: server %q: want http://HOST:PORT or https://HOST:PORT", name, ctx.Server)
			}
		}
		for field, p := range map[string]*string{"admin-token-file": &ctx.AdminTokenFile, "ca-file": &ctx.CAFile} {
			if *p == "" {
				continue
			}
			if len(*p) > maxConfigPathBytes || strings.ContainsRune(*p, 0) {
				return nil, fmt.Errorf("context %s: %s: not a path", name, field)
			}
			if !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
		c.Contexts[name] = ctx
	}
	if c.CurrentContext != "" {
		if _, ok := c.Contexts[c.CurrentContext]; !ok {
			return nil, fmt.Errorf("current-context %q is not among its contexts (%s)", c.CurrentContext, strings.Join(c.names(), ", "))
		}
	}
	return c, nil
}

// names lists the contexts in order.
func (c *cliConfig) names() []string {
	names := make([]string, 0, len(c.Contexts))
	for n := range c.Contexts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// save writes the configuration to path (mode 0600; its directory 0700 if
// it is created).
func (c *cliConfig) save(path string) error {
	if path == "" {
		return errors.New("no configuration file: set " + envConfig + " or HOME")
	}
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data)
}

// selected is the context chosen by --context, else $TOKENWARDEN_CONTEXT,
// else the file's current-context; nil when none is. Naming a context the
// file lacks is a usage error.
func (c *cliConfig) selected(flag string) (*cliContext, string, error) {
	name, from := flag, "--context"
	if name == "" {
		name, from = os.Getenv(envContext), envContext
	}
	if name == "" {
		name, from = c.CurrentContext, "current-context"
	}
	if name == "" {
		return nil, "", nil
	}
	ctx, ok := c.Contexts[name]
	if !ok {
		known := strings.Join(c.names(), ", ")
		if known == "" {
			known = "none yet: add one with `tokenwarden config set-context`"
		}
		return nil, "", usageErrorf("%s %q: no such context in %s (contexts: %s)", from, name, configPath(), known)
	}
	return &ctx, name, nil
}
