package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/views/history"
)

// fakeHistory holds changes of account 1 at the given offsets, in a history
// of [start, end); it counts the changes it yielded.
type fakeHistory struct {
	start, end int64
	changes    []history.Change
	yielded    int
	err        error // ends the sequence after the changes, when not nil
}

func (f *fakeHistory) Bounds(context.Context) (history.Bounds, error) {
	return history.Bounds{Start: f.start, End: f.end, Retention: time.Hour}, nil
}

func (f *fakeHistory) ChangesSeq(_ context.Context, typ string, id codecs.Key, from, to int64) iter.Seq2[history.Change, error] {
	return func(yield func(history.Change, error) bool) {
		for _, c := range f.changes {
			if c.Offset < from || c.Offset >= to {
				continue
			}
			f.yielded++
			if !yield(c, nil) {
				return
			}
		}
		if f.err != nil {
			yield(history.Change{}, f.err)
		}
	}
}

func change(off int64, noteBytes int) history.Change {
	note, _ := json.Marshal(strings.Repeat("n", noteBytes))
	return history.Change{Offset: off, Event: &codecs.Event{EntityType: "account", EntityID: codecs.IntKey(1), Op: codecs.OpUpdate,
		After: codecs.Row{"note": note}, CommitTime: time.Unix(1700000000, 0).UTC()}}
}

func TestChangesPages(t *testing.T) {
	const budget = 16 << 10
	// 30 changes of about 2 KB at offsets 100, 103, ..., 187; offset 130
	// is 40 KB, more than a page.
	f := &fakeHistory{start: 100, end: 1000}
	for i := range int64(30) {
		n := 2 << 10
		if i == 10 {
			n = 40 << 10
		}
		f.changes = append(f.changes, change(100+3*i, n))
	}
	s := &server{cfg: Config{MaxResponseBytes: budget}}
	var offsets []int64
	after := int64(-1)
	pages := 0
	for ; pages < 100; pages++ {
		body, err := s.changes(context.Background(), f, "account", codecs.IntKey(1), after+1, MaxLimit)
		if err != nil {
			t.Fatal(err)
		}
		var page Changes // what a client decodes
		if err := json.Unmarshal(body, &page); err != nil || page.Type != "account" || page.ID != "1" {
			t.Fatalf("page %s: %v", body[:min(len(body), 200)], err)
		}
		if len(page.Changes) > 1 && len(body) > budget {
			t.Errorf("a page of %d changes is %d bytes, over the budget of %d", len(page.Changes), len(body), budget)
		}
		for _, c := range page.Changes {
			offsets = append(offsets, c.Offset)
		}
		if page.NextAfter == "" {
			break
		}
		if want := strconv.FormatInt(offsets[len(offsets)-1], 10); page.NextAfter != want {
			t.Fatalf("next_after %q, want the page's last offset %s", page.NextAfter, want)
		}
		after, _ = strconv.ParseInt(page.NextAfter, 10, 64)
	}
	var want []int64
	for _, c := range f.changes {
		want = append(want, c.Offset)
	}
	if fmt.Sprint(offsets) != fmt.Sprint(want) {
		t.Errorf("pages gave offsets %v, want %v once each", offsets, want)
	}
	if pages < 4 {
		t.Errorf("%d pages for 100 KB of changes with a budget of 16 KB", pages)
	}
	// A page stops the read: it takes at most one change it does not return.
	f.yielded = 0
	body, err := s.changes(context.Background(), f, "account", codecs.IntKey(1), 0, 2)
	var out Changes
	if err != nil || json.Unmarshal(body, &out) != nil || len(out.Changes) != 2 || out.NextAfter != "103" || f.yielded != 3 {
		t.Errorf("limit 2: %s, %v, %d read; want 2 changes, next_after 103, 3 read", body, err, f.yielded)
	}
	// The same JSON as encoding/json makes of a Changes.
	std, _ := json.Marshal(out)
	if string(body) != string(std)+"\n" {
		t.Errorf("page JSON\n%s\nwant\n%s", body, std)
	}
	// A cursor before the history's start has lost changes: 410.
	if _, err := s.changes(context.Background(), f, "account", codecs.IntKey(1), 50, 10); !errors.Is(err, history.ErrBeforeHistory) || statusOf(err) != 410 {
		t.Errorf("after=49 with the history starting at 100: %v", err)
	}
	// An error while reading is the request's error, not a short page.
	f.err = errors.New("broker gone")
	if _, err := s.changes(context.Background(), f, "account", codecs.IntKey(1), 181, MaxLimit); err == nil {
		t.Error("a failed read gave a page")
	}
}

// TestInternalErrorBody: a 500 answers only "internal error" and an id,
// however much the error says.
func TestInternalErrorBody(t *testing.T) {
	var logs strings.Builder
	s := &server{log: slogTo(&logs)}
	w := httptest.NewRecorder()
	err := fmt.Errorf("history: read offset 7: %w", errors.New("dial tcp 10.1.2.3:9092: connection refused"))
	s.fail(w, httptest.NewRequest("GET", "/v1/history/account/1", nil), statusOf(err), err)
	var eb errorBody
	if w.Code != 500 || json.Unmarshal(w.Body.Bytes(), &eb) != nil || eb.Error != "internal error" || len(eb.ID) != 16 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), "10.1.2.3") {
		t.Errorf("the body gives the detail away: %s", w.Body)
	}
	if !strings.Contains(logs.String(), "request_id="+eb.ID) || !strings.Contains(logs.String(), "10.1.2.3") {
		t.Errorf("the log line lacks the id %s or the detail: %s", eb.ID, logs.String())
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// What a view cannot know yet while it catches up is 503 with Retry-After,
// never 404 (the entity may exist) nor 410 (it may be older than the
// history but known to the caught-up view).
func TestCatchingUpIsUnavailable(t *testing.T) {
	if got := statusOf(fmt.Errorf("account 7: %w", errCatchingUp)); got != http.StatusServiceUnavailable {
		t.Errorf("statusOf(catching up) = %d, want 503", got)
	}
	s := &server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	w := httptest.NewRecorder()
	s.fail(w, httptest.NewRequest("GET", "/v1/entities/account/7", nil), http.StatusServiceUnavailable, fmt.Errorf("account 7: %w", errCatchingUp))
	if w.Code != 503 || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "catching up") {
		t.Errorf("fail(catching up) = %d %q %s; want 503 with Retry-After and the reason", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
}
