//go:build !linux

package state

import bolt "go.etcd.io/bbolt"

func residentFileBytes() (int64, bool) { return 0, false }

func (x *Store) dropMapped() {}

func (x *Store) dropMappedIn(*bolt.Tx) {}

func (x *Store) storeResident() (int64, bool) { return 0, false }
