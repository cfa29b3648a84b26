package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// MappingFile is where, inside the state directory, pgpilot records the
// shape of the mapping Userpilot is synced with (mapping.Shape, as JSON):
// at the next start with another mapping, the keys that differ are
// backfilled for every company. It is written once the backfill is queued
// (or, on a first start, with the initial sync), so a crash in between
// queues it again: a backfill sent twice sends the same values.
const MappingFile = "mapping.json"

// UsersMappingFile is MappingFile of the users section.
const UsersMappingFile = "mapping-users.json"

// ReadMapping reads the recorded mapping; ok is false when none is. It
// takes no lock, so check and preview can read a running daemon's.
func ReadMapping(dir string) (data []byte, ok bool, err error) {
	return ReadMappingFile(dir, MappingFile)
}

// ReadMappingFile reads the mapping recorded in file (MappingFile or
// UsersMappingFile).
func ReadMappingFile(dir, file string) (data []byte, ok bool, err error) {
	data, err = os.ReadFile(filepath.Join(dir, file))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read the recorded mapping: %w", err)
	}
	return data, true, nil
}

// SaveMapping durably records the mapping's shape.
func (d *Dir) SaveMapping(data []byte) error {
	return d.SaveMappingFile(MappingFile, data)
}

// SaveMappingFile durably records a section's mapping in file.
func (d *Dir) SaveMappingFile(file string, data []byte) error {
	return WriteFileAtomic(d.path, file, data, 0o600)
}
