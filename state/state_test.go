package state

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgpilot/pgpilot/internal/fix"
)

func TestCheckpointRoundTrip(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()

	_, ok, err := d.Checkpoint()
	require.NoError(t, err)
	assert.False(t, ok, "a new directory has no checkpoint")

	want := Checkpoint{SystemID: "7312", Database: "app", Slot: "pgpilot", LSN: 0x16B374D848, InitialSync: InitialSyncDone}
	require.NoError(t, d.SaveCheckpoint(want))
	got, ok, err := d.Checkpoint()
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, want.LSN, got.LSN)
	assert.Equal(t, want.SystemID, got.SystemID)
	assert.WithinDuration(t, time.Now(), got.UpdatedAt, time.Minute)

	raw, err := os.ReadFile(filepath.Join(d.Path(), CheckpointFile))
	require.NoError(t, err)
	assert.Contains(t, string(raw), `16/B374D848`, "LSN is written the way Postgres prints it")

	entries, err := os.ReadDir(d.Path())
	require.NoError(t, err)
	for _, e := range entries {
		assert.NotContains(t, e.Name(), ".tmp-", "no temporary file is left behind")
	}
}

func TestCorruptCheckpointIsRefusedNotIgnored(t *testing.T) {
	valid := func(t *testing.T, dir string) []byte {
		require.NoError(t, writeCheckpoint(dir, Checkpoint{Slot: "pgpilot", LSN: 42, InitialSync: InitialSyncDone}))
		b, err := os.ReadFile(filepath.Join(dir, CheckpointFile))
		require.NoError(t, err)
		return b
	}
	tests := []struct {
		name   string
		mangle func([]byte) []byte
		reason string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, "not a checkpoint file"},
		{"empty", func([]byte) []byte { return nil }, "not a checkpoint file"},
		{"garbage", func([]byte) []byte { return []byte("\x00\x01garbage") }, "not a checkpoint file"},
		{"edited LSN", func(b []byte) []byte {
			return []byte(replaceOnce(string(b), `0/2A`, `0/2B`))
		}, "checksum mismatch"},
		{"future format", func(b []byte) []byte {
			return []byte(replaceOnce(string(b), `"format": 5`, `"format": 9`))
		}, "format 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			b := valid(t, dir)
			require.NoError(t, os.WriteFile(filepath.Join(dir, CheckpointFile), tt.mangle(b), 0o600))
			_, _, err := ReadCheckpoint(dir)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrCorrupt)
			assert.Contains(t, err.Error(), tt.reason)
			assert.Contains(t, err.Error(), "pgpilot teardown", "the error says the fix")
		})
	}
}

func replaceOnce(s, old, new string) string {
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return s[:i] + new + s[i+len(old):]
		}
	}
	panic("replaceOnce: " + old + " not found")
}

func TestSecondOpenOfSameDirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir)
	require.NoError(t, err)
	_, err = Open(dir)
	require.ErrorIs(t, err, ErrLocked)
	assert.Contains(t, err.Error(), "each pgpilot needs its own state.dir")

	require.NoError(t, d.Close())
	d2, err := Open(dir)
	require.NoError(t, err, "the lock is released on Close")
	d2.Close()
}

func TestStateDirectoryIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	d, err := Open(dir)
	require.NoError(t, err)
	defer d.Close()
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
}

func TestDeadLettersAppendAndCount(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	n, err := CountDeadLetters(d.Path())
	require.NoError(t, err)
	assert.Zero(t, n)
	for i := 0; i < 3; i++ {
		require.NoError(t, d.AppendDeadLetter(DeadLetter{LSN: 7, CompanyID: "c1", Status: 400, Reason: "rejected"}))
	}
	n, err = CountDeadLetters(d.Path())
	require.NoError(t, err)
	assert.Equal(t, 3, n)
}

