package state

import (
	"bytes"
	"os"
	"strconv"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// residentFileBytes is how much of mapped files is resident in this
// process: statm's "shared" pages (RssFile and RssShmem).
func residentFileBytes() (int64, bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := bytes.Fields(b)
	if len(f) < 3 {
		return 0, false
	}
	pages, err := strconv.ParseInt(string(f[2]), 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// dropMapped drops the store's mapped pages from the process. In a read
// transaction: bbolt remaps only with none open, so the range is the map.
func (x *Store) dropMapped() {
	_ = x.db.View(func(tx *bolt.Tx) error {
		data := x.db.Info().Data
		size := uintptr(tx.Size())
		if data == 0 || size == 0 {
			return nil
		}
		// Advice only: a failure costs memory, never data.
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, data, size, syscall.MADV_DONTNEED)
		return nil
	})
}
