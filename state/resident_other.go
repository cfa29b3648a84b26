//go:build !linux

package state

func residentFileBytes() (int64, bool) { return 0, false }

func (x *Store) dropMapped() {}
