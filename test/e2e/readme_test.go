//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/dapr-nats/jetstream-pubsub/test/e2e/stack"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// The README sections whose ```sh blocks the scenario runs, in this order.
var readmeSections = []string{
	"### Start NATS and the component",
	"### The tweet demo with the dapr CLI",
}

const modulePath = "github.com/dapr-nats/jetstream-pubsub"

// TestReadmeSelfHosted runs the self-hosted steps and the tweet demo of
// README.md as they are written, so that the README fails here when it drifts
// from the code: the Component YAML it has users write (which must also equal
// component.yaml), how it starts the component, the `dapr run` line and the
// requests of the like step, with the app's real routes and answers.
//
// Where a step cannot run as written here, a stand-in does the same thing:
// the scenario's own nats-server serves the README's NATS (natsURL is pointed
// at it), the binaries the README builds are the ones TestMain built from the
// same packages, the socket folder is private to the scenario (the README's
// default /tmp folder would be shared by parallel runs), and daprd runs with
// the flags `dapr run` passes, on free ports that replace the README's in the
// requests.
func TestReadmeSelfHosted(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var script []shLine
	for _, h := range readmeSections {
		sec, err := mdSection(string(md), h)
		if err != nil {
			t.Fatalf("README.md: %v", err)
		}
		blocks := shBlocks(sec)
		if len(blocks) == 0 {
			t.Fatalf("README.md: section %q has no ```sh block", h)
		}
		for _, b := range blocks {
			lines, err := parseScript(b)
			if err != nil {
				t.Fatalf("README.md, section %q: %v", h, err)
			}
			script = append(script, lines...)
		}
	}
	run, err := findDaprRun(script)
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}

	eachVersion(t, func(t *testing.T, v string) {
		start := time.Now()
		e := newEnv(t, v)
		r := &readmeRun{
			t: t, e: e, root: root, work: t.TempDir(), sockets: t.TempDir(),
			vars: map[string]string{}, builds: map[string]string{}, daprRun: run,
			node: e.newNode(run.appID),
		}
		for _, l := range script {
			t.Logf("$ %s", l.text)
			if err := r.runLine(l); err != nil {
				t.Fatalf("README.md: %q: %v", l.text, err)
			}
		}
		r.checkDelivered()
		t.Logf("the README's steps worked in %s (daprd %s)", time.Since(start).Round(time.Millisecond), v)
	})
}

// daprRunLine is what the README's `dapr run` line says.
type daprRunLine struct {
	appID, appPort, httpPort, resources string
	command                             []word
}

// findDaprRun finds the single `dapr run` line and reads its flags. The
// scenario needs the app id before it runs anything, to name the node.
func findDaprRun(script []shLine) (daprRunLine, error) {
	var found []daprRunLine
	for _, l := range script {
		for _, p := range l.pipelines {
			for _, c := range p {
				argv, err := c.argv(nil)
				if err != nil || len(argv) < 2 || argv[0] != "dapr" || argv[1] != "run" {
					continue
				}
				var d daprRunLine
				for i := 2; i < len(argv); i++ {
					if argv[i] == "--" {
						d.command = c.args[i+1:]
						break
					}
					name, val, ok := strings.Cut(argv[i], "=")
					if !ok {
						if i+1 == len(argv) {
							return d, fmt.Errorf("dapr run: %s without a value", name)
						}
						i++
						val = argv[i]
					}
					switch name {
					case "--app-id", "-a":
						d.appID = val
					case "--app-port", "-p":
						d.appPort = val
					case "--dapr-http-port", "-H":
						d.httpPort = val
					case "--resources-path":
						d.resources = val
					default:
						// Each flag maps to a daprd flag or an app variable
						// here; an unknown one would be silently dropped.
						return d, fmt.Errorf("dapr run: flag %s is not known to this scenario", name)
					}
				}
				if d.appID == "" || d.appPort == "" || d.resources == "" || len(d.command) == 0 {
					return d, fmt.Errorf("%q: dapr run needs --app-id, --app-port, --resources-path and an app command after --", l.text)
				}
				found = append(found, d)
			}
		}
	}
	if len(found) != 1 {
		return daprRunLine{}, fmt.Errorf("found %d `dapr run` lines with an app to run, want 1", len(found))
	}
	return found[0], nil
}

// readmeRun runs the README's lines for one daprd version.
type readmeRun struct {
	t                   *testing.T
	e                   *env
	root, work, sockets string
	vars                map[string]string
	builds              map[string]string // the README's binary path (cleaned) → the binary TestMain built
	daprRun             daprRunLine
	node                *stack.Node

	natsPort      string // where the README's nats-server listens
	servedType    string // the component type the component logged that it serves
	component     *componentDoc
	componentFile string
	readmeNATSURL string
	requests      []readmeRequest
}

