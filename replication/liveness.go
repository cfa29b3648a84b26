package replication

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// A replication connection can die without either end being told: a
// network partition, or a firewall or NAT that dropped the flow. Reads then
// only time out and writes still succeed into the socket buffer, so the
// stream would wait forever while the slot holds WAL back. Postgres's own
// subscribers guard against it with wal_receiver_timeout; the stream does
// the same: after half of ReceiveTimeout without a message it asks the
// server for a reply, and after ReceiveTimeout it gives up on the
// connection (the caller reconnects and resumes from the checkpoint).

// liveness is when the server was last heard from.
type liveness struct {
	lastHeard time.Time
	pinged    bool // a reply was requested since lastHeard
}

// defaultReceiveTimeout is six status intervals (twice wal_sender_timeout
// for timeouts up to 30s, since Server.StatusInterval is a third of it),
// between 5s and 60s (wal_receiver_timeout's default). A live server
// answers a reply request within wal_sender_timeout/2 even while it decodes
// a large transaction, so half of this is ample.
func defaultReceiveTimeout(statusInterval time.Duration) time.Duration {
	return min(60*time.Second, max(5*time.Second, 6*statusInterval))
}

// heard records that the server spoke, or that the stream was busy
// elsewhere (handing a transaction on) and could not have listened, at now.
func (s *streamer) heard(now time.Time) {
	s.live.lastHeard = now
	s.live.pinged = false
}

// checkAlive asks the server for a reply once it has been quiet for half of
// ReceiveTimeout, and reports the connection dead after all of it. now is
// the time.
func (s *streamer) checkAlive(ctx context.Context, now time.Time) error {
	silent := now.Sub(s.live.lastHeard)
	if silent >= s.opts.ReceiveTimeout {
		return fmt.Errorf("replication stream: nothing from the server for %s, even when asked to reply: "+
			"the connection is dead (a network partition, or a firewall or NAT that dropped it)",
			silent.Round(100*time.Millisecond))
	}
	if silent < s.opts.ReceiveTimeout/2 || s.live.pinged {
		return nil
	}
	confirmed := s.opts.Confirmed()
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: confirmed, WALFlushPosition: confirmed, WALApplyPosition: confirmed,
		ReplyRequested: true,
	})
	if err != nil {
		return fmt.Errorf("send standby status update: %w", err)
	}
	s.live.pinged = true
	s.lastStatus, s.lastReported = now, confirmed
	return nil
}

// nextCheck is when checkAlive next has something to do: ask for a reply
// at half of ReceiveTimeout, give up at all of it. The stream's receive
// deadline never passes it, so a check is never a whole wake-up late.
func (s *streamer) nextCheck() time.Time {
	if !s.live.pinged {
		return s.live.lastHeard.Add(s.opts.ReceiveTimeout / 2)
	}
	return s.live.lastHeard.Add(s.opts.ReceiveTimeout)
}
