package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read client ca file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client ca file %s: %w", path, errors.New("no PEM certificates found"))
	}
	return pool, nil
}
