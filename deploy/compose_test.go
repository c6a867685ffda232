package deploy_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/changes-dev/changes/topology"
)

// repoRoot is where docker-compose.yml lives; go test runs in deploy/.
const repoRoot = ".."

// composeFile holds the parts of docker-compose.yml the tests read. Fields that
// Compose accepts in several shapes (short and long syntax) stay untyped.
type composeFile struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image       string         `yaml:"image"`
	Build       any            `yaml:"build"`
	Command     any            `yaml:"command"`
	Environment any            `yaml:"environment"`
	Volumes     []any          `yaml:"volumes"`
	Ports       []any          `yaml:"ports"`
	DependsOn   any            `yaml:"depends_on"`
	Healthcheck map[string]any `yaml:"healthcheck"`
}

type mount struct {
	Type, Source, Target string
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(data, &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"kafka", "postgres", "changes", "prometheus"} {
		if _, ok := cf.Services[name]; !ok {
			t.Fatalf("docker-compose.yml: service %q is missing", name)
		}
	}
	return cf
}

func (s service) command() []string {
	switch c := s.Command.(type) {
	case string:
		return strings.Fields(c)
	case []any:
		out := make([]string, len(c))
		for i, a := range c {
			out[i] = scalar(a)
		}
		return out
	}
	return nil
}

func (s service) env() map[string]string {
	out := map[string]string{}
	switch e := s.Environment.(type) {
	case map[string]any:
		for k, v := range e {
			out[k] = scalar(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(scalar(kv), "=")
			out[k] = v
		}
	}
	return out
}

func (s service) mounts(t *testing.T) []mount {
	t.Helper()
	var out []mount
	for _, v := range s.Volumes {
		switch v := v.(type) {
		case string:
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				continue // anonymous volume
			}
			m := mount{Type: "volume", Source: parts[0], Target: parts[1]}
			if strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") {
				m.Type = "bind"
			}
			out = append(out, m)
		case map[string]any:
			out = append(out, mount{Type: scalar(v["type"]), Source: scalar(v["source"]), Target: scalar(v["target"])})
		default:
			t.Fatalf("volume entry %v has an unknown shape", v)
		}
	}
	return out
}

// bindSource is the host path of the bind mount at target, relative to the repo.
func (s service) bindSource(t *testing.T, target string) string {
	t.Helper()
	for _, m := range s.mounts(t) {
		if m.Type == "bind" && m.Target == target {
			return filepath.Join(repoRoot, m.Source)
		}
	}
	t.Fatalf("nothing is bind-mounted at %s", target)
	return ""
}

// containerPorts are the published ports on the container side.
func (s service) containerPorts() []string {
	var out []string
	for _, p := range s.Ports {
		switch p := p.(type) {
		case map[string]any:
			out = append(out, scalar(p["target"]))
		default:
			spec := scalar(p)
			spec, _, _ = strings.Cut(spec[strings.LastIndex(spec, ":")+1:], "/")
			out = append(out, spec)
		}
	}
	return out
}

// dependsOn maps each dependency to its condition ("" for the list form).
func (s service) dependsOn() map[string]string {
	out := map[string]string{}
	switch d := s.DependsOn.(type) {
	case []any:
		for _, n := range d {
			out[scalar(n)] = ""
		}
	case map[string]any:
		for n, v := range d {
			c, _ := v.(map[string]any)
			out[n] = scalar(c["condition"])
		}
	}
	return out
}

func scalar(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := yaml.Marshal(v)
	return strings.TrimSpace(string(b))
}

// changesConfig loads the config file the changes service is started with, under
// the environment the service gets, as the container would.
func changesConfig(t *testing.T, cf composeFile) *topology.Config {
	t.Helper()
	svc := cf.Services["changes"]
	cmd := svc.command()
	i := slices.Index(cmd, "--config")
	if i < 0 || i+1 >= len(cmd) {
		t.Fatalf("changes: command %q has no --config", cmd)
	}
	path := svc.bindSource(t, cmd[i+1])
	// The test's own CHANGES_* variables would override the file as well.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "CHANGES_") {
			t.Setenv(k, "") // restores the value after the test
			os.Unsetenv(k)
		}
	}
	for k, v := range svc.env() {
		t.Setenv(k, v)
	}
	cfg, err := topology.Load(path)
	if err != nil {
		t.Fatalf("changes config: %v", err)
	}
	return cfg
}

func TestServicesWireUp(t *testing.T) {
	cf := loadCompose(t)
	svc := cf.Services["changes"]
	if svc.Build == nil {
		t.Error("changes: no build, so compose would not build this checkout")
	}
	deps := svc.dependsOn()
	for _, dep := range []string{"kafka", "postgres"} {
		if deps[dep] != "service_healthy" {
			t.Errorf("changes: depends_on %s has condition %q, want service_healthy", dep, deps[dep])
		}
		// service_healthy without a healthcheck never becomes true.
		if len(cf.Services[dep].Healthcheck) == 0 {
			t.Errorf("%s: no healthcheck", dep)
		}
	}
	for name, s := range cf.Services {
		for _, m := range s.mounts(t) {
			if m.Type == "volume" {
				if _, ok := cf.Volumes[m.Source]; !ok {
					t.Errorf("%s: volume %q is not declared under volumes", name, m.Source)
				}
			}
		}
	}
}

