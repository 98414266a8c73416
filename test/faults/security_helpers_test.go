//go:build faults

package faults

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	contribmd "github.com/dapr/components-contrib/metadata"
	"github.com/dapr/components-contrib/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/google/uuid"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcmd "google.golang.org/grpc/metadata"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/pluggable"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
)

// Bounds of the waits in the security and bad-input tests.
const (
	secWait  = 10 * time.Second
	secShort = 3 * time.Second
	secTick  = 20 * time.Millisecond
)

var secSeq atomic.Int64

// secProps is component metadata for url with short reconnect timings, plus
// key/value pairs.
func secProps(url string, kv ...string) map[string]string {
	m := map[string]string{"natsURL": url, "reconnectWait": "200ms", "connectTimeout": "2s"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// secInit makes a component that logs to logSink and runs Init with props.
// The component is closed when the test ends, whether Init worked or not.
func secInit(t *testing.T, props map[string]string) (*jetstream.PubSub, error) {
	t.Helper()
	ps := jetstream.New(newLogger(fmt.Sprintf("faults-sec-%d", secSeq.Add(1))))
	t.Cleanup(func() { _ = ps.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), secWait)
	defer cancel()
	return ps, ps.Init(ctx, pubsub.Metadata{Base: contribmd.Base{Name: "pubsub", Properties: props}})
}

// secCloudEvent is the JSON daprd publishes for data.
func secCloudEvent(t *testing.T, topic, data string) ([]byte, string) {
	t.Helper()
	id := uuid.NewString()
	b, err := json.Marshal(map[string]any{
		"specversion": "1.0", "id": id, "source": "faults", "type": "com.dapr.event.sent",
		"topic": topic, "pubsubname": "pubsub", "datacontenttype": "text/plain", "data": data,
	})
	require.NoError(t, err)
	return b, id
}

// secRoundTrip subscribes to topic, publishes one CloudEvent and waits for it
// to be delivered and acknowledged.
func secRoundTrip(t *testing.T, ps *jetstream.PubSub, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), secWait)
	defer cancel()
	got := make(chan []byte, 16)
	require.NoError(t, ps.Subscribe(ctx, pubsub.SubscribeRequest{Topic: topic}, func(_ context.Context, m *pubsub.NewMessage) error {
		got <- m.Data
		return nil
	}))
	data, _ := secCloudEvent(t, topic, "hello "+topic)
	require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: data}))
	select {
	case m := <-got:
		require.JSONEq(t, string(data), string(m))
	case <-ctx.Done():
		t.Fatalf("topic %q: the published message was not delivered within %s", topic, secWait)
	}
}

// secNoSecret fails the test if text contains any value registered with
// secret(). TestMain checks the logs; this checks errors handed to callers.
func secNoSecret(t *testing.T, what, text string) {
	t.Helper()
	sinkMu.Lock()
	defer sinkMu.Unlock()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s contains a secret value (%d bytes of text)", what, len(text))
		}
	}
}

// secRejected checks that a component with wrong credentials cannot be used:
// Init failed, or (if NATS' retry semantics let Init succeed) Ping and
// Publish fail. No error text may contain a secret. It returns the error
// texts, for checks of their wording.
func secRejected(t *testing.T, ps *jetstream.PubSub, initErr error) []string {
	t.Helper()
	if initErr != nil {
		secNoSecret(t, "the Init error", initErr.Error())
		t.Logf("Init: %v", initErr)
		return []string{initErr.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	pingErr := ps.Ping(ctx)
	require.Error(t, pingErr, "Init succeeded with rejected credentials, so Ping must fail")
	pubErr := ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "rejected", Data: []byte("x")})
	require.Error(t, pubErr, "Init succeeded with rejected credentials, so Publish must fail")
	secNoSecret(t, "the Ping error", pingErr.Error())
	secNoSecret(t, "the Publish error", pubErr.Error())
	t.Logf("Init succeeded; Ping: %v; Publish: %v", pingErr, pubErr)
	return []string{pingErr.Error(), pubErr.Error()}
}

// secPKI is a test CA with a server and a client certificate, as PEM files.
type secPKI struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
	caCert                                           *x509.Certificate
	caKey                                            *ecdsa.PrivateKey
}

var secSerial atomic.Int64

