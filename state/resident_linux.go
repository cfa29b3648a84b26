package state

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"sync"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// statm is /proc/self/statm, opened once: read again from its start
// (pread) it is made anew, and a look costs one system call, not an open,
// a read and a close (0.6 µs rather than 5.6): writes and long reads look
// every few records.
var statm struct {
	once sync.Once
	f    *os.File
	fd   int
}

// residentFileBytes is how much of mapped files is resident in this
// process: statm's "shared" pages (RssFile and RssShmem).
func residentFileBytes() (int64, bool) {
	statm.once.Do(func() {
		if f, err := os.Open("/proc/self/statm"); err == nil {
			statm.f, statm.fd = f, int(f.Fd())
		}
	})
	if statm.f == nil {
		return 0, false
	}
	var buf [128]byte
	n, err := syscall.Pread(statm.fd, buf[:], 0)
	if err != nil || n <= 0 {
		return 0, false
	}
	pages, ok := statmShared(buf[:n])
	if !ok {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// statmShared is statm's third field, the shared pages, read in place:
// looked at every few records, a list of the fields and a string of one
// made each look allocate.
func statmShared(b []byte) (int64, bool) {
	for range 2 {
		i := bytes.IndexByte(b, ' ')
		if i < 0 {
			return 0, false
		}
		b = b[i+1:]
	}
	var pages int64
	digits := 0
	for ; digits < len(b) && b[digits] >= '0' && b[digits] <= '9'; digits++ {
		pages = pages*10 + int64(b[digits]-'0')
	}
	if digits == 0 || digits > 18 {
		return 0, false
	}
	return pages, true
}

// dropMapped drops the store's mapped pages from the process. In a read
// transaction: bbolt remaps only with none open, so the range is the map.
func (x *Store) dropMapped() {
	_ = x.db.View(func(tx *bolt.Tx) error {
		x.dropMappedIn(tx)
		return nil
	})
}

// dropMappedIn is dropMapped inside a read transaction of the caller's.
func (x *Store) dropMappedIn(tx *bolt.Tx) {
	data := x.db.Info().Data
	size := uintptr(tx.Size())
	if data == 0 || size == 0 {
		return
	}
	// Advice only: a failure costs memory, never data.
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, data, size, syscall.MADV_DONTNEED)
}

// storeResident is how much of the store's map is resident in this
// process: its mapping's Rss in /proc/self/smaps (read only when the
// pages were let go, to tell the program's own file pages from them).
// Read a line at a time: the whole file, a couple of megabytes for a Go
// program's mappings, was a spike in the heap at every look.
func (x *Store) storeResident() (int64, bool) {
	data := x.db.Info().Data
	if data == 0 {
		return 0, false
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	start := []byte(strconv.FormatUint(uint64(data), 16) + "-")
	lines := bufio.NewScanner(f)
	lines.Buffer(make([]byte, 0, 4096), 64<<10)
	found := false
	for lines.Scan() {
		line := lines.Bytes()
		if !found {
			found = bytes.HasPrefix(line, start)
			continue
		}
		// The mapping's fields follow, Rss among the first.
		if rest, ok := bytes.CutPrefix(line, []byte("Rss:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte("kB")))), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}