func TestPostgresHasLogicalReplication(t *testing.T) {
	cf := loadCompose(t)
	if cmd := cf.Services["postgres"].command(); !slices.Contains(cmd, "wal_level=logical") {
		t.Errorf("postgres: command %q does not set wal_level=logical", cmd)
	}
}

func TestKafkaIsKRaft(t *testing.T) {
	cf := loadCompose(t)
	env := cf.Services["kafka"].env()
	if roles := env["KAFKA_PROCESS_ROLES"]; !strings.Contains(roles, "controller") {
		t.Errorf("kafka: KAFKA_PROCESS_ROLES=%q, want a KRaft controller", roles)
	}
	// changes must reach the broker at the address the broker hands out.
	adv := env["KAFKA_ADVERTISED_LISTENERS"]
	for _, b := range strings.Split(cf.Services["changes"].env()["CHANGES_KAFKA_BROKERS"], ",") {
		if !strings.Contains(adv, "://"+b) {
			t.Errorf("changes: broker %q is not among kafka's advertised listeners %q", b, adv)
		}
	}
}

func TestBindSourcesExist(t *testing.T) {
	cf := loadCompose(t)
	for name, s := range cf.Services {
		for _, m := range s.mounts(t) {
			if m.Type != "bind" || !strings.HasPrefix(m.Source, ".") {
				continue
			}
			if _, err := os.Stat(filepath.Join(repoRoot, m.Source)); err != nil {
				t.Errorf("%s: bind source %s: %v", name, m.Source, err)
			}
		}
		if ctx, ok := s.Build.(string); ok {
			if _, err := os.Stat(filepath.Join(repoRoot, ctx, "Dockerfile")); err != nil {
				t.Errorf("%s: build: %v", name, err)
			}
		}
	}
}

func TestChangesConfig(t *testing.T) {
	cf := loadCompose(t)
	cfg := changesConfig(t, cf)
	svc := cf.Services["changes"]

	host, port, err := net.SplitHostPort(cfg.Metrics)
	if err != nil {
		t.Fatalf("changes config: metrics %q: %v", cfg.Metrics, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("changes config: metrics listens on %s, which Prometheus's container cannot reach", cfg.Metrics)
	}
	if !slices.Contains(svc.containerPorts(), port) {
		t.Errorf("changes: metrics port %s is not published (ports %q)", port, svc.containerPorts())
	}
	// Storage outside a volume is lost with the container and rebuilt from Kafka.
	var onVolume bool
	for _, m := range svc.mounts(t) {
		onVolume = onVolume || m.Type == "volume" && m.Target == cfg.Storage
	}
	if !onVolume {
		t.Errorf("changes config: storage %s is not a volume of the changes service", cfg.Storage)
	}
}

func TestPrometheusScrapesChanges(t *testing.T) {
	cf := loadCompose(t)
	cfg := changesConfig(t, cf)
	_, port, err := net.SplitHostPort(cfg.Metrics)
	if err != nil {
		t.Fatalf("changes config: metrics %q: %v", cfg.Metrics, err)
	}
	data, err := os.ReadFile(cf.Services["prometheus"].bindSource(t, "/etc/prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		ScrapeConfigs []struct {
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &prom); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	want := net.JoinHostPort("changes", port)
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			if slices.Contains(st.Targets, want) && (sc.MetricsPath == "" || sc.MetricsPath == "/metrics") {
				return
			}
		}
	}
	t.Errorf("prometheus.yml: no scrape config targets %s at /metrics", want)
}

var createTable = regexp.MustCompile(`(?i)\bcreate\s+table\s+(?:if\s+not\s+exists\s+)?([a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?)`)

func TestInitSQLTablesAreEntities(t *testing.T) {
	cf := loadCompose(t)
	cfg := changesConfig(t, cf)
	pg := cf.Services["postgres"]
	var created []string
	for _, m := range pg.mounts(t) {
		if m.Type != "bind" || !strings.HasPrefix(m.Target, "/docker-entrypoint-initdb.d/") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(repoRoot, m.Source))
		if err != nil {
			t.Fatal(err)
		}
		for _, match := range createTable.FindAllStringSubmatch(string(data), -1) {
			table := strings.ToLower(match[1])
			if !strings.Contains(table, ".") {
				table = "public." + table
			}
			created = append(created, table)
		}
	}
	if len(created) == 0 {
		t.Fatal("postgres: no init script creates a table")
	}
	var entities []string
	for _, e := range cfg.Entities {
		entities = append(entities, e.Table)
	}
	for _, table := range created {
		if !slices.Contains(entities, table) {
			t.Errorf("init.sql creates %s, which no entity in the changes config captures", table)
		}
	}
	// The publication cannot name a table that does not exist.
	for _, table := range entities {
		if !slices.Contains(created, table) {
			t.Errorf("changes config captures %s, which init.sql does not create", table)
		}
	}
}

// TestComposeConfig lets Compose itself validate the file, where a Compose
// implementation is installed; it needs no Docker engine.
func TestComposeConfig(t *testing.T) {
	loadCompose(t)
	var name string
	var args []string
	if exec.Command("docker", "compose", "version").Run() == nil {
		name, args = "docker", []string{"compose", "config", "-q"}
	} else if p, err := exec.LookPath("docker-compose"); err == nil {
		name, args = p, []string{"config", "-q"}
	} else {
		msg := "no Compose implementation (docker compose or docker-compose) on PATH to validate docker-compose.yml (apt-get install docker-compose; no engine needed)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.CommandContext(t.Context(), name, args...)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