// secNewPKI generates a CA and certificates for 127.0.0.1/localhost (server)
// and a client, in dir. The private keys are registered as secrets.
func secNewPKI(t *testing.T, dir, name string) *secPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(secSerial.Add(1)),
		Subject:               pkix.Name{CommonName: name + " test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	p := &secPKI{CA: filepath.Join(dir, name+"-ca.pem"), caCert: caCert, caKey: caKey}
	secWritePEM(t, p.CA, "CERTIFICATE", caDER)
	p.ServerCert, p.ServerKey = p.issue(t, dir, name+"-server", x509.ExtKeyUsageServerAuth)
	p.ClientCert, p.ClientKey = p.issue(t, dir, name+"-client", x509.ExtKeyUsageClientAuth)
	return p
}

func (p *secPKI) issue(t *testing.T, dir, name string, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(secSerial.Add(1)),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	secWritePEM(t, certFile, "CERTIFICATE", der)
	secWritePEM(t, keyFile, "PRIVATE KEY", keyDER)
	// The key's PEM body must never show up anywhere. Its first line is
	// mostly the ASN.1 header every P-256 key shares; the rest is the key.
	lines := strings.Split(strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))), "\n")
	for _, l := range lines[2 : len(lines)-1] {
		secret(l)
	}
	return certFile, keyFile
}

func secWritePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

// serverTLS is the server side of p: TLS required, client certificates
// required and verified against p's CA.
func (p *secPKI) serverTLS(t *testing.T) func(*server.Options) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.ServerCert, p.ServerKey)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	return func(o *server.Options) {
		o.TLS = true
		o.TLSVerify = true
		o.TLSTimeout = 2
		o.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		}
	}
}

// secGRPC is the pluggable gRPC server, run in-process on a socket in a
// short temporary folder (socket paths are limited to 108 bytes).
type secGRPC struct {
	socket string
	conn   *grpc.ClientConn
	client proto.PubSubClient
}

func secStartGRPC(t *testing.T) *secGRPC {
	t.Helper()
	folder, err := os.MkdirTemp("", "faults-sock")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(folder) })
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- pluggable.Run(ctx, pluggable.Options{
			SocketFolder: folder, SocketName: "nats-jetstream", DrainTimeout: time.Second,
			Logger: newLogger(fmt.Sprintf("faults-grpc-%d", secSeq.Add(1))),
			Ready:  func(p string) { ready <- p },
		})
	}()
	g := &secGRPC{}
	select {
	case g.socket = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("pluggable.Run: %v", err)
	case <-time.After(secWait):
		cancel()
		t.Fatal("pluggable.Run did not start")
	}
	g.conn, err = grpc.NewClient("unix://"+g.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatalf("grpc client: %v", err)
	}
	g.client = proto.NewPubSubClient(g.conn)
	t.Cleanup(func() {
		_ = g.conn.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(secWait):
			t.Error("pluggable.Run did not stop")
		}
	})
	return g
}

// secInstance is a context for the Component instance named name, bounded
// by secWait.
func secInstance(t *testing.T, name string) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), secWait)
	t.Cleanup(cancel)
	return grpcmd.AppendToOutgoingContext(ctx, pluggable.InstanceHeader, name)
}

func secGRPCInit(ctx context.Context, client proto.PubSubClient, props map[string]string) error {
	_, err := client.Init(ctx, &proto.PubSubInitRequest{Metadata: &proto.MetadataRequest{Properties: props}})
	return err
}

// secDial connects a gRPC client to a component socket.
func secDial(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// secProc is the component binary running as a child process, its output
// going to logSink and kept.
type secProc struct {
	*natstest.Proc
	once   sync.Once
	socket string
}

func secStartBinary(t *testing.T, args ...string) *secProc {
	t.Helper()
	folder, err := os.MkdirTemp("", "faults-sock")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(folder) })
	// dapr's logger writes to stdout; panics and flag errors go to stderr:
	// the Proc keeps both.
	p := &secProc{socket: filepath.Join(folder, "nats-jetstream.sock"), Proc: natstest.NewProc(natstest.Spec{
		Name: "component", Bin: natstest.MustBuild(t, natstest.ComponentPackage), Echo: logSink,
		Args: append([]string{"-socket-folder", folder, "-drain-timeout", "1s", "-log-level", "debug"}, args...),
		Env:  []string{"JETSTREAM_SOCKET_MODE=", "JETSTREAM_SOCKET_NAME="},
	})}
	require.NoError(t, p.Start())
	t.Cleanup(func() { p.stop(t) })
	require.NoError(t, p.WaitFor(secWait, secTick, natstest.Dials("unix", p.socket)), "the component binary did not serve its socket")
	return p
}

