package store

import (
	"encoding/json"
	"fmt"
)

// formatVersion prefixes every stored value. A future encoding (say a
// compact binary one for in-flight messages) takes the next number and
// decode keeps reading the old one, so files never need a migration step.
const formatVersion byte = 1

// encode returns v as a versioned record.
func encode(v any) ([]byte, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode record: %w", err)
	}
	out := make([]byte, 1, 1+len(js))
	out[0] = formatVersion
	return append(out, js...), nil
}

// decode fills v from a versioned record. The data may live in bbolt's
// mmap; decoding copies what it keeps, so v stays valid after the
// transaction ends.
func decode(data []byte, v any) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty value", ErrCorrupt)
	}
	if data[0] != formatVersion {
		return fmt.Errorf("%w %d", ErrUnknownVersion, data[0])
	}
	if err := json.Unmarshal(data[1:], v); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return nil
}
