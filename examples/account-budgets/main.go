// Command account-budgets is an example service built on changes views: it
// keeps the "account" and "placement" snapshots in process and serves
// account budgets and placement bids over HTTP without a query to
// PostgreSQL, and logs every account that gets deactivated as it happens.
// See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/changes-dev/changes/codecs"
	"github.com/changes-dev/changes/topology"
	"github.com/changes-dev/changes/views"
)

// Account is the service's own type for a row of the accounts table; the
// json tags name its columns. numeric travels as a string: no digit lost.
type Account struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Budget    string `json:"budget"`
	Active    bool   `json:"active"`
	UpdatedAt string `json:"updated_at"`
}

// Placement is a row of the placements table, whose primary key is two
// columns, (campaign_id, site); a site such as news.example/sports holds a
// slash.
type Placement struct {
	CampaignID int64  `json:"campaign_id"`
	Site       string `json:"site"`
	Bid        string `json:"bid"`
	UpdatedAt  string `json:"updated_at"`
}

func main() {
	defaultBrokers := "127.0.0.1:59092" // the local stack's
	if env := os.Getenv("CHANGES_KAFKA_BROKERS"); env != "" {
		defaultBrokers = env // as stack.sh env exports it
	}
	brokers := flag.String("brokers", defaultBrokers, "Kafka bootstrap brokers, comma-separated (default: CHANGES_KAFKA_BROKERS, else the local stack's)")
	topic := flag.String("topic", "changes.snapshot.account-table", "the account snapshot table")
	placementTopic := flag.String("placement-topic", "changes.snapshot.placement-table", "the placement snapshot table (same partitions)")
	partitions := flag.Int("partitions", 4, "the table's partitions (entities[].partitions of the platform's config)")
	listen := flag.String("listen", "127.0.0.1:8090", "HTTP address")
	storage := flag.String("storage", ".stack/account-budgets", "where the view keeps its local copy (the default is the local stack's folder, git-ignored)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// All the view needs: no database credentials, no platform config file.
	// Kafka TLS and SASL, when the cluster asks for them, go in Kafka too.
	cfg := views.Config{
		Kafka:      topology.KafkaConfig{Brokers: strings.Split(*brokers, ",")},
		EntityType: "account",
		Topic:      *topic,
		Partitions: *partitions,
		StorageDir: *storage,
	}
	// A second view, of another table, in the same directory.
	pcfg := cfg
	pcfg.EntityType, pcfg.Topic = "placement", *placementTopic
	if err := run(ctx, cfg, pcfg, *listen, log); err != nil {
		log.Error("account-budgets stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg, pcfg views.Config, listen string, log *slog.Logger) error {
	accounts, err := views.OpenTyped[Account](cfg, views.WithLogger(log))
	if err != nil {
		return err
	}
	placements, err := views.OpenTyped[Placement](pcfg, views.WithLogger(log))
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	runCtx, ran := context.WithCancel(ctx) // done when a view's Run returns
	defer ran()
	for _, v := range []*views.View{accounts.View, placements.View} {
		go func() {
			errc <- v.Run(ctx)
			ran()
		}()
	}

	// Ready once the local copies caught up; a restart reopens them and
	// only reads what changed since. A view that fails to start ends the wait.
	start := time.Now()
	for _, v := range []*views.View{accounts.View, placements.View} {
		if err := v.WaitRecovered(runCtx); err != nil {
			select {
			case rerr := <-errc:
				return errors.Join(err, rerr)
			default:
				return err
			}
		}
	}
	n, _ := accounts.Len()
	np, _ := placements.Len()
	log.Info("views ready", "accounts", n, "placements", np, "seconds", time.Since(start).Seconds())

	go watchDeactivations(ctx, accounts, log, nil)

	srv := &http.Server{Addr: listen, Handler: Handler(accounts, placements), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		log.Info("serving", "addr", "http://"+listen)
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// watchDeactivations logs every account that goes from active to inactive,
// and every account deleted. It remembers the inactive ones (usually few) to
// tell a deactivation from another change of an inactive account.
//
// A subscription never blocks the view: if this loop falls more than the
// buffer behind, the channel closes and it starts over from the view.
//
// watching, if not nil, is called each time the watch has subscribed and
// read the accounts: from then on every change is seen.
func watchDeactivations(ctx context.Context, accounts *views.Typed[Account], log *slog.Logger, watching func()) {
	for ctx.Err() == nil {
		sub := accounts.Subscribe(1024)
		// Subscribed first, then read: nothing falls between the two.
		inactive := map[int64]bool{}
		for e, err := range accounts.All(ctx) {
			if err != nil {
				log.Error("read the accounts", "err", err)
				sub.Close()
				return
			}
			if !e.Value.Active {
				inactive[e.ID] = true
			}
		}
		if watching != nil {
			watching()
		}
		if !follow(ctx, sub, inactive, log) {
			sub.Close()
			return // ctx is done
		}
		if errors.Is(sub.Err(), views.ErrSlowSubscriber) {
			log.Warn("fell behind the view; starting over")
			continue
		}
		return // the view stopped
	}
}

// follow applies the subscription's changes until its channel closes (true)
// or ctx is done (false).
func follow(ctx context.Context, sub *views.TypedSubscription[Account], inactive map[int64]bool, log *slog.Logger) bool {
	for c, err := range sub.Changes(ctx) {
		switch {
		case c.Tombstone: // the deletion was reported before
		case err != nil:
			log.Error("account does not decode", "id", c.EntityID, "err", err)
		case c.Entity == nil:
			log.Info("account deleted", "id", c.EntityID)
			id, _ := c.EntityID.Int() // accounts are keyed by an integer id
			delete(inactive, id)
		default:
			a := c.Entity.Value
			if !a.Active && !inactive[a.ID] {
				log.Info("account deactivated", "id", a.ID, "name", a.Name, "committed", c.Entity.CommitTime)
			}
			if a.Active {
				delete(inactive, a.ID)
			} else {
				inactive[a.ID] = true
			}
		}
	}
	return ctx.Err() == nil
}

// Handler serves
//
//	GET /accounts/{id}                the account, from the local view
//	GET /top?n=10                     the n active accounts with the largest budgets
//	GET /placements/{campaign}/{site}  a placement: /placements/7/news.example/sports
//	GET /readyz                       200 once the views have caught up
func Handler(accounts *views.Typed[Account], placements *views.Typed[Placement]) http.Handler {
	mux := http.NewServeMux()
	// {site...} is the rest of the path, slashes included.
	mux.HandleFunc("GET /placements/{campaign}/{site...}", func(w http.ResponseWriter, r *http.Request) {
		campaign, err := strconv.ParseInt(r.PathValue("campaign"), 10, 64)
		if err != nil || r.PathValue("site") == "" {
			http.Error(w, "want /placements/{campaign id}/{site}", http.StatusBadRequest)
			return
		}
		// The key of a (campaign_id, site) row: its columns' values, in order.
		key := codecs.CompositeKey(codecs.IntKey(campaign), codecs.TextKey(r.PathValue("site")))
		e, ok, err := placements.GetKey(r.Context(), key)
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		case !ok:
			http.Error(w, "no such placement", http.StatusNotFound)
		default:
			writeJSON(w, map[string]any{"placement": e.Value, "as_of": e.CommitTime})
		}
	})
	mux.HandleFunc("GET /accounts/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
		e, ok, err := accounts.Get(r.Context(), id)
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		case !ok:
			http.Error(w, "no such account", http.StatusNotFound)
		default:
			writeJSON(w, map[string]any{"account": e.Value, "as_of": e.CommitTime})
		}
	})
	mux.HandleFunc("GET /top", func(w http.ResponseWriter, r *http.Request) {
		n := 10
		if s := r.URL.Query().Get("n"); s != "" {
			if n, _ = strconv.Atoi(s); n < 1 || n > 1000 {
				http.Error(w, "n must be 1..1000", http.StatusBadRequest)
				return
			}
		}
		type ranked struct {
			Account
			budget float64
		}
		var top []ranked
		for e, err := range accounts.All(r.Context()) {
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			if !e.Value.Active {
				continue
			}
			b, _ := strconv.ParseFloat(e.Value.Budget, 64)
			top = append(top, ranked{e.Value, b})
			if len(top) == 2*n { // keep the best n: O(entities · log n) overall
				slices.SortStableFunc(top, func(a, b ranked) int { return compare(b.budget, a.budget) })
				top = top[:n]
			}
		}
		slices.SortStableFunc(top, func(a, b ranked) int { return compare(b.budget, a.budget) })
		top = top[:min(len(top), n)]
		out := make([]Account, len(top))
		for i, t := range top {
			out[i] = t.Account
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		for _, v := range []*views.View{accounts.View, placements.View} {
			if !v.Recovered() {
				http.Error(w, fmt.Sprintf("view %s %s", v.EntityType(), v.Status()), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

func compare(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