// stop sends SIGTERM and waits for the process, killing it if it hangs.
func (p *secProc) stop(t *testing.T) {
	p.once.Do(func() {
		if err := p.Stop(secWait); errors.Is(err, natstest.ErrKilled) {
			t.Errorf("component process %d: %v", p.Pid(), err)
		}
	})
}

// secTCPSockets returns the TCP sockets owned by pid, by state ("0A" is
// LISTEN, "01" ESTABLISHED): the socket inodes of /proc/<pid>/fd matched
// against /proc/<pid>/net/tcp and tcp6, which list the whole network
// namespace.
func secTCPSockets(t *testing.T, pid int) map[string][]string {
	t.Helper()
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(fdDir)
	require.NoError(t, err)
	inodes := map[string]bool{}
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	byState := map[string][]string{}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if os.IsNotExist(err) {
			continue // no IPv6 in this kernel
		}
		require.NoError(t, err)
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 {
				continue
			}
			if inodes[fields[9]] {
				byState[fields[3]] = append(byState[fields[3]], table+" "+fields[1])
			}
		}
		_ = f.Close()
		require.NoError(t, sc.Err())
	}
	return byState
}

// secOperator is a nats-server in operator mode (decentralised JWT auth)
// with keys made here: an operator, a system account and one account with
// JetStream whose users the test signs. Its port and store stay the same
// across restart.
type secOperator struct {
	ns       *server.Server
	opts     *server.Options
	account  nkeys.KeyPair
	claims   *jwt.AccountClaims
	operator nkeys.KeyPair
}

func secStartOperator(t *testing.T) *secOperator {
	t.Helper()
	operator, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opPub, err := operator.PublicKey()
	require.NoError(t, err)
	op := &secOperator{operator: operator}
	sys, sysClaims := secAccount(t, "SYS")
	op.account, op.claims = secAccount(t, "app")
	op.claims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	oc := jwt.NewOperatorClaims(opPub)
	oc.SystemAccount, _ = sys.PublicKey()
	opJWT, err := oc.Encode(operator)
	require.NoError(t, err)
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	require.NoError(t, err)
	resolver := &server.MemAccResolver{}
	require.NoError(t, resolver.Store(sysClaims.Subject, op.encode(t, sysClaims)))
	require.NoError(t, resolver.Store(op.claims.Subject, op.encode(t, op.claims)))
	op.ns = natstest.Start(t, func(o *server.Options) {
		o.Port = natstest.FreePortT(t)
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		o.AccountResolver = resolver
		o.SystemAccount = oc.SystemAccount
		op.opts = o
	})
	return op
}

// secAccount makes an account key, registered as a secret, and its claims.
func secAccount(t *testing.T, name string) (nkeys.KeyPair, *jwt.AccountClaims) {
	t.Helper()
	kp, err := nkeys.CreateAccount()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	secret(string(seed))
	ac := jwt.NewAccountClaims(pub)
	ac.Name = name
	return kp, ac
}

func (op *secOperator) encode(t *testing.T, ac *jwt.AccountClaims) string {
	t.Helper()
	token, err := ac.Encode(op.operator)
	require.NoError(t, err)
	return token
}

// user signs a user of the account; edit may set its expiry or
// permissions. It returns the user's public key and its creds file content,
// whose JWT and seed are registered as secrets.
func (op *secOperator) user(t *testing.T, edit func(*jwt.UserClaims)) (string, []byte) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := kp.PublicKey()
	require.NoError(t, err)
	seed, err := kp.Seed()
	require.NoError(t, err)
	uc := jwt.NewUserClaims(pub)
	uc.Name = "dapr"
	if edit != nil {
		edit(uc)
	}
	token, err := uc.Encode(op.account)
	require.NoError(t, err)
	secret(token)
	secret(string(seed))
	creds, err := jwt.FormatUserConfig(token, seed)
	require.NoError(t, err)
	return pub, creds
}