// readmeRequest is one HTTP request of the README's curl lines.
type readmeRequest struct {
	method, path string
	body         []byte
	answer       map[string]any // the JSON object answered, if it is one
}

func (r *readmeRun) runLine(l shLine) error {
	if l.assign != "" {
		return r.assign(l)
	}
	for i, p := range l.pipelines {
		last := i == len(l.pipelines)-1
		if len(p) == 2 && p[0].argv0() == "curl" && p[1].argv0() == "jq" {
			if _, err := r.curl(p[0], p[1], ""); err != nil {
				return err
			}
			continue
		}
		if len(p) != 1 {
			return fmt.Errorf("this pipeline is not understood")
		}
		if err := r.runCommand(p[0], l.background && last); err != nil {
			return err
		}
	}
	return nil
}

func (c shCommand) argv0() string {
	if len(c.args) == 0 {
		return ""
	}
	s, _ := c.args[0].literal()
	return s
}

// assign runs NAME=$(curl ... | jq -r .field).
func (r *readmeRun) assign(l shLine) error {
	if len(l.pipelines) != 1 || len(l.pipelines[0]) != 2 || l.pipelines[0][0].argv0() != "curl" || l.pipelines[0][1].argv0() != "jq" {
		return fmt.Errorf("only NAME=$(curl ... | jq -r .field) is understood")
	}
	v, err := r.curl(l.pipelines[0][0], l.pipelines[0][1], l.assign)
	if err != nil {
		return err
	}
	r.vars[l.assign] = v
	return nil
}

func (r *readmeRun) runCommand(c shCommand, background bool) error {
	argv, err := c.argv(r.vars)
	if err != nil {
		return err
	}
	env, err := expandAll(c.env, r.vars)
	if err != nil {
		return err
	}
	switch {
	case len(argv) >= 3 && argv[0] == "go" && argv[1] == "tool" && argv[2] == "nats-server":
		return r.natsServer(argv[3:], background)
	case len(argv) >= 2 && argv[0] == "go" && argv[1] == "build":
		return r.goBuild(argv[2:])
	case len(argv) >= 2 && argv[0] == "dapr" && argv[1] == "run":
		return r.startDaprRun(env)
	case argv[0] == "mkdir":
		if len(argv) < 3 || argv[1] != "-p" {
			return fmt.Errorf("only mkdir -p DIR... is understood")
		}
		for _, d := range argv[2:] {
			p, err := r.local(d)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		}
		return nil
	case argv[0] == "cat" && len(argv) == 1 && c.heredocDelim != "" && len(c.stdout) > 0:
		return r.writeHeredoc(c)
	case argv[0] == "curl":
		_, err := r.curl(c, shCommand{}, "")
		return err
	}
	if bin, ok := r.builds[filepath.Clean(argv[0])]; ok {
		if bin != componentBin {
			return fmt.Errorf("only the component is started directly; the app is started by dapr run")
		}
		if !background {
			return fmt.Errorf("the component must run in the background (&) for the next steps to run")
		}
		return r.startComponent(env, argv[1:])
	}
	return fmt.Errorf("%s is not understood", argv[0])
}

// local resolves a path the README gives relative to the repository root.
func (r *readmeRun) local(p string) (string, error) {
	if filepath.IsAbs(p) || strings.HasPrefix(p, "~") || strings.HasPrefix(filepath.Clean(p), "..") {
		return "", fmt.Errorf("path %s is outside the working directory", p)
	}
	return filepath.Join(r.work, p), nil
}

// natsServer stands in for the README's nats-server with the scenario's own,
// and notes the port the README's server listens on.
func (r *readmeRun) natsServer(args []string, background bool) error {
	if !background {
		return fmt.Errorf("nats-server must run in the background (&) for the next steps to run")
	}
	r.natsPort = "4222"
	js := false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-js", "--jetstream":
			js = true
		case "-p", "--port":
			if i+1 == len(args) {
				return fmt.Errorf("%s without a value", a)
			}
			i++
			r.natsPort = args[i]
		}
	}
	if !js {
		return fmt.Errorf("nats-server without -js has no JetStream")
	}
	return nil
}