// TestRemovedOrRotatedDeadLetterFileIsCreatedAgain removes the dead-letter
// file (rm) and renames it (logrotate without copytruncate) between dead
// letters: each next one lands in a new file under the name, which status
// counts, and the rotated file keeps what it had.
func TestRemovedOrRotatedDeadLetterFileIsCreatedAgain(t *testing.T) {
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	path := filepath.Join(d.Path(), DeadLetterFile)
	count := func() int {
		n, err := CountDeadLetters(d.Path())
		require.NoError(t, err)
		return n
	}
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "first", Status: 400}))
	require.Equal(t, 1, count())

	require.NoError(t, os.Remove(path))
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "after-rm", Status: 400}))
	assert.Equal(t, 1, count(), "the dead letter after rm is in a new file")
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"company_id":"after-rm"`)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	require.NoError(t, os.Rename(path, path+".1"))
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "after-rotate", Status: 400}))
	require.NoError(t, d.AppendDeadLetter(DeadLetter{CompanyID: "and-on", Status: 400}))
	assert.Equal(t, 2, count(), "the dead letters after the rotation are in a new file")
	rotated, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(rotated), "\n"))
	assert.Contains(t, string(rotated), `"company_id":"after-rm"`)
}

func TestSaveCheckpointInReadOnlyDirectoryFailsAndKeepsOldOne(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions; the read-only case is covered by the fault tests with a read-only mount")
	}
	d, err := Open(t.TempDir())
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.SaveCheckpoint(Checkpoint{LSN: 1, InitialSync: InitialSyncDone}))
	require.NoError(t, os.Chmod(d.Path(), 0o500))
	defer os.Chmod(d.Path(), 0o700)
	require.Error(t, d.SaveCheckpoint(Checkpoint{LSN: 2, InitialSync: InitialSyncDone}))
	cp, _, err := d.Checkpoint()
	require.NoError(t, err)
	assert.Equal(t, LSN(1), cp.LSN)
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want LSN
		err  bool
	}{
		{"0/0", 0, false},
		{"16/B374D848", 0x16B374D848, false},
		{"FFFFFFFF/FFFFFFFF", LSN(^uint64(0)), false},
		{"16B374D848", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if tt.err {
			assert.Error(t, err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.want, got)
		assert.Equal(t, tt.in, got.String())
	}
}

func TestOpenWaitStandsByUntilTheHolderLetsGo(t *testing.T) {
	dir := t.TempDir()
	first, err := Open(dir)
	require.NoError(t, err)
	var told []string
	got := make(chan *Dir, 1)
	go func() {
		d, err := OpenWait(context.Background(), dir, func(holder string) { told = append(told, holder) })
		require.NoError(t, err)
		got <- d
	}()
	select {
	case <-got:
		t.Fatal("took the directory while it was held")
	case <-time.After(500 * time.Millisecond):
	}
	require.NoError(t, first.Close())
	select {
	case d := <-got:
		d.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("did not take over once the holder let go")
	}
	require.Len(t, told, 1, "standing by is said once")
	assert.Equal(t, fmt.Sprint(os.Getpid()), told[0])

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	held, err := Open(dir)
	require.NoError(t, err)
	defer held.Close()
	_, err = OpenWait(ctx, dir, func(string) {})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

// TestUnwritableStateDirectoryIsASetupProblemWithTheFix: a write the file
// system refuses (read-only, permission, immutable) is ErrNotWritable with
// the fix for that cause; anything else is passed on as it is.
func TestUnwritableStateDirectoryIsASetupProblemWithTheFix(t *testing.T) {
	for _, tt := range []struct {
		errno syscall.Errno
		fix   string // "" → not a setup problem
	}{
		{syscall.EROFS, "mounted read-only: mount it read-write"},
		{syscall.EACCES, "securityContext.fsGroup"},
		{syscall.EPERM, "chattr -i"},
		{syscall.ENOSPC, ""},
	} {
		err := notWritable("/var/lib/pgpilot", fmt.Errorf("open state directory lock /var/lib/pgpilot: %w", tt.errno))
		if tt.fix == "" {
			assert.NotErrorIs(t, err, ErrNotWritable, "%v", tt.errno)
			assert.Empty(t, fix.Of(err))
			continue
		}
		assert.ErrorIs(t, err, ErrNotWritable, "%v", tt.errno)
		assert.ErrorIs(t, err, tt.errno, "the cause is kept")
		assert.Contains(t, fix.Of(err), tt.fix, "%v", tt.errno)
		assert.Contains(t, fix.Of(err), "/var/lib/pgpilot")
	}
}
