package deploy_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestAlertRules runs `promtool test rules` on the alert rules: every rule
// fires on the series its test feeds it, and stays quiet otherwise.
// Debian's prometheus package has promtool; under CI=true a missing promtool
// fails the test.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found (apt-get install prometheus)")
		}
		t.Skip("promtool not found (apt-get install prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", "prometheus/alerts.yml"},
		{"test", "rules", "prometheus/alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestEveryAlertIsTested: each rule of alerts.yml has a promtool test.
func TestEveryAlertIsTested(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	raw, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("prometheus/alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if !strings.Contains(string(tests), "alertname: "+r.Alert+"\n") {
				t.Errorf("alert %s has no promtool test", r.Alert)
			}
		}
	}
	if n == 0 {
		t.Fatal("no alert rules")
	}
}

// TestComposePrometheusLoadsTheAlerts: the compose Prometheus mounts
// alerts.yml where its config loads rules from.
func TestComposePrometheusLoadsTheAlerts(t *testing.T) {
	cf := loadCompose(t)
	src := cf.Services["prometheus"].bindSource(t, "/etc/prometheus/alerts.yml")
	if !strings.HasSuffix(src, "deploy/prometheus/alerts.yml") {
		t.Errorf("prometheus mounts %s at /etc/prometheus/alerts.yml, want deploy/prometheus/alerts.yml", src)
	}
	raw, err := os.ReadFile(cf.Services["prometheus"].bindSource(t, "/etc/prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var prom struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	if err := yaml.Unmarshal(raw, &prom); err != nil {
		t.Fatal(err)
	}
	if len(prom.RuleFiles) != 1 || prom.RuleFiles[0] != "/etc/prometheus/alerts.yml" {
		t.Errorf("prometheus.yml rule_files = %v, want [/etc/prometheus/alerts.yml]", prom.RuleFiles)
	}
}