// goBuild maps the binary the README builds to the one TestMain built from
// the same package.
func (r *readmeRun) goBuild(args []string) error {
	if len(args) != 3 || args[0] != "-o" {
		return fmt.Errorf("only go build -o OUT PACKAGE is understood")
	}
	pkg := args[2]
	if pkg != "." && !strings.HasPrefix(pkg, "./") {
		return fmt.Errorf("package %s is not in this repository", pkg)
	}
	known := map[string]string{
		modulePath:                        componentBin,
		modulePath + "/test/e2e/tweetapp": appBin,
	}
	bin, ok := known[path.Join(modulePath, pkg)]
	if !ok {
		return fmt.Errorf("package %s is not one this scenario has built", pkg)
	}
	r.builds[filepath.Clean(args[1])] = bin
	return nil
}

var servingRE = regexp.MustCompile(`serving component type (\S+) on (\S+?)"?\s`)

// startComponent starts the component as the README does, with the socket
// folder of this scenario, and waits for the line the README tells users to
// wait for.
func (r *readmeRun) startComponent(env, args []string) error {
	n := r.node
	env = append(env, "DAPR_COMPONENTS_SOCKETS_FOLDER="+r.sockets)
	p, err := natstest.StartProc(natstest.Spec{Name: n.AppID + "/component", Bin: componentBin, Args: args, Env: env, Echo: n.Echo})
	if err != nil {
		return err
	}
	n.Component = p
	m, err := p.WaitForOutput(n.StartTimeout, servingRE)
	if err != nil {
		return fmt.Errorf("the component has not logged `serving component type ...`: %w", err)
	}
	r.servedType = m[1]
	return nil
}

