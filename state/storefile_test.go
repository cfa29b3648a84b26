package state

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/userpilot"
	"github.com/pgpilot/pgpilot/userpilot/userpilottest"
)

// damagedStoreDir makes a state directory whose store knows indexed
// companies and owes owed of them in its outbox, closed.
func damagedStoreDir(t *testing.T, indexed, owed int) string {
	t.Helper()
	dir := t.TempDir()
	d, err := Open(dir)
	require.NoError(t, err)
	defer d.Close()
	x, err := d.OpenStore()
	require.NoError(t, err)
	var cos []userpilot.Company
	for i := range indexed {
		cos = append(cos, userpilot.Company{CompanyID: fmt.Sprintf("c%05d", i),
			Metadata: userpilottest.Metadata(map[string]any{"name": fmt.Sprintf("Company %d", i), "plan": "pro"})})
	}
	require.NoError(t, x.Record(cos))
	var put []OutboxRecord
	for i := range owed {
		put = append(put, OutboxRecord{CompanyID: fmt.Sprintf("c%05d", i), Metadata: userpilottest.Metadata(map[string]any{"plan": "owed"})})
	}
	require.NoError(t, x.WriteOutbox(put, nil))
	require.NoError(t, x.Close())
	return dir
}

// leafOf returns the id of a leaf page of bucket name in the store file.
func leafOf(t *testing.T, path string, name []byte) uint64 {
	t.Helper()
	s, err := openStoreFile(path)
	require.NoError(t, err)
	defer s.close()
	var root uint64
	require.NoError(t, s.walk(s.meta.root, nil, false, nil, func(k, v []byte, flags uint32) error {
		if string(k) == string(name) {
			root, _, _ = bucketRoot(v)
		}
		return nil
	}))
	require.NotZero(t, root, "bucket %s has pages of its own", name)
	for {
		p, err := s.page(root, boltBranchPage, boltLeafPage)
		require.NoError(t, err)
		if binary.NativeEndian.Uint16(p[8:]) == boltLeafPage {
			return root
		}
		_, _, _, child, err := s.element(p, 0)
		require.NoError(t, err)
		root = child
	}
}

// TestDamagedStoreIsRefusedWithWhatItHeldNeverACrash cuts store.db short
// and overwrites one of its live pages, as a failing disk or a copy of a
// live file leaves it: OpenStore refuses with a *StoreDamage naming the
// file and the damage, and counts what can still be read, where bbolt
// crashed the process (SIGBUS, or a panic in a goroutine of its own).
func TestDamagedStoreIsRefusedWithWhatItHeldNeverACrash(t *testing.T) {
	const indexed, owed = 3000, 400
	tests := []struct {
		name    string
		damage  func(t *testing.T, path string)
		problem string
		owed    int // what the outbox still shows (-2: some, or none, of it)
	}{
		{"cut short", func(t *testing.T, path string) {
			s, err := openStoreFile(path)
			require.NoError(t, err)
			used := int64(s.meta.pgid) * int64(s.meta.pageSize)
			s.close()
			require.NoError(t, os.Truncate(path, used/2))
		}, "it was cut short", -2},
		{"an index page overwritten", func(t *testing.T, path string) {
			id := leafOf(t, path, groupsBucket)
			junk := make([]byte, os.Getpagesize())
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range junk {
				junk[i] = byte(rng.IntN(256))
			}
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt(junk, int64(id)*int64(os.Getpagesize()))
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}, "it was overwritten", owed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := damagedStoreDir(t, indexed, owed)
			path := filepath.Join(dir, StoreFile)
			tt.damage(t, path)
			d, err := Open(dir)
			require.NoError(t, err)
			defer d.Close()
			x, err := d.OpenStore()
			if x != nil {
				x.Close()
			}
			var damage *StoreDamage
			require.ErrorAs(t, err, &damage)
			assert.ErrorIs(t, err, ErrStoreDamaged)
			assert.Contains(t, err.Error(), path)
			assert.Contains(t, damage.Problem, tt.problem)
			if tt.owed < 0 {
				assert.True(t, damage.Held.Readable, "the pages before the cut are read")
				assert.Less(t, damage.Held.Indexed+damage.Held.Owed, indexed+owed)
				assert.Positive(t, damage.Held.Unreadable)
				return
			}
			assert.True(t, damage.Held.Readable)
			assert.Equal(t, tt.owed, damage.Held.Owed, "the outbox's pages are whole")
			assert.Less(t, damage.Held.Indexed, indexed, "the overwritten page's companies are not counted")
			assert.Greater(t, damage.Held.Indexed, indexed/2)
			assert.Positive(t, damage.Held.Unreadable)
		})
	}
}

// TestHealthyStoreFilePassesTheCheck: the check reads what bbolt wrote,
// every page of it, and counts it all.
func TestHealthyStoreFilePassesTheCheck(t *testing.T) {
	dir := damagedStoreDir(t, 3000, 400)
	path := filepath.Join(dir, StoreFile)
	require.NoError(t, checkStoreFile(path))
	s, err := openStoreFile(path)
	require.NoError(t, err)
	defer s.close()
	c := s.contents()
	assert.Equal(t, StoreContents{Readable: true, Indexed: 3000, Owed: 400}, c)
	require.NoError(t, checkStoreFile(filepath.Join(dir, "no-such-store.db")), "a store not made yet is fine")
}
