// The emulator's state: key rings, crypto keys and their versions, in memory and
// optionally in one JSON file that is rewritten (atomically) after every change.

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

const stateFile = "gcpkms-state.json"

// versionRecord is one CryptoKeyVersion. State holds the kmspb enum's name.
type versionRecord struct {
	ID          int        `json:"id"`
	State       string     `json:"state"`
	Key         []byte     `json:"key"` // AES-256 key material (test data only)
	CreateTime  time.Time  `json:"createTime"`
	DestroyTime *time.Time `json:"destroyTime,omitempty"`
}

type cryptoKeyRecord struct {
	Name       string            `json:"name"`
	CreateTime time.Time         `json:"createTime"`
	Primary    int               `json:"primary"` // version id; 0 when the key has none
	Versions   []*versionRecord  `json:"versions"`
	Labels     map[string]string `json:"labels,omitempty"`
	// DestroyScheduledSeconds is how long a destroyed version stays DESTROY_SCHEDULED.
	DestroyScheduledSeconds int64 `json:"destroyScheduledSeconds"`
}

func (k *cryptoKeyRecord) version(id int) *versionRecord {
	for _, v := range k.Versions {
		if v.ID == id {
			return v
		}
	}
	return nil
}

type keyRingRecord struct {
	Name       string    `json:"name"`
	CreateTime time.Time `json:"createTime"`
}

type snapshot struct {
	Format     int                         `json:"format"`
	KeyRings   map[string]*keyRingRecord   `json:"keyRings"`
	CryptoKeys map[string]*cryptoKeyRecord `json:"cryptoKeys"`
}

// store guards the state with one mutex; every handler holds it for its whole call,
// which is plenty for a test double.
type store struct {
	mu   sync.Mutex
	path string // "" when memory-only
	data snapshot
}

func openStore(dir string) (*store, error) {
	s := &store{data: snapshot{
		Format:     1,
		KeyRings:   map[string]*keyRingRecord{},
		CryptoKeys: map[string]*cryptoKeyRecord{},
	}}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s.path = filepath.Join(dir, stateFile)
	raw, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var loaded snapshot
	if err := json.Unmarshal(raw, &loaded); err != nil {
		return nil, fmt.Errorf("state file %s is not valid: %w", s.path, err)
	}
	if loaded.Format != 1 {
		return nil, fmt.Errorf("state file %s has unknown format %d", s.path, loaded.Format)
	}
	if loaded.KeyRings != nil {
		s.data.KeyRings = loaded.KeyRings
	}
	if loaded.CryptoKeys != nil {
		s.data.CryptoKeys = loaded.CryptoKeys
	}
	return s, nil
}

// save writes the state file, if any: to a temporary file first, then renamed over
// the old one, so a killed emulator leaves either the old state or the new.
func (s *store) save() error {
	if s.path == "" {
		return nil
	}
	raw, err := json.Marshal(&s.data)
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}
