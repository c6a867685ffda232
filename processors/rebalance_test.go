package processors

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/lovoo/goka"
)

func TestLogAssignment(t *testing.T) {
	for _, c := range []struct {
		name string
		a    goka.Assignment
		want string
	}{
		{"some", goka.Assignment{5: 10, 1: -1, 3: 0}, `level=INFO msg="partitions assigned" group=p.snapshot.account partitions="[1 3 5]"`},
		{"none", goka.Assignment{}, `level=INFO msg="partitions assigned" group=p.snapshot.account partitions=[]`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}))
			logAssignment(log, "p.snapshot.account")(c.a)
			if got := strings.TrimSpace(buf.String()); got != c.want {
				t.Errorf("log line\n got %s\nwant %s", got, c.want)
			}
		})
	}
}
