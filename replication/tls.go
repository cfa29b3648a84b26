package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TLSPolicy is what postgres.url (with the PG* environment variables pgx
// reads) asks of TLS, read back from the connection settings pgx builds:
// one attempt per host and TLS setting, in order.
type TLSPolicy struct {
	// Mode is the sslmode as libpq names it: disable, allow, prefer (also
	// when none is given: pgx's default, as libpq's), require, verify-ca
	// or verify-full.
	Mode string
	// Plaintext is true when some attempt runs without TLS: disable, or
	// allow and prefer, which fall back to plaintext without a word.
	Plaintext bool
	// Remote lists the hosts that are neither a Unix socket nor loopback:
	// there a plaintext connection crosses a network.
	Remote []string
}

// ReadTLSPolicy reads url's TLS policy. It reads no file but the ones the
// settings name (sslrootcert, …), and opens no connection.
func ReadTLSPolicy(url string) (TLSPolicy, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return TLSPolicy{}, fmt.Errorf("parse postgres.url: %w", err)
	}
	attempts := []*pgconn.FallbackConfig{{Host: cfg.Host, Port: cfg.Port, TLSConfig: cfg.TLSConfig}}
	attempts = append(attempts, cfg.Fallbacks...)
	var p TLSPolicy
	seen := map[string]bool{}
	var plainFirst, tlsFirst bool
	for i, a := range attempts {
		if a.TLSConfig == nil {
			p.Plaintext = true
			plainFirst = plainFirst || i == 0
		} else {
			tlsFirst = tlsFirst || i == 0
		}
		if !seen[a.Host] && !isLocal(a.Host) {
			p.Remote = append(p.Remote, a.Host)
		}
		seen[a.Host] = true
	}
	withTLS := func() *pgconn.FallbackConfig {
		for _, a := range attempts {
			if a.TLSConfig != nil {
				return a
			}
		}
		return nil
	}()
	switch {
	case withTLS == nil:
		p.Mode = "disable"
	case p.Plaintext && plainFirst:
		p.Mode = "allow"
	case p.Plaintext && tlsFirst:
		p.Mode = "prefer"
	case !withTLS.TLSConfig.InsecureSkipVerify:
		p.Mode = "verify-full"
	case withTLS.TLSConfig.VerifyPeerCertificate != nil:
		p.Mode = "verify-ca"
	default:
		p.Mode = "require"
	}
	return p, nil
}

// isLocal reports whether host is a Unix socket directory or a loopback
// address: a connection there never leaves the machine.
func isLocal(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Encryption is what the server says of this connection's TLS.
type Encryption struct {
	SSL     bool
	Version string // e.g. TLSv1.3; "" without TLS
	Cipher  string
}

// ReadEncryption asks the server whether conn is encrypted (pg_stat_ssl,
// for this backend).
func ReadEncryption(ctx context.Context, conn *pgx.Conn) (Encryption, error) {
	var e Encryption
	var version, cipher *string
	err := conn.QueryRow(ctx, `SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&e.SSL, &version, &cipher)
	if errors.Is(err, pgx.ErrNoRows) {
		return e, errors.New("pg_stat_ssl has no row for this connection")
	}
	if err != nil {
		return e, fmt.Errorf("read pg_stat_ssl: %w", err)
	}
	if version != nil {
		e.Version = *version
	}
	if cipher != nil {
		e.Cipher = *cipher
	}
	return e, nil
}
