package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"google.golang.org/grpc/grpclog"
)

// Log formats of serve --log-format.
const (
	logText = "text"
	logJSON = "json"
)

// newLogger is the agent's logger on w: every line it writes is one record
// in the chosen format.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case logText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case logJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErrorf("--log-format %q: want text or json", format)
}

// loggedError is an error serve has already written as a log record; it is
// not printed again.
type loggedError struct{ exitErr }

// grpcLogger routes grpc-go's own logging into the agent's logger, so that
// no line on stderr escapes the chosen format. grpc's info chatter is
// debug here.
type grpcLogger struct{ l *slog.Logger }

func (g grpcLogger) log(level slog.Level, msg string) {
	g.l.Log(context.Background(), level, msg, "component", "grpc")
}

func (g grpcLogger) Info(args ...any)   { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcLogger) Infoln(args ...any) { g.log(slog.LevelDebug, fmt.Sprint(args...)) }
func (g grpcLogger) Infof(format string, args ...any) {
	g.log(slog.LevelDebug, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Warning(args ...any)   { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Warningln(args ...any) { g.log(slog.LevelWarn, fmt.Sprint(args...)) }
func (g grpcLogger) Warningf(format string, args ...any) {
	g.log(slog.LevelWarn, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Error(args ...any)   { g.log(slog.LevelError, fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any) { g.log(slog.LevelError, fmt.Sprint(args...)) }
func (g grpcLogger) Errorf(format string, args ...any) {
	g.log(slog.LevelError, fmt.Sprintf(format, args...))
}
func (g grpcLogger) Fatal(args ...any)                 { g.Error(args...); os.Exit(exitError) }
func (g grpcLogger) Fatalln(args ...any)               { g.Error(args...); os.Exit(exitError) }
func (g grpcLogger) Fatalf(format string, args ...any) { g.Errorf(format, args...); os.Exit(exitError) }
func (g grpcLogger) V(l int) bool                      { return g.l.Enabled(context.Background(), slog.LevelDebug) }

var _ grpclog.LoggerV2 = grpcLogger{}
