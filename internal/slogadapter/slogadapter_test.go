package slogadapter_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/lovoo/goka"

	"github.com/changes-dev/changes/internal/slogadapter"
)

var _ goka.Logger = (*slogadapter.Logger)(nil)

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	l := slogadapter.New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), slog.LevelWarn)
	l.Printf("partition %d lost\n", 3)
	l.Println("a", "b")
	l.Print("c")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{`level=WARN msg="partition 3 lost"`, `level=WARN msg="a b"`, `level=WARN msg=c`}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %q, want it to contain %q", i, lines[i], w)
		}
	}
}
