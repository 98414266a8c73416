package jetstream

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// connectOptions turns the connection settings into nats.go options. Files
// named in the metadata are checked here, so that a missing or unreadable file
// is an Init error naming the field rather than an endless reconnect loop.
func connectOptions(c metadata.Connection) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// Keep reconnecting even if the server rejects the credentials
		// twice in a row (say, while they are being rotated).
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(c.ReconnectWait),
		nats.ReconnectJitter(c.ReconnectWait/10, c.ReconnectWait/5),
		nats.Timeout(c.ConnectTimeout),
		nats.PingInterval(pingInterval(c.ReconnectWait)),
		nats.MaxPingsOutstanding(2),
	}
	var errs []error
	readable := func(field, path string) bool {
		f, err := os.Open(path)
		if err != nil {
			errs = append(errs, &metadata.FieldError{Field: field, Value: path, Problem: "cannot be read: " + errWithoutPath(err, path), Accepted: "the path of a readable file"})
			return false
		}
		_ = f.Close()
		return true
	}

	switch {
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.JWT != "":
		opts = append(opts, nats.UserJWTAndSeed(strings.TrimSpace(c.JWT), strings.TrimSpace(c.SeedKey)))
	case c.NKeySeed != "":
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(c.NKeySeed)))
		if err != nil {
			errs = append(errs, &metadata.FieldError{Field: "nkeySeed", Problem: "is not a valid NKey seed", Accepted: "a user seed, which starts with SU"})
			break
		}
		pub, err := kp.PublicKey()
		if err != nil {
			errs = append(errs, &metadata.FieldError{Field: "nkeySeed", Problem: "has no public key", Accepted: "a user seed, which starts with SU"})
			break
		}
		opts = append(opts, nats.Nkey(pub, kp.Sign))
	case c.CredsFile != "":
		if readable("credsFile", c.CredsFile) {
			if err := checkCreds(c.CredsFile); err != nil {
				errs = append(errs, err)
			} else {
				opts = append(opts, nats.UserCredentials(c.CredsFile))
			}
		}
	}

	if c.TLSClientCert != "" && readable("tls_client_cert", c.TLSClientCert) && readable("tls_client_key", c.TLSClientKey) {
		if err := checkKeyPair(c.TLSClientCert, c.TLSClientKey); err != nil {
			errs = append(errs, err)
		} else {
			opts = append(opts, nats.ClientCert(c.TLSClientCert, c.TLSClientKey))
		}
	}
	if c.TLSCAFile != "" && readable("tls_ca_file", c.TLSCAFile) {
		if b, err := os.ReadFile(c.TLSCAFile); err != nil || !x509.NewCertPool().AppendCertsFromPEM(b) {
			errs = append(errs, &metadata.FieldError{Field: "tls_ca_file", Value: c.TLSCAFile, Problem: "holds no PEM certificate", Accepted: "a PEM bundle of CA certificates"})
		} else {
			opts = append(opts, nats.RootCAs(c.TLSCAFile))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Apply the TLS options once now: nats.go loads the files inside the
	// option, so a certificate that does not parse is reported here.
	probe := nats.GetDefaultOptions()
	for _, o := range opts {
		if err := o(&probe); err != nil {
			return nil, fmt.Errorf("%w: TLS or credentials: %v", metadata.ErrInvalid, err)
		}
	}
	return opts, nil
}

// checkCreds reports a creds file without a user JWT or a user seed; nats.go
// would only find out on every connection attempt, forever. The error never
// quotes the file's content.
func checkCreds(path string) error {
	bad := func(problem string) error {
		return &metadata.FieldError{Field: "credsFile", Value: path, Problem: problem, Accepted: "a .creds file holding a user JWT and its seed, as written by nsc"}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return bad("cannot be read: " + errWithoutPath(err, path))
	}
	if jwt, _ := nkeys.ParseDecoratedJWT(b); jwt == "" || jwt == string(b) || strings.Count(jwt, ".") != 2 {
		return bad("holds no user JWT")
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return bad("holds no user seed: " + err.Error())
	}
	kp.Wipe()
	return nil
}

// checkKeyPair reports, naming the field, a client certificate or key that
// does not parse or a key that does not belong to the certificate.
func checkKeyPair(certFile, keyFile string) error {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return &metadata.FieldError{Field: "tls_client_cert", Value: certFile, Problem: "cannot be read: " + errWithoutPath(err, certFile), Accepted: "the path of a readable file"}
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return &metadata.FieldError{Field: "tls_client_key", Value: keyFile, Problem: "cannot be read: " + errWithoutPath(err, keyFile), Accepted: "the path of a readable file"}
	}
	certs := 0
	for rest := certPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return &metadata.FieldError{Field: "tls_client_cert", Value: certFile, Problem: "holds a certificate that does not parse: " + err.Error(), Accepted: "a PEM client certificate"}
		}
		certs++
	}
	if certs == 0 {
		return &metadata.FieldError{Field: "tls_client_cert", Value: certFile, Problem: "holds no PEM certificate", Accepted: "a PEM client certificate"}
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return &metadata.FieldError{Field: "tls_client_key", Value: keyFile, Problem: "is not a usable private key for tls_client_cert: " + err.Error(), Accepted: "the PEM private key of the client certificate"}
	}
	return nil
}

// pingInterval detects a dead server within seconds instead of nats.go's
// default of minutes; a short reconnectWait (as in tests) shortens it too.
func pingInterval(reconnectWait time.Duration) time.Duration {
	if reconnectWait < 2*time.Second {
		return max(5*reconnectWait, 500*time.Millisecond)
	}
	return 10 * time.Second
}

func errWithoutPath(err error, path string) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return strings.ReplaceAll(err.Error(), path, "")
}
