package backend

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// ReadCABundle reads a PEM file of CA certificates for a store's TLS trust.
// It returns the file's bytes (the AWS SDK takes them as they are) and its
// certificates. It is strict, so that a wrong path or file fails by name
// rather than as an unverifiable server later: a file that cannot be read,
// a CERTIFICATE block that does not parse, or a file without any
// certificate is an error naming the file. Other PEM blocks (keys,
// parameters) are passed over.
func ReadCABundle(path string) ([]byte, []*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("CA bundle: %w", err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("CA bundle %s: certificate %d: %w", path, len(certs)+1, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("CA bundle %s: no PEM certificate found", path)
	}
	return data, certs, nil
}