// update pushes the account's claims, changed by edit, to the running
// server, as nsc push does.
func (op *secOperator) update(t *testing.T, edit func(*jwt.AccountClaims)) {
	t.Helper()
	edit(op.claims)
	ac, err := jwt.DecodeAccountClaims(op.encode(t, op.claims))
	require.NoError(t, err)
	acc, err := op.ns.LookupAccount(op.claims.Subject)
	require.NoError(t, err)
	op.ns.UpdateAccountClaims(acc, ac)
}

// client connects a plain nats.go client as a user of the account that
// never expires, for publishing and checking around the component.
func (op *secOperator) client(t *testing.T) *nats.Conn {
	t.Helper()
	_, creds := op.user(t, nil)
	file := filepath.Join(t.TempDir(), "admin.creds")
	require.NoError(t, os.WriteFile(file, creds, 0o600))
	nc, err := nats.Connect(op.ns.ClientURL(), nats.UserCredentials(file))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// secSecretVolume is a folder laid out as Kubernetes mounts a Secret: the
// file is a symlink through ..data, which an update swaps atomically to a
// new folder.
type secSecretVolume struct {
	dir     string
	version int
}

// write puts content in the volume as name, as the kubelet does on an
// update, and returns the path the component reads.
func (v *secSecretVolume) write(t *testing.T, name string, content []byte) string {
	t.Helper()
	return v.writeAll(t, map[string][]byte{name: content})[name]
}

// writeAll replaces the volume's content with files (name to content) in one
// swap, as the kubelet does when a Secret with several keys is updated (by
// cert-manager, say), and returns the paths the component reads.
func (v *secSecretVolume) writeAll(t *testing.T, files map[string][]byte) map[string]string {
	t.Helper()
	v.version++
	ts := fmt.Sprintf("..%d", v.version)
	require.NoError(t, os.Mkdir(filepath.Join(v.dir, ts), 0o700))
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(v.dir, ts, name), content, 0o600))
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	require.NoError(t, os.Symlink(ts, tmp))
	require.NoError(t, os.Rename(tmp, filepath.Join(v.dir, "..data")))
	paths := map[string]string{}
	for name := range files {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			require.NoError(t, os.Symlink(filepath.Join("..data", name), link))
		}
		paths[name] = link
	}
	return paths
}

// secReadFile is the content of path.
func secReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// secTLSClient connects a plain nats.go client with p's CA and client
// certificate, for publishing around the component.
func secTLSClient(t *testing.T, url string, p *secPKI) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.RootCAs(p.CA), nats.ClientCert(p.ClientCert, p.ClientKey))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// secRestartable runs one nats-server after another on the same port and
// store, as a pod restarted with a new configuration.
type secRestartable struct {
	t     *testing.T
	port  int
	store string
	ns    *server.Server
}

func newSecRestartable(t *testing.T) *secRestartable {
	return &secRestartable{t: t, port: natstest.FreePortT(t), store: t.TempDir()}
}

// restart stops the server running, if any, and starts one with opts.
func (r *secRestartable) restart(opts ...func(*server.Options)) *server.Server {
	r.t.Helper()
	if r.ns != nil {
		natstest.Stop(r.ns)
	}
	r.ns = natstest.Start(r.t, append(opts, func(o *server.Options) { o.Port, o.StoreDir = r.port, r.store })...)
	return r.ns
}

// secPingWithin polls Ping until it answers as want says (nil: connected),
// and returns how long that took.
func secPingWithin(t *testing.T, ps *jetstream.PubSub, within time.Duration, want func(error) bool, what string) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < within {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		last = ps.Ping(ctx)
		cancel()
		if want(last) {
			return time.Since(start), last
		}
		time.Sleep(secTick)
	}
	t.Fatalf("%s: not within %s; the last Ping: %v", what, within, last)
	return 0, last
}

// secPublisher returns a function that publishes data to topic through ps,
// and returns data.
func secPublisher(t *testing.T, ps *jetstream.PubSub, topic string) func(data string) string {
	return func(data string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), secWait)
		defer cancel()
		require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: []byte(data)}))
		return data
	}
}