// componentDoc is the part of a Component the scenario checks.
type componentDoc struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Type     string `json:"type"`
		Metadata []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"metadata"`
	} `json:"spec"`
}

// field returns a metadata value; Dapr matches the names case-insensitively.
func (c *componentDoc) field(name string) string {
	for _, m := range c.Spec.Metadata {
		if strings.EqualFold(m.Name, name) {
			return m.Value
		}
	}
	return ""
}

// writeHeredoc writes a here-document to its file. A Component must equal
// component.yaml (the README says so), and its natsURL is pointed at the
// scenario's nats-server.
func (r *readmeRun) writeHeredoc(c shCommand) error {
	target, err := c.stdout.expand(r.vars)
	if err != nil {
		return err
	}
	file, err := r.local(target)
	if err != nil {
		return err
	}
	body := c.heredoc
	var doc componentDoc
	if err := yaml.Unmarshal([]byte(body), &doc); err == nil && doc.Kind == "Component" {
		if r.component != nil {
			return fmt.Errorf("a second Component; the scenario knows one")
		}
		if err := sameYAML(body, filepath.Join(r.root, "component.yaml")); err != nil {
			return err
		}
		r.readmeNATSURL = doc.field("natsURL")
		if r.readmeNATSURL == "" || strings.Count(body, r.readmeNATSURL) != 1 {
			return fmt.Errorf("the Component should name natsURL once")
		}
		body = strings.Replace(body, r.readmeNATSURL, r.e.ns.ClientURL(), 1)
		r.component, r.componentFile = &doc, file
	}
	return os.WriteFile(file, []byte(body), 0o644)
}

// sameYAML checks that the YAML text says the same as the file (comments
// aside).
func sameYAML(text, file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var got, want any
	if err := yaml.Unmarshal([]byte(text), &got); err != nil {
		return err
	}
	if err := yaml.Unmarshal(b, &want); err != nil {
		return err
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		return fmt.Errorf("the Component differs from %s:\n README: %s\n file:   %s", filepath.Base(file), g, w)
	}
	return nil
}

// startDaprRun does what `dapr run` does: it starts daprd with the flags it
// passes and then the app, with the variables it sets for the app.
func (r *readmeRun) startDaprRun(env []string) error {
	d, n, t := r.daprRun, r.node, r.t
	if r.component == nil {
		return fmt.Errorf("no Component was written before dapr run")
	}
	resources, err := r.local(d.resources)
	if err != nil {
		return err
	}
	if filepath.Dir(r.componentFile) != resources {
		return fmt.Errorf("the Component went to %s, but dapr run reads %s", r.componentFile, resources)
	}
	if r.servedType == "" {
		return fmt.Errorf("dapr run before the component serves: daprd would not find it")
	}
	if want := r.component.Spec.Type; r.servedType != want {
		return fmt.Errorf("the component serves %s, the Component asks for %s", r.servedType, want)
	}
	if r.natsPort == "" {
		return fmt.Errorf("dapr run before NATS was started")
	}
	u, err := url.Parse(r.readmeNATSURL)
	if err != nil {
		return fmt.Errorf("natsURL %s: %w", r.readmeNATSURL, err)
	}
	if port := u.Port(); port != r.natsPort && !(port == "" && r.natsPort == "4222") {
		return fmt.Errorf("natsURL %s is not the port %s the README's nats-server listens on", r.readmeNATSURL, r.natsPort)
	}
	cmd, err := expandAll(d.command, r.vars)
	if err != nil {
		return err
	}
	app, ok := r.builds[filepath.Clean(cmd[0])]
	if !ok || app != appBin {
		// `dapr stop` ends `go run` but not the program it compiled, which
		// keeps the app port; the README must run a built app.
		return fmt.Errorf("the app command %s is not the tweet app the README built (run the built binary, not go run)", cmd[0])
	}

	n.SocketDir, n.ResourcesDir = r.sockets, resources
	env = append(env, "DAPR_COMPONENTS_SOCKETS_FOLDER="+r.sockets)
	daprd, err := natstest.StartProc(natstest.Spec{Name: n.AppID + "/daprd", Bin: n.DaprdBin, Args: n.DaprdFlags(), Env: env, Echo: n.Echo})
	if err != nil {
		return err
	}
	n.Daprd = daprd
	// What `dapr run` sets for the app (the dapr CLI's RunConfig.getEnv).
	appEnv := append(env,
		"APP_ID="+n.AppID,
		"APP_PORT="+strconv.Itoa(n.AppPort),
		"APP_PROTOCOL=http",
		"DAPR_HTTP_PORT="+strconv.Itoa(n.HTTPPort),
		"DAPR_GRPC_PORT="+strconv.Itoa(n.GRPCPort),
		"DAPR_METRICS_PORT="+strconv.Itoa(n.MetricsPort),
	)
	p, err := natstest.StartProc(natstest.Spec{Name: n.AppID + "/app", Bin: app, Args: cmd[1:], Env: appEnv, Echo: n.Echo})
	if err != nil {
		return err
	}
	n.App = p
	if err := n.WaitDaprdHealthy(r.e.ctx); err != nil {
		return err
	}
	// A user starts once `dapr run` says it is up. The scenario waits until
	// the subscriptions of the topics it checks exist, so that a slow start
	// cannot be mistaken for a README that does not work.
	topics := []string{stack.TopicCreated, stack.TopicLiked}
	waitUntil(t, n.StartTimeout, func() string {
		var md struct {
			Subscriptions []struct {
				Topic string `json:"topic"`
			} `json:"subscriptions"`
		}
		status, b, err := stack.Do(r.e.ctx, http.MethodGet, n.DaprdURL("/v1.0/metadata"), nil)
		if err != nil || status != http.StatusOK || json.Unmarshal(b, &md) != nil {
			return fmt.Sprintf("daprd metadata: %d %v %s", status, err, b)
		}
		have := map[string]bool{}
		for _, s := range md.Subscriptions {
			have[s.Topic] = true
		}
		for _, topic := range topics {
			if !have[topic] {
				return "daprd does not list a subscription to " + topic + " yet"
			}
		}
		return ""
	})
	return stack.WaitConsumers(r.e.ctx, r.e.js, n.StartTimeout, r.durableBase(), topics...)
}

// durableBase is the base of the durables' names: durableName, else
// queueGroupName, else consumerID, which daprd sets to the app id.
func (r *readmeRun) durableBase() string {
	for _, f := range []string{"durableName", "queueGroupName", "consumerID"} {
		if v := r.component.field(f); v != "" {
			return v
		}
	}
	return r.node.AppID
}

var readmeClient = &http.Client{Timeout: 30 * time.Second}

// curl sends the request of a curl command to the app (or daprd), on the
// port that replaces the README's. With jq after it, the answer must be JSON;
// for an assignment, jq must be `jq -r .field`, and the field's value is
// returned.
func (r *readmeRun) curl(c, jq shCommand, assign string) (string, error) {
	if r.node.Daprd == nil {
		return "", fmt.Errorf("a request before dapr run")
	}
	argv, err := c.argv(r.vars)
	if err != nil {
		return "", err
	}
	method, target := "", ""
	var body []byte
	header := http.Header{}
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		value := func() (string, error) {
			if i+1 == len(argv) {
				return "", fmt.Errorf("curl %s without a value", a)
			}
			i++
			return argv[i], nil
		}
		switch {
		case a == "-s" || a == "--silent" || a == "-S" || a == "--show-error" || a == "-sS":
		case a == "-X" || a == "--request":
			if method, err = value(); err != nil {
				return "", err
			}
		case strings.HasPrefix(a, "-X"):
			method = a[2:]
		case a == "-H" || a == "--header":
			h, err := value()
			if err != nil {
				return "", err
			}
			k, v, ok := strings.Cut(h, ":")
			if !ok {
				return "", fmt.Errorf("header %q", h)
			}
			header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		case a == "-d" || a == "--data" || a == "--data-raw":
			d, err := value()
			if err != nil {
				return "", err
			}
			body = []byte(d)
		case strings.HasPrefix(a, "-"):
			return "", fmt.Errorf("curl option %s is not understood", a)
		case target != "":
			return "", fmt.Errorf("curl with two URLs")
		default:
			target = a
		}
	}
	if method == "" {
		method = http.MethodGet
		if body != nil {
			method = http.MethodPost // as curl does with -d
		}
	}
	u, err := r.localURL(target)
	if err != nil {
		return "", err
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(r.e.ctx, method, u.String(), rd)
	if err != nil {
		return "", err
	}
	req.Header = header
	resp, err := readmeClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	shown := bytes.TrimSpace(out)
	if len(shown) > 200 {
		shown = append(shown[:200:200], "..."...)
	}
	r.t.Logf("%s %s → %d %s", method, u.Path, resp.StatusCode, shown)
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("%s %s: status %d: %s", method, u.Path, resp.StatusCode, out)
	}
	rec := readmeRequest{method: method, path: u.Path, body: body}
	_ = json.Unmarshal(out, &rec.answer)
	r.requests = append(r.requests, rec)

	if jq.argv0() == "" {
		return "", nil
	}
	if !json.Valid(out) {
		return "", fmt.Errorf("jq gets an answer that is not JSON: %s", out)
	}
	if assign == "" {
		return "", nil // jq only formats what is shown
	}
	jargv, err := jq.argv(r.vars)
	if err != nil {
		return "", err
	}
	if len(jargv) != 3 || jargv[1] != "-r" || !strings.HasPrefix(jargv[2], ".") || strings.ContainsAny(jargv[2][1:], ".[]| ") {
		return "", fmt.Errorf("only jq -r .field is understood in an assignment")
	}
	v, ok := rec.answer[jargv[2][1:]].(string)
	if !ok || v == "" {
		return "", fmt.Errorf("the answer has no string %s: %s", jargv[2], out)
	}
	return v, nil
}

// localURL maps a README URL (such as localhost:3000/tweets) to the port of
// this scenario's app or daprd.
func (r *readmeRun) localURL(target string) (*url.URL, error) {
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	if h := u.Hostname(); h != "localhost" && h != "127.0.0.1" {
		return nil, fmt.Errorf("%s is not a local URL", target)
	}
	switch port := u.Port(); {
	case port == r.daprRun.appPort:
		u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.node.AppPort))
	case port != "" && port == r.daprRun.httpPort:
		u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.node.HTTPPort))
	default:
		return nil, fmt.Errorf("%s is neither the app port %s nor daprd's port %q of dapr run", target, r.daprRun.appPort, r.daprRun.httpPort)
	}
	return u, nil
}

// checkDelivered checks that the README posted a tweet and liked it, and that
// the app received both.
func (r *readmeRun) checkDelivered() {
	t := r.t
	var id, text string
	for _, q := range r.requests {
		if q.method == http.MethodPost && q.path == "/tweets" {
			var in struct {
				Text string `json:"text"`
			}
			_ = json.Unmarshal(q.body, &in)
			id, _ = q.answer["id"].(string)
			text = in.Text
			break
		}
	}
	if id == "" {
		t.Fatalf("the README posts no tweet (POST /tweets) whose answer has an id")
	}
	liked := false
	for _, q := range r.requests {
		liked = liked || q.method == http.MethodPost && q.path == "/tweets/"+id+"/likes"
	}
	if !liked {
		t.Fatalf("the README does not like tweet %s (POST /tweets/%s/likes)", id, id)
	}
	waitUntil(t, 30*time.Second, func() string {
		recs := received(t, r.node).Events
		created := filter(recs, stack.TopicCreated, func(rec stack.Record) bool {
			return rec.Tweet() == stack.TweetData{ID: id, Text: text}
		})
		likes := filter(recs, stack.TopicLiked, func(rec stack.Record) bool { return rec.Tweet().ID == id })
		if len(created) == 0 || len(likes) == 0 {
			return fmt.Sprintf("the app received %d tweets and %d likes of tweet %s (%q), want 1 of each", len(created), len(likes), id, text)
		}
		return ""
	})
}
